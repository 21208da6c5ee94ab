"""Image classification: classification's recipe for images (tasks.INPUT_RECIPES[("classification",
"image")]). Images are read and deduplicated (data/images.py), split as texts are, resized and
normalised from the config, augmented in training only (a random resized crop, a flip), and
learned by a small residual CNN (models/classic.py) through the same training loop; the test
report puts it beside the majority class and logistic regression on downscaled pixels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from safetensors.torch import load_model
from sklearn.metrics import f1_score
from torch import nn

import lmforge.runs as runs
from lmforge.config import (
    Config,
    DataConfig,
    fill_train_defaults,
    load_config,
    read_config_file,
)
from lmforge.data.images import (
    BUILTIN_DIGITS,
    ImagePreprocess,
    ImageRows,
    decode_image,
    read_image_rows,
    read_unlabelled_images,
)
from lmforge.data.report import label_counts
from lmforge.data.split import order_labels, split_dataset
from lmforge.errors import LmforgeError
from lmforge.evaluation import render_table
from lmforge.evaluation.baselines import majority_baseline
from lmforge.evaluation.metrics import (
    bootstrap_intervals,
    classification_metrics,
    paired_bootstrap_difference,
)
from lmforge.models.classic import CNNClassifier, CNNConfig
from lmforge.models.pretrained import (
    PretrainedImageClassifier,
    load_pretrained_image_classifier,
    pretrained_config,
)
from lmforge.tasks.classification import softmax
from lmforge.tasks.recipe import Evaluated, Log, Prepared, TrainingPlan, bundle_meta
from lmforge.training import distributed, resolve_device, seed_everything

WEIGHTS_FILE = "model.safetensors"
BASELINE_SIDE = 16  # the pixel baseline reads images downscaled to at most this side
CROP_SCALE = (0.7, 1.0)  # the share of the image's area a random resized crop keeps
CROP_RATIO = (3 / 4, 4 / 3)


# The CNN's schedule on images (model.arch cnn) where the config gives none: small image sets
# need more passes and a higher rate than text (bench/RESULTS.md, "Images").
IMAGE_TRAIN_DEFAULTS: dict[str, Any] = {"lr": 2e-3, "epochs": 10, "eval_every": 100}


@dataclass
class ImageSplit(Sequence):
    """Pixels (n, C, S, S) as uint8 and label indices; item i is (pixels, label index)."""

    pixels: torch.Tensor
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.pixels[i], int(self.labels[i])


def augment(batch: torch.Tensor, flip: bool) -> torch.Tensor:
    """A random resized crop of each image (CROP_SCALE of its area, aspect ratio in CROP_RATIO),
    scaled back to full size, and with `flip` a horizontal flip half the time: one affine grid
    sample per batch. Draws from torch's random stream, which checkpoints save (exact resume)."""
    n = batch.shape[0]
    area = torch.empty(n).uniform_(*CROP_SCALE)
    log_ratio = torch.empty(n).uniform_(np.log(CROP_RATIO[0]), np.log(CROP_RATIO[1]))
    ratio = torch.exp(log_ratio)
    width = torch.sqrt(area * ratio).clamp(max=1.0)  # shares of the side
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    x = (torch.rand(n) * 2 - 1) * (1 - width)  # the crop's centre, in [-1, 1] coordinates
    y = (torch.rand(n) * 2 - 1) * (1 - height)
    sign = torch.where(torch.rand(n) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * sign, x
    theta[:, 1, 1], theta[:, 1, 2] = height, y
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)


def make_collate(
    preprocess: ImagePreprocess, augmentation: str
) -> Callable[[list[tuple[torch.Tensor, int]]], dict[str, torch.Tensor]]:
    def collate(items: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
        pixels = preprocess.normalize(torch.stack([p for p, _ in items]))
        if augmentation != "none":
            pixels = augment(pixels, flip=augmentation == "crop_flip")
        return {"pixels": pixels, "labels": torch.tensor([y for _, y in items])}

    return collate


def image_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch["pixels"]).float(), batch["labels"])


