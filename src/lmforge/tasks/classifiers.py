"""Classification bundles that are no single network: TF-IDF + logistic regression (arch
tfidf_logreg) and an ensemble of bundles with the same labels (arch ensemble). Each loads into a
TextClassifier, so predict, evaluate and serve use it as any other classifier.

    model/                          (arch tfidf_logreg)
      lmforge.json, tfidf.json (the n-gram vocabulary), model.safetensors (idf, weights)
    model/                          (arch ensemble)
      lmforge.json                  members: [{name, dir, weight}], the fit's validation scores
      members/<name>/               each member's whole bundle
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.bundle import (
    META_FILE,
    TextClassifier,
    check_bundle,
    check_meta,
    load,
    read_meta,
)
from lmforge.data import clean_text
from lmforge.errors import LmforgeError
from lmforge.evaluation.fusion import fuse
from lmforge.evaluation.leaderboard import scores
from lmforge.files import staged_dir, write_json_atomic
from lmforge.models.tfidf import TfidfLogReg
from lmforge.tokenization import Encoded
from lmforge.version import __version__

MEMBERS_DIR = "members"
# A TF-IDF model reads characters, never tokens: it reads (and serving bills) at most this many.
TFIDF_MAX_CHARS = 4096
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TfidfPredictor(TextClassifier):
    """A TF-IDF + logistic-regression bundle; its tokens are the cleaned text's characters."""

    def __init__(self, model: TfidfLogReg, meta: dict[str, Any]) -> None:
        super().__init__(meta)
        self.model = model

    def encode(self, texts: list[str], max_length: int | None = None) -> Encoded:
        limit = max_length or self.max_length
        cleaned = [clean_text(text, self.clean) for text in texts]
        ids = [np.array([ord(c) for c in text[:limit]], dtype=np.int64) for text in cleaned]
        return Encoded(ids, sum(len(text) > limit for text in cleaned))

    def probabilities(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, int]:
        cleaned = [clean_text(text, self.clean) for text in texts]
        probs = self.model.probabilities([text[: self.max_length] for text in cleaned])
        return probs, sum(len(text) > self.max_length for text in cleaned)


class EnsemblePredictor(TextClassifier):
    """The weighted average of its members' probabilities. Its tokens (what serving bills) are
    those of its first member with a tokenizer."""

    def __init__(
        self, members: list[tuple[str, TextClassifier]], weights: list[float],
        meta: dict[str, Any],
    ) -> None:
        super().__init__(meta)
        self.names = [name for name, _ in members]
        self.members = [member for _, member in members]
        self.weights = np.array(weights, dtype=np.float64)
        self.counter = _token_counter(self.members)

    def encode(self, texts: list[str], max_length: int | None = None) -> Encoded:
        return self.counter.encode(texts, max_length)

    def member_probabilities(
        self, texts: list[str], batch_size: int = 64
    ) -> tuple[list[np.ndarray], int]:
        """Each member's (n, classes) probabilities; texts truncated for the token counter."""
        probs, n_truncated = [], 0
        for member in self.members:
            p, truncated = member.probabilities(texts, batch_size)
            probs.append(p)
            if member is self.counter:
                n_truncated = truncated
        return probs, n_truncated

    def probabilities(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, int]:
        probs, n_truncated = self.member_probabilities(texts, batch_size)
        return fuse(probs, self.weights), n_truncated


def _token_counter(members: list[TextClassifier]) -> TextClassifier:
    return next((m for m in members if not isinstance(m, TfidfPredictor)), members[0])


# --- writing ---------------------------------------------------------------------------------


def tfidf_meta(base: dict[str, Any]) -> dict[str, Any]:
    """lmforge.json of a TF-IDF bundle, from a classification bundle's meta (columns, labels,
    cleaning, run): its own arch and max length, no network's architecture."""
    drop = {"arch", "max_length", "architecture", "pretrained", "metrics", "runtime", "onnx"}
    return {**{k: v for k, v in base.items() if k not in drop},
            "arch": "tfidf_logreg", "max_length": TFIDF_MAX_CHARS}


def save_tfidf_bundle(directory: Path, model: TfidfLogReg, meta: dict[str, Any]) -> None:
    with staged_dir(directory) as tmp:
        model.save(tmp)
        write_json_atomic(tmp / META_FILE, {"lmforge_version": __version__, **meta})


def member_name(path: Path) -> str:
    """A member's name: its run's folder name (or the bundle's own), made safe."""
    resolved = path.resolve()
    base = resolved.parent.name if resolved.name == "model" else resolved.name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip("._-")[:64]
    return name or "member"


def check_members(members: list[tuple[str, dict[str, Any]]]) -> None:
    """One task (classification) and one label set, in the same order, for all members."""
    first_name, first = members[0]
    for name, meta in members[1:]:
        if meta["task"] != first["task"]:
            raise LmforgeError(f"{name} holds a '{meta['task']}' model and {first_name} a "
                               f"'{first['task']}' one; an ensemble's members share one task")
        if meta.get("labels") != first.get("labels"):
            raise LmforgeError(f"{name} has labels {meta.get('labels')} and {first_name} "
                               f"{first.get('labels')}; an ensemble's members share one label "
                               "set, in the same order")
    if first["task"] != "classification":
        raise LmforgeError(f"{first_name} holds a '{first['task']}' model; an ensemble averages "
                           "the probabilities of classification models")


