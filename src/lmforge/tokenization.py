"""Tokenizers: train BPE/WordPiece/char ones (HF `tokenizers`), load pretrained ones, encode, cache.

Every tokenizer is used through one `tokenizers.Tokenizer` (a pretrained fast tokenizer exposes its
own), so training, evaluation and serving share one encode path. A pretrained tokenizer with no
fast version (Marian's, sentencepiece only) is held as its Hugging Face object alone: translation
reads through that object, and what needs the Rust tokenizer (`backend`) refuses it by name.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from lmforge.config import TokenizerConfig
from lmforge.errors import LmforgeError
from lmforge.files import fsync_dir, write_atomic, write_json_atomic

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]
END_OF_TEXT = "<|endoftext|>"  # generation: separates documents, ends a continuation
HF_TOKENIZER_FILES = ("tokenizer_config.json",)


@dataclass
class Encoded:
    """Token ids per text (ragged) and how many texts were cut to max_length."""

    ids: list[np.ndarray]
    n_truncated: int


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the ids the model needs; `hf` is set for pretrained ones,
    and alone (no Rust tokenizer) for a slow one."""

    def __init__(self, backend: Tokenizer | None, hf_tokenizer: object | None = None) -> None:
        if backend is None and hf_tokenizer is None:
            raise ValueError("a TextTokenizer needs a Rust tokenizer or a Hugging Face one")
        self._backend = backend
        self.hf = hf_tokenizer

        def own_id(token: str, name: str) -> int | None:
            found = backend.token_to_id(token) if backend is not None else None
            return getattr(hf_tokenizer, name, None) if found is None else found

        self.pad_id = int(own_id(PAD, "pad_token_id") or 0)
        self.mask_id = own_id(MASK, "mask_token_id")
        self.eos_id = own_id(END_OF_TEXT, "eos_token_id")

    @property
    def backend(self) -> Tokenizer:
        """The Rust tokenizer; a slow pretrained tokenizer has none and is refused by name."""
        if self._backend is None:
            name = getattr(self.hf, "name_or_path", "") or type(self.hf).__name__
            raise LmforgeError(f"tokenizer '{name}' has no fast (Rust) version, which lmforge "
                               "needs here (only task translation with model.arch pretrained "
                               "reads with a slow one)")
        return self._backend

    @property
    def special_ids(self) -> list[int]:
        """Ids of the special tokens ([CLS], [SEP], ...), which masking and sampling skip."""
        if self._backend is None:
            return sorted(set(self.hf.all_special_ids))
        added = self.backend.get_added_tokens_decoder()
        return sorted(i for i, token in added.items() if token.special)

    @property
    def vocab_size(self) -> int:
        if self._backend is None:
            return len(self.hf)
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: list[str], max_length: int) -> Encoded:
        """Encode with special tokens, truncating to max_length (special tokens kept)."""
        backend = Tokenizer.from_str(self.backend.to_str())  # a private copy: truncation is state
        backend.no_padding()
        backend.enable_truncation(max_length)
        encodings = backend.encode_batch(texts)
        ids = [np.asarray(e.ids, dtype=np.int32) for e in encodings]
        return Encoded(ids=ids, n_truncated=sum(1 for e in encodings if e.overflowing))

    def encode_spans(
        self, text: str, max_length: int
    ) -> tuple[np.ndarray, list[tuple[int, int]], np.ndarray]:
        """One text encoded as `encode` does, with each token's (start, end) in the text and
        whether it is one of the text's own (True) or a special token added around it."""
        backend = Tokenizer.from_str(self.backend.to_str())
        backend.no_padding()
        backend.enable_truncation(max_length)
        encoding = backend.encode(text)
        own = ~np.asarray(encoding.special_tokens_mask, dtype=bool)
        return np.asarray(encoding.ids, dtype=np.int64), list(encoding.offsets), own

    def encode_plain(self, texts: list[str], add_special_tokens: bool = False) -> list[np.ndarray]:
        """Token ids of each text, nothing truncated; special tokens (a pretrained tokenizer's
        BOS, say) only with add_special_tokens."""
        if self._backend is None:
            if not texts:
                return []
            ids = self.hf(texts, add_special_tokens=add_special_tokens)["input_ids"]
            return [np.asarray(row, dtype=np.int64) for row in ids]
        encodings = self._untruncated.encode_batch(texts, add_special_tokens=add_special_tokens)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def encode_offsets(self, text: str) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """A text's token ids, nothing added or truncated (a rendered chat carries its own
        special tokens), with each token's (start, end) in the text."""
        encoding = self._untruncated.encode(text, add_special_tokens=False)
        return np.asarray(encoding.ids, dtype=np.int64), list(encoding.offsets)

    def encode_documents(self, texts: list[str]) -> list[np.ndarray]:
        """Each text as generation sees a document (or a prompt, which starts one): the
        end-of-text token that separates documents, then the text's tokens (with a pretrained
        tokenizer's own special tokens, a BOS say)."""
        if self.eos_id is None:
            raise LmforgeError("generation needs a tokenizer with an end-of-text token")
        eos = np.array([self.eos_id], dtype=np.int64)
        encoded = self.encode_plain(texts, add_special_tokens=self.hf is not None)
        return [np.concatenate([eos, ids]) for ids in encoded]

    @functools.cached_property
    def _untruncated(self) -> Tokenizer:
        backend = Tokenizer.from_str(self.backend.to_str())  # a copy: truncation is state
        backend.no_padding()
        backend.no_truncation()
        return backend

    def decode(self, ids: list[int]) -> str:
        if self._backend is None:
            return self.hf.decode(ids, skip_special_tokens=True)
        return self.backend.decode(ids, skip_special_tokens=True)

    def fingerprint(self) -> str:
        if self._backend is None:  # a slow tokenizer: its class and vocabulary
            vocab = json.dumps(sorted(self.hf.get_vocab().items()), ensure_ascii=False)
            blob = f"{type(self.hf).__name__}\n{vocab}"
        else:
            blob = self.backend.to_str()
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if self.hf is not None:
            self.hf.save_pretrained(directory)  # keeps the bundle loadable by transformers
        else:
            # compact JSON: the indented form is twice the size, and in an int8 bundle the
            # tokenizer is a good part of the folder
            self.backend.save(str(directory / "tokenizer.json"), pretty=False)

    @classmethod
    def load(cls, directory: Path) -> TextTokenizer:
        if all((directory / name).is_file() for name in HF_TOKENIZER_FILES):
            return load_pretrained_tokenizer(str(directory))
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise LmforgeError(f"no tokenizer in {directory}: expected tokenizer.json")
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust side raises a bare Exception for any bad file
            reason = " ".join(str(error).split())
            raise LmforgeError(f"{path}: not a valid tokenizer file ({reason})") from None
        return cls(backend)