@torch.no_grad()
def predict_logits(model: nn.Module, pixels: torch.Tensor, preprocess: ImagePreprocess,
                   batch_size: int = 256) -> np.ndarray:
    """Logits (n, classes) of uint8 pixels (n, C, S, S), in order, in eval mode."""
    was_training = model.training
    model.eval()
    first = next(model.parameters(), None)  # an ONNX Runtime session has none: the CPU
    device = first.device if first is not None else torch.device("cpu")
    out = [model(preprocess.normalize(pixels[i:i + batch_size].to(device))).float().cpu()
           for i in range(0, len(pixels), batch_size)]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def make_val_metrics(split: ImageSplit, preprocess: ImagePreprocess
                     ) -> Callable[[nn.Module], dict[str, float]]:
    """What the loop scores on the val split: the metrics text classification reports."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        logits = predict_logits(model, split.pixels, preprocess)
        loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(split.labels))
        pred = logits.argmax(axis=1)
        return {"val_loss": float(loss), "accuracy": float((pred == split.labels).mean()),
                "f1_macro": float(f1_score(split.labels, pred, average="macro",
                                           zero_division=0))}

    return evaluate


def pixel_logreg_baseline(train: np.ndarray, train_labels: list[str], test: np.ndarray,
                          labels: list[str], seed: int) -> tuple[list[str], np.ndarray]:
    """Logistic regression on standardised pixels downscaled to at most BASELINE_SIDE (uint8
    arrays (n, C, S, S)); probabilities in `labels` order."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def features(pixels: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(pixels).float() / 255
        if x.shape[-1] > BASELINE_SIDE:
            x = F.adaptive_avg_pool2d(x, BASELINE_SIDE)
        return x.flatten(1).numpy()

    present = sorted(set(train_labels))
    if len(present) < 2:
        return majority_baseline(train_labels, len(test), labels)
    fitted = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    fitted.fit(features(train), train_labels)
    probs = np.zeros((len(test), len(labels)))
    probs[:, [labels.index(c) for c in fitted.classes_]] = fitted.predict_proba(features(test))
    return [labels[i] for i in probs.argmax(1)], probs


class ImageClassifier:
    """What an image bundle loads into: `predict(images)` (PIL images) or `predict_files(paths)`
    resize, normalise and label them as training did."""

    def __init__(self, model: nn.Module, preprocess: ImagePreprocess, meta: dict[str, Any]):
        self.model = model.eval()
        self.preprocess = preprocess
        self.meta = meta
        self.labels: list[str] = meta["labels"]

    def logits(self, images: list[Any]) -> np.ndarray:
        return predict_logits(self.model, torch.from_numpy(self.preprocess.arrays(images)),
                              self.preprocess)

    def probabilities(self, images: list[Any]) -> np.ndarray:
        logits = self.logits(images)
        return softmax(logits) if len(images) else np.zeros((0, len(self.labels)))

    def predict(self, images: list[Any], names: list[str] | None = None) -> list[dict[str, Any]]:
        """One row per image: {"image" (its name, if given), "label", "score", "probs"}."""
        rows = []
        for i, p in enumerate(self.probabilities(images)):
            best = int(p.argmax())
            row = {"image": names[i]} if names is not None else {}
            rows.append(row | {"label": self.labels[best], "score": float(p[best]),
                               "probs": dict(zip(self.labels, map(float, p), strict=True))})
        return rows

    def decode(self, blobs: list[bytes]) -> list[Any]:
        """Images from their files' bytes (what the server receives); ValueError naming the
        first that is no image."""
        images = []
        for index, blob in enumerate(blobs):
            try:
                images.append(decode_image(blob))
            except ValueError as error:
                raise ValueError(f"input[{index}] is not an image Pillow can read ({error})"
                                 ) from None
        return images

    def predict_files(self, path: str | Path) -> list[dict[str, Any]]:
        """Rows for an image file, a folder of images or a table of image paths."""
        rows = read_unlabelled_images(str(path), self.meta.get("image_column", "image"))
        return self.predict(rows.images, rows.names)


# --- the recipe ----------------------------------------------------------------------------------