def save_ensemble_bundle(
    directory: Path, members: list[tuple[str, Path]], weights: list[float],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Copy the members with a weight above 0 into `directory`/members and write its
    lmforge.json (the first member's columns and cleaning, `extra` beside); returns it."""
    metas = [(name, read_meta(path)) for name, path in members]
    check_members(metas)
    kept = [(name, path, meta, w) for (name, path), (_, meta), w
            in zip(members, metas, weights, strict=True) if w > 0]
    counter = next((m for _, _, m, _ in kept if m["arch"] != "tfidf_logreg"), kept[0][2])
    first = kept[0][2]
    meta = {
        "lmforge_version": __version__, "task": "classification", "arch": "ensemble",
        "text_column": first["text_column"], "label_column": first["label_column"],
        "labels": first["labels"], "clean": first["clean"], "max_length": counter["max_length"],
        "members": [{"name": name, "dir": f"{MEMBERS_DIR}/{name}", "weight": float(w)}
                    for name, _, _, w in kept],
        **extra,
    }
    with staged_dir(directory) as tmp:
        for name, path, _, _ in kept:
            shutil.copytree(path, tmp / MEMBERS_DIR / name)
        write_json_atomic(tmp / META_FILE, meta)
    return meta


# --- reading ---------------------------------------------------------------------------------


def _members_problem(meta: dict[str, Any]) -> str | None:
    members = meta.get("members")
    if not isinstance(members, list) or not members:
        return "'members' must be a non-empty list of the ensemble's members"
    for i, member in enumerate(members):
        ok = (isinstance(member, dict) and isinstance(member.get("name"), str)
              and _MEMBER_NAME.match(member["name"])
              and member.get("dir") == f"{MEMBERS_DIR}/{member['name']}"
              and isinstance(member.get("weight"), (int, float)) and member["weight"] > 0)
        if not ok:
            return (f"'members[{i}]' must be {{name, dir: \"{MEMBERS_DIR}/<name>\", weight > 0}} "
                    f"(got {member!r:.80})")
    return None


def check_bundle_files(directory: Path) -> dict[str, Any]:
    """bundle.check_bundle for these archs: lmforge.json, and the TF-IDF files or every
    member's bundle (with the ensemble's labels). Returns lmforge.json."""
    meta = read_meta(directory)
    check_meta(directory, meta)
    if meta["arch"] == "tfidf_logreg":
        _check_tfidf(directory, TfidfLogReg.load(directory), meta)
        return meta
    problem = _members_problem(meta)
    if problem:
        raise LmforgeError(f"{directory / META_FILE}: {problem}")
    for member in meta["members"]:
        member_dir = directory / member["dir"]
        if not member_dir.is_dir():
            raise LmforgeError(f"{member_dir}: missing; the ensemble's member belongs there")
        if check_bundle(member_dir).get("labels") != meta["labels"]:
            raise LmforgeError(f"{member_dir / META_FILE}: its labels are not the ensemble's "
                               f"{meta['labels']}")
    return meta


def _check_tfidf(directory: Path, model: TfidfLogReg, meta: dict[str, Any]) -> None:
    if model.n_labels != len(meta["labels"]):
        raise LmforgeError(f"{directory / META_FILE}: 'labels' names {len(meta['labels'])} "
                           f"classes but the TF-IDF model has {model.n_labels}")


def load_bundle(directory: Path, meta: dict[str, Any], device: str) -> TextClassifier:
    """A tfidf_logreg or ensemble bundle's predictor (the classification recipe's load)."""
    if meta["arch"] == "tfidf_logreg":
        check_meta(directory, meta)
        model = TfidfLogReg.load(directory)
        _check_tfidf(directory, model, meta)
        return TfidfPredictor(model, meta)
    check_bundle_files(directory)
    members = [(m["name"], load(directory / m["dir"], device)) for m in meta["members"]]
    return EnsemblePredictor(members, [m["weight"] for m in meta["members"]], meta)


def member_leaderboard(
    predictor: TextClassifier, gold: list[str], texts: list[str], bootstrap: int, seed: int
) -> list[dict[str, Any]] | None:
    """An ensemble's members and itself on the same texts (eval.json's "leaderboard"); None
    for any other classifier."""
    if not isinstance(predictor, EnsemblePredictor):
        return None
    probs, _ = predictor.member_probabilities(texts)
    rows = [{"name": name, "weight": float(w),
             "test": scores(gold, p, predictor.labels, bootstrap, seed)}
            for name, w, p in zip(predictor.names, predictor.weights, probs, strict=True)]
    fused = fuse(probs, predictor.weights)
    rows.append({"name": "ensemble", "weight": 1.0, "shipped": True,
                 "test": scores(gold, fused, predictor.labels, bootstrap, seed)})
    return rows