def load_pretrained_tokenizer(
    name: str, revision: str | None = None, trust_remote_code: bool = False
) -> TextTokenizer:
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code, use_fast=True
        )
    except Exception as error:  # OSError, ValueError, or the Rust side's bare Exception
        raise LmforgeError(
            f"cannot load tokenizer '{name}': {str(error).splitlines()[0]}"
        ) from None
    if not getattr(hf, "is_fast", False):  # sentencepiece only (Marian): `backend` refuses it
        return TextTokenizer(None, hf)
    return TextTokenizer(hf.backend_tokenizer, hf)


def _new_tokenizer(kind: str) -> tuple[Tokenizer, object]:
    # Splitting on whitespace, punctuation and digits keeps merges inside words for English and
    # inside clauses for Chinese (which has no spaces): the tokens stay words or short phrases.
    words = [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    words.append(pre_tokenizers.Digits(individual_digits=True))
    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(words)
        tokenizer.decoder = decoders.BPEDecoder()
        return tokenizer, trainers.BpeTrainer
    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(words)
        tokenizer.decoder = decoders.WordPiece()
        return tokenizer, trainers.WordPieceTrainer
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), "isolated")]
    )
    return tokenizer, trainers.WordLevelTrainer


def train_byte_bpe(texts: list[str], vocab_size: int) -> TextTokenizer:
    """GPT-2's tokenizer: BPE over the bytes of the text, so any text encodes (no unknown token)
    and decodes back exactly, spaces and newlines included; END_OF_TEXT is its only special."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return TextTokenizer(tokenizer)


def train_tokenizer(texts: list[str], kind: str, vocab_size: int) -> TextTokenizer:
    """Train a tokenizer of `kind` (bpe, wordpiece, char, byte_bpe) on `texts`: the training
    split only."""
    if not texts:
        raise LmforgeError("cannot train a tokenizer on no texts")
    if kind == "byte_bpe":
        return train_byte_bpe(texts, vocab_size)
    tokenizer, trainer_cls = _new_tokenizer(kind)
    trainer = trainer_cls(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", special_tokens=[(CLS, cls_id), (SEP, sep_id)]
    )
    return TextTokenizer(tokenizer)


def unspaced_share(texts: list[str], sample: int = 2000) -> float:
    """The share of the non-space characters of (the first `sample` of) `texts` in scripts
    written without spaces between words: Han ideographs and kana (Korean spaces its words)."""
    written = unspaced = 0
    for text in texts[:sample]:
        for char in text:
            if char.isspace():
                continue
            written += 1
            point = ord(char)
            unspaced += any(low <= point <= high for low, high in _UNSPACED_RANGES)
    return unspaced / written if written else 0.0


_UNSPACED_RANGES = (
    (0x3040, 0x30FF),  # hiragana, katakana
    (0x3400, 0x4DBF),  # Han, extension A
    (0x4E00, 0x9FFF),  # Han
    (0xF900, 0xFAFF),  # Han compatibility
    (0x20000, 0x2FA1F),  # Han, extensions B and later
)


def auto_kind(unspaced: float) -> str:
    """The trained tokenizer `tokenizer.kind: auto` picks for text whose `unspaced` share is in
    Chinese or Japanese script (unspaced_share): characters when most of it is, where BPE's
    merges inside space-free clauses become whole phrases seen once or twice (character models
    are the usual choice there, as BERT's Chinese vocabulary is); BPE otherwise."""
    return "char" if unspaced > 0.5 else "bpe"


def build_tokenizer(
    cfg: TokenizerConfig,
    train_texts: list[str],
    pretrained_model: str | None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> TextTokenizer:
    """The run's tokenizer: a pretrained one when asked for (or when the model is), else trained."""
    if cfg.pretrained:
        return load_pretrained_tokenizer(cfg.pretrained, trust_remote_code=trust_remote_code)
    kind = cfg.kind
    if kind == "auto":
        kind = "pretrained" if pretrained_model else auto_kind(unspaced_share(train_texts))
    if kind == "pretrained":
        if not pretrained_model:
            raise LmforgeError("tokenizer.kind is 'pretrained' but no tokenizer.pretrained is set")
        return load_pretrained_tokenizer(pretrained_model, revision, trust_remote_code)
    return train_tokenizer(train_texts, kind, cfg.vocab_size)


class TokenCache:
    """Tokenized splits on disk, keyed by everything that changes them, shared between runs."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.root = Path(cache_dir).expanduser() / "tokens"

    @staticmethod
    def key(*parts: object) -> str:
        blob = json.dumps(parts, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def load(self, key: str) -> tuple[dict[str, list[np.ndarray]], dict] | None:
        """(ids per split, info) or None on a miss."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path) as archive:
                info = json.loads(str(archive["info"]))
                names = {name.rsplit("__", 1)[0] for name in archive.files if "__" in name}
                splits = {
                    n: _unflatten(archive[f"{n}__flat"], archive[f"{n}__offsets"]) for n in names
                }
                return splits, info
        except (OSError, ValueError, KeyError):
            return None  # a damaged cache entry is only a miss

    def save(self, key: str, splits: dict[str, list[np.ndarray]], info: dict) -> None:
        arrays = {"info": np.array(json.dumps(info))}
        for name, ids in splits.items():
            arrays[f"{name}__flat"], arrays[f"{name}__offsets"] = _flatten(ids)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self._path(key), buffer.getvalue())


def _flatten(ids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(x) for x in ids])
    flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
    return flat.astype(np.int32), offsets