class ImageClassificationTask:
    """Labelled images -> a residual CNN, beside majority and pixel logistic regression."""

    name = "classification"
    val_metrics = ("f1_macro", "accuracy", "val_loss")
    runs_with = "predict"
    quickstart_run = "quickstart-images"
    report_kind = "classification"

    def configure(self, cfg: Config) -> None:
        """model.arch cnn (the default for images) and its schedule where the config gives
        none; a pretrained image backbone keeps the shared schedule."""
        model = cfg.model
        if "arch" not in model.model_fields_set:
            model.arch = "cnn"
        if model.arch not in ("cnn", "pretrained"):
            raise ValueError(f"model.arch '{model.arch}' does not read images; classification "
                             "of images uses 'cnn' or 'pretrained'")
        if model.arch == "cnn":
            fill_train_defaults(cfg.train, IMAGE_TRAIN_DEFAULTS)

    def starter_config(self, data: str) -> Config:
        return load_config({"task": self.name, "data": {"path": data, "inputs": "image"},
                            "model": {"arch": "cnn"}})

    def quickstart_config(self, fast: bool) -> Config:
        """scikit-learn's digits with the CNN at its defaults (a config of task, data, arch);
        `fast`: 3 epochs instead of the images' 10."""
        fast_schedule = {"train": {"epochs": 3}} if fast else {}
        return load_config({"data": {"path": BUILTIN_DIGITS}, "model": {"arch": "cnn"},
                            **fast_schedule})

    def prepare(self, cfg: Config, run_dir: Path, resume: bool, log: Log) -> Prepared:
        _check_arch(cfg)
        rows = read_image_rows(cfg.data.path, cfg.data)
        label_names = order_labels(rows.labels)
        if len(label_names) < 2:
            raise LmforgeError(f"{cfg.data.path}: classification needs at least 2 classes, "
                               f"found {len(label_names)}: {label_names}")
        index = [str(i) for i in range(len(rows.names))]
        *parts, warnings = split_dataset(index, rows.labels, cfg.data.split)
        splits = dict(zip(("train", "val", "test"),
                          (rows.take([int(i) for i in part.texts]) for part in parts),
                          strict=True))
        preprocess = ImagePreprocess.fit(splits["train"], cfg.data, _backbone_inputs(cfg))
        log(f"{len(rows.names)} images ({rows.report()['dropped']['unreadable']} unreadable, "
            f"{rows.report()['dropped']['duplicate']} duplicates dropped) at "
            f"{preprocess.size}x{preprocess.size}x{preprocess.channels}; labels {label_names}")
        tensors = {name: _image_split(split, preprocess, label_names)
                   for name, split in splits.items()}
        report = rows.report() | {
            "label_balance": {name: label_counts(split.labels, label_names)
                              for name, split in splits.items()},
            "split_sizes": {name: len(split.names) for name, split in splits.items()},
            "image": {"size": preprocess.size, "channels": preprocess.channels,
                      "mean": preprocess.mean, "std": preprocess.std,
                      "augment": cfg.data.augment},
            "warnings": warnings,
        }
        own = {"rows": splits, "tensors": tensors, "label_names": label_names}
        return Prepared(cfg, rows.data_hash, preprocess,
                        {name: split.digests for name, split in splits.items()}, report, own,
                        {name: split.labels for name, split in splits.items()})

    def build_model(self, run: Prepared, run_dir: Path, resume: bool, show_progress: bool,
                    log: Log) -> nn.Module:
        cfg, preprocess, labels = run.cfg, run.tokenizer, run.parts["label_names"]
        seed_everything(cfg.train.seed)
        if cfg.model.arch == "pretrained":
            model = load_pretrained_image_classifier(cfg.model.pretrained, labels,
                                                     cfg.model.revision,
                                                     cfg.model.trust_remote_code)
        else:
            model = CNNClassifier(CNNConfig(preprocess.channels, len(labels), preprocess.size,
                                            list(cfg.model.channels), cfg.model.dropout))
        seed_everything(cfg.train.seed + distributed.rank())  # distinct dropout per rank
        return model

    def training(self, run: Prepared, model: nn.Module) -> TrainingPlan:
        tensors, preprocess = run.parts["tensors"], run.tokenizer
        return TrainingPlan(
            examples=tensors["train"],
            collate=make_collate(preprocess, run.cfg.data.augment),
            loss=image_loss,
            val_metrics=make_val_metrics(tensors["val"], preprocess)
            if len(tensors["val"]) else None,
            metric_mode="min" if "loss" in run.cfg.train.early_stopping_metric else "max",
        )

    def test(self, run: Prepared, model: nn.Module) -> Evaluated | None:
        rows = run.parts["rows"]
        if not rows["test"].names:
            return None
        predictor = ImageClassifier(model, run.tokenizer, self.bundle_meta(run, model, None))
        return _evaluate(predictor, rows["test"], rows["train"], run.cfg)

    def refold(self, run: Prepared, parts: dict[str, Any]) -> Prepared:
        rows = run.parts["rows"]
        pool = _concat(rows["train"], rows["val"])
        new = {"test": rows["test"], **{name: pool.take(parts[name]) for name in parts}}
        tensors = {name: _image_split(split, run.tokenizer, run.parts["label_names"])
                   for name, split in new.items()}
        return Prepared(run.cfg, run.data_hash, run.tokenizer,
                        {name: split.digests for name, split in new.items()}, run.data_report,
                        {**run.parts, "rows": new, "tensors": tensors},
                        {name: split.labels for name, split in new.items()})

    def summary(self, report: dict[str, Any]) -> dict[str, Any]:
        return {key: report[key] for key in ("n", "accuracy", "f1_macro") if key in report}

    def bundle_meta(self, run: Prepared, model: nn.Module, run_dir: Path | None) -> dict:
        cfg = run.cfg
        return {**bundle_meta(run, model, run_dir), "inputs": "image",
                "labels": run.parts["label_names"], "label_column": cfg.data.label_column,
                "image_column": cfg.data.image_column}

    def check_bundle(self, bundle_dir: Path, meta: dict[str, Any]) -> None:
        """`lmforge serve`'s check before it starts: the files of an image bundle."""
        ImagePreprocess.load(bundle_dir)
        onnx = meta.get("onnx") if meta.get("runtime") == "onnx" else None
        model_file = bundle_dir / (onnx["file"] if isinstance(onnx, dict) else WEIGHTS_FILE)
        if not model_file.is_file():
            raise LmforgeError(f"{model_file}: missing; the bundle's model belongs there")

    def load(self, bundle_dir: Path, meta: dict[str, Any], device: str) -> ImageClassifier:
        return load_image_bundle(Path(bundle_dir), meta, device)

    def evaluate(self, predictor: ImageClassifier, bundle_dir: Path, run_dir: Path | None,
                 data: str | None) -> dict[str, Any]:
        cfg = load_config(read_config_file(run_dir / "config.yaml")) if run_dir else Config()
        record = runs.read_split_record(run_dir)
        train = None
        if run_dir is not None:
            train, test, check = _run_splits(cfg, run_dir, record, need_test=data is None)
        if data is not None:
            meta = predictor.meta
            data_cfg = DataConfig(image_column=meta.get("image_column", "image"),
                                  label_column=meta["label_column"])
            split = read_image_rows(data, data_cfg)
            unknown = sorted(set(split.labels) - set(predictor.labels))
            if unknown:
                raise LmforgeError(f"{data} holds labels the model does not know: "
                                   f"{unknown[:5]} (the model's: {predictor.labels})")
            check = {"source": data, "split_record": record is not None}
            if record is not None:
                unseen, check = runs.leak_check(split.digests, record, data, run_dir)
                split = split.take(unseen)
        elif run_dir is None:
            raise LmforgeError(f"{bundle_dir} has no run directory with a test split; pass "
                               "--data with labelled images")
        elif not test.names:
            raise LmforgeError(f"run {run_dir} has no test split; pass --data with labelled "
                               "images")
        else:
            split = test
        report = _evaluate(predictor, split, train, cfg).report
        report["data_check"] = check
        return report

    def read_inputs(self, predictor: ImageClassifier, path: str) -> ImageRows:
        """`lmforge predict --input`: an image, a folder of images, or a table of paths."""
        return read_unlabelled_images(path, predictor.meta.get("image_column", "image"))

    def predict(self, predictor: ImageClassifier, inputs: ImageRows) -> tuple[list[dict], str]:
        rows = predictor.predict(inputs.images, inputs.names)
        unreadable = inputs.drops.examples().get("unreadable", [])
        note = (f"; {len(unreadable)} unreadable, skipped: {', '.join(unreadable)}"
                if unreadable else "")
        return rows, f"{len(rows)} images predicted{note}"

    def render(self, report: dict[str, Any], console: Console, title: str) -> None:
        render_table(report, console, title=title)

    def quickstart_notes(self, predictor: ImageClassifier, bundle_dir: Path) -> list[str]:
        return [f"predict images: lmforge predict {bundle_dir} --input IMAGE_OR_FOLDER"]


