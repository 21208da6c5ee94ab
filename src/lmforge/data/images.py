"""Images as classification data: a folder of one subfolder of images per label, a table of image
paths and labels, or scikit-learn's 8x8 digits (builtin:digits); decoded with Pillow.

An image that cannot be decoded (not an image, truncated, missing) is counted with its path in
the report, never a crash; an image whose bytes repeat an earlier one is dropped before the split,
as a repeated text is. `ImagePreprocess` turns images into the model's input (resize, channels,
normalisation) and is saved in the bundle, so predict and serve see what training saw."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from lmforge.config import DataConfig
from lmforge.data.builtin import BUILTIN_DIGITS
from lmforge.data.report import DropLog, Tally
from lmforge.data.sources import TABLE_FORMATS, read_records, resolve_format
from lmforge.errors import LmforgeError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
PREPROCESS_FILE = "preprocess.json"
KEEP_SIDE = 256  # decoded images are kept at most this large: enough for any default size
MAX_DEFAULT_SIZE = 64  # data.image_size null: the median side, at most this
MAX_PIXELS = 50_000_000  # a larger image is refused (a decompression bomb), not decoded
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass
class ImageRows:
    """Decoded images with their names, content digests and labels, and what was dropped."""

    source: str
    format: str
    names: list[str] = field(default_factory=list)  # a path, or digits:<index>
    digests: list[str] = field(default_factory=list)  # sha256 of each image's bytes
    images: list[Image.Image] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    sides: list[int] = field(default_factory=list)  # each image's larger side as stored
    data_hash: str = ""
    rows_read: int = 0
    drops: DropLog = field(default_factory=DropLog)
    ignored_files: Tally = field(default_factory=Tally)

    def __len__(self) -> int:
        return len(self.names)

    def take(self, indices: list[int] | np.ndarray) -> ImageRows:
        chosen = [int(i) for i in indices]
        out = ImageRows(self.source, self.format, data_hash=self.data_hash)
        for name in ("names", "digests", "images", "labels", "sides"):
            values = getattr(self, name)
            setattr(out, name, [values[i] for i in chosen] if values else [])
        return out

    def report(self) -> dict[str, Any]:
        """The reading part of data_report.json."""
        always = ("unreadable", "duplicate", "conflicting_labels")
        return {
            "source": self.source, "format": self.format, "data_hash": self.data_hash,
            "rows_read": self.rows_read, "rows_kept": len(self.names),
            "dropped": self.drops.counts(always=always), "examples": self.drops.examples(),
            "ignored_files": {"count": self.ignored_files.count,
                              "examples": list(self.ignored_files.examples)},
        }


def decode_image(data: bytes) -> Image.Image:
    """The image in `data`, fully decoded (a truncated file fails here, not later); ValueError
    saying why when it is no image Pillow can read."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > MAX_PIXELS:
                raise ValueError(f"{opened.width}x{opened.height} pixels is more than "
                                 f"{MAX_PIXELS:,}")
            opened.load()
            image = opened.convert("L" if opened.mode in GRAY_MODES else "RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ValueError(str(error).split("\n")[0] or type(error).__name__) from None
    image.thumbnail((KEEP_SIDE, KEEP_SIDE))
    return image


def _add(rows: ImageRows, name: str, data: bytes | None, label: str, seen: dict[str, str],
         dedupe: bool) -> None:
    """One image read: kept, or counted as unreadable, a duplicate or a conflicting label."""
    rows.rows_read += 1
    if data is None:
        rows.drops.add("unreadable", name)
        return
    try:
        image = decode_image(data)
    except ValueError:
        rows.drops.add("unreadable", name)
        return
    digest = hashlib.sha256(data).hexdigest()
    if dedupe and digest in seen:
        rows.drops.add("duplicate" if seen[digest] == label else "conflicting_labels", name)
        return
    seen[digest] = label
    rows.names.append(name)
    rows.digests.append(digest)
    rows.images.append(image)
    rows.labels.append(label)
    rows.sides.append(max(image.size))


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _finish_hash(rows: ImageRows, digest: Any) -> ImageRows:
    rows.data_hash = digest.hexdigest()
    return rows


def read_label_folders(root: Path, dedupe: bool = True) -> ImageRows:
    """A folder of one subfolder of images per label (the subfolder's name)."""
    rows, seen, digest = ImageRows(str(root), "image_folder"), {}, hashlib.sha256()
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise LmforgeError(f"{root}: no subfolders; images are read from one subfolder per label")
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            name = str(path.relative_to(root))
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                rows.ignored_files.add(name)
                continue
            data = _read_bytes(path)
            digest.update(name.encode() + b"\0" + (data or b"") + b"\0")
            _add(rows, name, data, folder.name, seen, dedupe)
    return _finish_hash(rows, digest)


def read_image_table(path: str, cfg: DataConfig, dedupe: bool = True) -> ImageRows:
    """A table whose data.image_column holds image paths (relative to the table's folder) and
    whose data.label_column holds labels; rows without either are counted by the table reader."""
    records = read_records(path, cfg.format, cfg.image_column, cfg.label_column)
    rows, seen = ImageRows(path, f"{records.format}+images"), {}
    rows.drops = records.drops
    digest = hashlib.sha256(records.data_hash.encode())
    base = Path(path).expanduser().parent
    for image_path, label in zip(records.texts, records.labels or [], strict=True):
        where = Path(image_path).expanduser()
        data = _read_bytes(where if where.is_absolute() else base / where)
        digest.update((data or b"") + b"\0")
        _add(rows, image_path, data, label, seen, dedupe)
    rows.rows_read = records.rows_read  # the table's rows, those it skipped included
    return _finish_hash(rows, digest)


def read_digits(dedupe: bool = True) -> ImageRows:
    """scikit-learn's 1,797 8x8 handwritten digits (0..16 grey levels, made 0..255)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)  # (n, 8, 8)
    rows, seen, digest = ImageRows(BUILTIN_DIGITS, "builtin"), {}, hashlib.sha256()
    for i, (image, target) in enumerate(zip(pixels, digits.target, strict=True)):
        data = image.tobytes()
        digest.update(data)
        rows.rows_read += 1
        sha = hashlib.sha256(data).hexdigest()
        if dedupe and sha in seen:
            rows.drops.add("duplicate" if seen[sha] == str(target) else "conflicting_labels",
                           f"digits:{i}")
            continue
        seen[sha] = str(target)
        rows.names.append(f"digits:{i}")
        rows.digests.append(sha)
        rows.images.append(Image.fromarray(image, mode="L"))
        rows.labels.append(str(target))
        rows.sides.append(8)
    return _finish_hash(rows, digest)


def read_image_rows(path: str, cfg: DataConfig) -> ImageRows:
    """Labelled images from `path` (builtin:digits, a folder of label folders, or a table of
    image paths); an error naming the path when none can be read."""
    dedupe = cfg.clean.dedupe
    if path == BUILTIN_DIGITS:
        rows = read_digits(dedupe)
    elif path.startswith("builtin:"):
        raise LmforgeError(f"unknown built-in image dataset '{path}'; known: {BUILTIN_DIGITS}")
    elif resolve_format(path, cfg.format) == "folder":
        rows = read_label_folders(Path(path).expanduser(), dedupe)
    elif resolve_format(path, cfg.format) in TABLE_FORMATS:
        rows = read_image_table(path, cfg, dedupe)
    else:
        raise LmforgeError(f"{path}: images are read from a folder of one subfolder per label "
                           f"or a table with columns '{cfg.image_column}' and "
                           f"'{cfg.label_column}'")
    if not rows.names:
        raise LmforgeError(f"no readable images in {path}: {rows.rows_read} read, dropped: "
                           f"{rows.drops.summary()}")
    return rows


def read_unlabelled_images(path: str, image_column: str = "image") -> ImageRows:
    """Images to predict: one image file, a folder of them (searched recursively), or a table
    with an image-path column. Unreadable ones are counted, with their paths."""
    where = Path(path).expanduser()
    rows, seen = ImageRows(path, "images"), {}
    if not where.exists():
        raise LmforgeError(f"not found: {path}")
    if where.is_dir():
        files = sorted(p for p in where.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        named = [(str(p), p) for p in files]
    elif where.suffix.lower() in IMAGE_EXTENSIONS:
        named = [(str(where), where)]
    else:
        records = read_records(path, "auto", image_column, None)
        named = [(p, Path(p) if Path(p).is_absolute() else where.parent / p)
                 for p in records.texts]
    for name, file in named:
        _add(rows, name, _read_bytes(file), "", seen, dedupe=False)
    if not rows.names:
        raise LmforgeError(f"no readable images in {path} ({rows.rows_read} tried: "
                           f"{rows.drops.summary()})")
    return rows


def looks_like_images(cfg: Any) -> bool:
    """data.inputs auto: builtin:digits, model.arch cnn, a folder whose label folders hold
    images, or a table with data.image_column."""
    path = cfg.data.path
    if path == BUILTIN_DIGITS or cfg.model.arch == "cnn":
        return True
    where = Path(path).expanduser()
    if path.startswith("builtin:") or not where.exists():
        return False
    if where.is_dir():
        for folder in (p for p in where.iterdir() if p.is_dir()):
            for file in folder.iterdir():
                if file.is_file():
                    return file.suffix.lower() in IMAGE_EXTENSIONS
        return False
    return where.suffix.lower() in (".csv", ".tsv") and _header_has(where, cfg.data.image_column)


def _header_has(path: Path, column: str) -> bool:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as handle:
            header = handle.readline()
    except OSError:
        return False
    separator = "\t" if path.suffix.lower() == ".tsv" else ","
    return column in [name.strip().strip('"') for name in header.split(separator)]


@dataclass
class ImagePreprocess:
    """How an image becomes the model's input: its channels (1 grey, 3 RGB), resized to a
    square side, scaled to 0..1 and normalised per channel. The bundle's preprocess.json."""

    size: int
    channels: int
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, rows: ImageRows, cfg: DataConfig, model: dict[str, Any] | None = None
            ) -> ImagePreprocess:
        """From the config, then `model` (what a pretrained model expects: channels, size,
        mean, std), then the training images: the median side, the training split's
        statistics."""
        model = model or {}
        grey = all(image.mode == "L" for image in rows.images)
        channels = model.get("channels") or (1 if grey else 3)
        size = (cfg.image_size or model.get("size")
                or int(min(MAX_DEFAULT_SIZE, np.median(rows.sides))))
        sized = cls(size, channels, [0.0] * channels, [1.0] * channels)
        pixels = sized.arrays(rows.images).astype(np.float64) / 255  # (n, C, S, S)
        mean = cfg.image_mean or model.get("mean") or pixels.mean(axis=(0, 2, 3)).tolist()
        std = (cfg.image_std or model.get("std")
               or np.maximum(pixels.std(axis=(0, 2, 3)), 1e-3).tolist())
        for name, values in (("data.image_mean", mean), ("data.image_std", std)):
            if len(values) != channels:
                raise LmforgeError(f"{name} has {len(values)} values; the images have "
                                   f"{channels} channel(s)")
        return cls(size, channels, [float(v) for v in mean], [float(v) for v in std])

    def arrays(self, images: list[Image.Image]) -> np.ndarray:
        """(n, C, S, S) uint8: each image in the model's channels, resized."""
        mode = "L" if self.channels == 1 else "RGB"
        out = np.zeros((len(images), self.channels, self.size, self.size), dtype=np.uint8)
        for i, image in enumerate(images):
            resized = image.convert(mode).resize((self.size, self.size), Image.BILINEAR)
            array = np.asarray(resized, dtype=np.uint8)
            out[i] = array[None] if self.channels == 1 else array.transpose(2, 0, 1)
        return out

    def normalize(self, pixels: Any) -> Any:
        """uint8 (n, C, S, S) (a torch tensor) to normalised float."""
        import torch

        mean = torch.tensor(self.mean, device=pixels.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).view(1, -1, 1, 1)
        return (pixels.float() / 255 - mean) / std

    def save(self, directory: Path) -> None:
        (Path(directory) / PREPROCESS_FILE).write_text(json.dumps(asdict(self)), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> ImagePreprocess:
        path = Path(directory) / PREPROCESS_FILE
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise LmforgeError(f"{path}: missing; an image bundle keeps its preprocessing "
                               "there") from None
        except (ValueError, TypeError) as error:
            raise LmforgeError(f"{path}: not a valid preprocessing file ({error})") from None