def _unflatten(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def document_stream(
    tokenizer: TextTokenizer, documents: list[str], chunk: int = 10_000
) -> Iterator[np.ndarray]:
    """The token stream of generation, in pieces: end-of-text, a document, end-of-text, the
    next document, ..., end-of-text (nothing for no documents); `chunk` documents encoded at
    a time."""
    for start in range(0, len(documents), chunk):
        yield from tokenizer.encode_documents(documents[start : start + chunk])
    if documents:
        yield np.array([tokenizer.eos_id], dtype=np.int64)


class TokenFiles:
    """Generation's token cache: each split tokenized once into one flat file of ids, documents
    separated by the end-of-text token (uint16 when the vocabulary fits, else uint32), and
    memory-mapped when read, so a corpus need not fit in memory to train on it."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.root = Path(cache_dir).expanduser() / "tokens"

    @staticmethod
    def dtype(vocab_size: int) -> np.dtype:
        return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """{split: memory-mapped ids} or None on a miss."""
        folder = self.root / key
        try:
            info = json.loads((folder / "info.json").read_text())
            return {name: _map(folder / f"{name}.bin", info["dtype"]) for name in info["splits"]}
        except (OSError, ValueError, KeyError):
            return None  # a missing or damaged entry is only a miss

    def save(
        self, key: str, splits: dict[str, list[str]], tokenizer: TextTokenizer,
        chunk: int = 10_000,
    ) -> dict[str, np.ndarray]:
        """Tokenize each split's documents, `chunk` at a time, into the cache; then load it."""
        pieces = ((name, ids) for name, documents in splits.items()
                  for ids in document_stream(tokenizer, documents, chunk))
        return self.save_pieces(key, pieces, list(splits), tokenizer.vocab_size)

    def save_pieces(
        self, key: str, pieces: Iterable[tuple[str, np.ndarray]], names: list[str],
        vocab_size: int,
    ) -> dict[str, np.ndarray]:
        """Write (split, token ids) pieces, in any order of splits, each appended to its split's
        file, into the cache; then load it. Only the current piece is held in memory."""
        dtype = self.dtype(vocab_size)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, suffix=".tmp"))
        with contextlib.ExitStack() as files:
            handles = {name: files.enter_context(open(tmp / f"{name}.bin", "wb"))
                       for name in names}
            for name, ids in pieces:
                handles[name].write(ids.astype(dtype).tobytes())
            for handle in handles.values():
                handle.flush()
                os.fsync(handle.fileno())
        info = {"dtype": dtype.name, "splits": names, "vocab_size": vocab_size}
        write_json_atomic(tmp / "info.json", info)
        try:
            os.replace(tmp, self.root / key)
        except OSError:  # another run wrote the same entry meanwhile: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(self.root)
        loaded = self.load(key)
        if loaded is None:
            raise LmforgeError(f"cannot read the token cache back from {self.root / key}")
        return loaded


def _map(path: Path, dtype: str) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)  # an empty file cannot be memory-mapped
    return np.memmap(path, dtype=dtype, mode="r")