def _check_arch(cfg: Config) -> None:
    if cfg.model.arch not in ("cnn", "pretrained"):
        raise LmforgeError(f"model.arch '{cfg.model.arch}' does not read images; image "
                           "classification uses model.arch cnn or pretrained")


def _backbone_inputs(cfg: Config) -> dict[str, Any]:
    """What a pretrained image model (model.arch pretrained) reads: its channels and image
    size (its config), and the normalisation of its image processor, where it has one."""
    if cfg.model.arch != "pretrained":
        return {}
    from transformers import AutoImageProcessor

    name, revision = cfg.model.pretrained, cfg.model.revision
    config = pretrained_config(name, revision, cfg.model.trust_remote_code, "image model")
    size = getattr(config, "image_size", None)
    found = {"channels": getattr(config, "num_channels", 3),
             "size": size if isinstance(size, int) else None}
    try:
        processor = AutoImageProcessor.from_pretrained(name, revision=revision)
        found |= {"mean": list(processor.image_mean), "std": list(processor.image_std)}
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # no image processor: the training split's statistics
    return found


def _image_split(rows: ImageRows, preprocess: ImagePreprocess, labels: list[str]) -> ImageSplit:
    index = {label: i for i, label in enumerate(labels)}
    return ImageSplit(torch.from_numpy(preprocess.arrays(rows.images)),
                      np.array([index[label] for label in rows.labels], dtype=np.int64))


def _concat(first: ImageRows, second: ImageRows) -> ImageRows:
    both = ImageRows(first.source, first.format, data_hash=first.data_hash)
    for name in ("names", "digests", "images", "labels", "sides"):
        setattr(both, name, getattr(first, name) + getattr(second, name))
    return both


def _evaluate(predictor: ImageClassifier, split: ImageRows, train: ImageRows | None,
              cfg: Config) -> Evaluated:
    """Metrics on `split` with intervals, beside the baselines fitted on `train`."""
    labels, seed, boot = predictor.labels, cfg.train.seed, cfg.eval.bootstrap
    probs = predictor.probabilities(split.images)
    pred = [labels[i] for i in probs.argmax(1)]
    report = classification_metrics(split.labels, pred, labels, probs)
    report["bootstrap_resamples"] = boot
    if boot > 0:
        report["ci95"] = bootstrap_intervals(split.labels, pred, labels, boot, seed)
    if cfg.eval.baselines and train is not None:
        arrays = predictor.preprocess.arrays  # uint8, not normalised
        majority, majority_probs = majority_baseline(train.labels, len(split.labels), labels)
        pixel, pixel_probs = pixel_logreg_baseline(arrays(train.images), train.labels,
                                                   arrays(split.images), labels, seed)
        report["baselines"] = {
            "majority": classification_metrics(split.labels, majority, labels, majority_probs),
            "pixel_logreg": classification_metrics(split.labels, pixel, labels, pixel_probs),
        }
        if boot > 0:
            report["vs_pixel_logreg"] = paired_bootstrap_difference(split.labels, pred, pixel,
                                                                    labels, boot, seed)
    rows = [{"text": name, "image": name, "gold": gold, "predicted": p,
             "probs": dict(zip(labels, map(float, row), strict=True))}
            for name, gold, p, row in zip(split.names, split.labels, pred, probs, strict=True)]
    return Evaluated(report, rows)


def _run_splits(cfg: Config, run_dir: Path, record: Any, need_test: bool
                ) -> tuple[ImageRows, ImageRows, dict[str, Any]]:
    """(train, test, data check) of a run as at training time: its images found again by their
    content (splits.json), or, for a run without one, the data split again."""
    rows = read_image_rows(cfg.data.path, cfg.data)
    if record is None:
        run = RECIPE.prepare(cfg, run_dir, False, lambda _: None)
        split = run.parts["rows"]
        return split["train"], split["test"], runs.unrecorded_check(run_dir, cfg.data.path,
                                                                    rows.data_hash)
    test_rows, missing = record.locate("test", rows.digests)
    test = rows.take(test_rows)
    unseen = record.unseen(test.digests)
    check = runs.recorded_check(record, cfg.data.path, rows.data_hash, missing,
                                len(test.names) - len(unseen))
    if need_test:
        runs.refuse_changed_test_split(check)
    return rows.take(record.locate("train", rows.digests)[0]), test.take(unseen), check


def held_out_images(predictor: ImageClassifier, run_dir: Path | None, data: str | None
                    ) -> tuple[ImageRows, str]:
    """Labelled images a bundle is measured on (export, compress): `data`, or the test split of
    its run; and their name."""
    if data is not None:
        meta = predictor.meta
        rows = read_image_rows(data, DataConfig(image_column=meta.get("image_column", "image"),
                                                label_column=meta["label_column"]))
        unknown = sorted(set(rows.labels) - set(predictor.labels))
        if unknown:
            raise LmforgeError(f"{data} holds labels the model does not know: {unknown[:5]} "
                               f"(the model's: {predictor.labels})")
        return rows, data
    if run_dir is None:
        raise LmforgeError("the bundle has no run directory with a test split; pass --data "
                           "with labelled images")
    cfg = load_config(read_config_file(run_dir / "config.yaml"))
    _, test, _ = _run_splits(cfg, run_dir, runs.read_split_record(run_dir), need_test=True)
    if not test.names:
        raise LmforgeError(f"run {run_dir} has no test split; pass --data with labelled images")
    return test, f"test split of {run_dir}"


def load_image_bundle(directory: Path, meta: dict[str, Any], device: str) -> ImageClassifier:
    """An image bundle's predictor: its preprocessing, and its CNN (or ONNX Runtime session)."""
    preprocess = ImagePreprocess.load(directory)
    labels = meta.get("labels")
    if not (isinstance(labels, list) and len(labels) >= 2):
        raise LmforgeError(f"{directory / 'lmforge.json'}: 'labels' must list the classes")
    if meta.get("runtime") == "onnx":
        from lmforge.models.onnx_runtime import OnnxImageClassifier

        return ImageClassifier(OnnxImageClassifier(directory / meta["onnx"]["file"]),
                               preprocess, meta)
    if meta.get("arch") == "pretrained":  # save_pretrained's files: transformers loads them
        from transformers import AutoModelForImageClassification

        try:
            hf = AutoModelForImageClassification.from_pretrained(directory)
        except (OSError, ValueError) as error:
            raise LmforgeError(f"{directory}: cannot load the pretrained image model "
                               f"({str(error).splitlines()[0]})") from None
        return ImageClassifier(PretrainedImageClassifier(hf).to(resolve_device(device)),
                               preprocess, meta)
    try:
        model = CNNClassifier(CNNConfig(**meta["architecture"]))
    except (KeyError, TypeError, ValueError) as error:
        raise LmforgeError(f"{directory / 'lmforge.json'}: 'architecture' does not describe a "
                           f"cnn model ({error})") from None
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise LmforgeError(f"{weights}: missing; the bundle's weights belong there")
    try:
        load_model(model, str(weights))
    except Exception as error:  # safetensors' own errors, or tensors of another shape
        raise LmforgeError(f"{weights}: does not hold this model's weights "
                           f"({str(error).splitlines()[0]})") from None
    return ImageClassifier(model.to(resolve_device(device)), preprocess, meta)


RECIPE = ImageClassificationTask()
