"""Distillation: a smaller student learns the teacher bundle's softened predictions
(temperature-scaled KL) and the true labels (cross-entropy) over the run's training split.

The student reads the teacher's tokenizer and cleaning, so both see identical inputs, and its
bundle predicts with exactly the preprocessing the teacher's does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.bundle import save_bundle
from lmforge.config import Config, load_config, read_config_file
from lmforge.data import PreparedData, prepare_classification_data
from lmforge.errors import LmforgeError
from lmforge.files import staged_dir
from lmforge.optimize.bundles import Source
from lmforge.optimize.report import report_on
from lmforge.optimize.retrain import encode_split, train_in_scratch
from lmforge.tasks.classification import build_model, pad_batch, predict_logits
from lmforge.tokenization import load_pretrained_tokenizer
from lmforge.training import seed_everything

Batch = dict[str, torch.Tensor]


@dataclass
class SoftLabelled(Sequence):
    """Token ids, true label index and the teacher's logits per text."""

    ids: list[np.ndarray]
    labels: np.ndarray
    teacher_logits: np.ndarray  # (n, classes)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, np.ndarray]:
        return self.ids[i], int(self.labels[i]), self.teacher_logits[i]


def make_soft_collate(pad_id: int) -> Callable[[list[tuple[np.ndarray, int, np.ndarray]]], Batch]:
    def collate(items: list[tuple[np.ndarray, int, np.ndarray]]) -> Batch:
        batch = pad_batch([ids for ids, _, _ in items], pad_id)
        batch["labels"] = torch.tensor([label for _, label, _ in items], dtype=torch.long)
        batch["teacher_logits"] = torch.from_numpy(np.stack([t for _, _, t in items])).float()
        return batch

    return collate


def distillation_loss(
    temperature: float, alpha: float
) -> Callable[[nn.Module, Batch], torch.Tensor]:
    """alpha · T² · KL(teacher_T ‖ student_T) + (1 − alpha) · CE(student, true label).

    T² keeps the soft term's gradients on the scale of the hard term's (Hinton et al., 2015).
    """

    def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = model(batch["input_ids"], batch["attention_mask"]).float()
        soft = F.kl_div(
            F.log_softmax(logits / temperature, dim=-1),
            F.log_softmax(batch["teacher_logits"] / temperature, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        hard = F.cross_entropy(logits, batch["labels"])
        return alpha * temperature**2 * soft + (1 - alpha) * hard

    return loss_fn


def read_student_config(student: str | Path | dict[str, Any]) -> tuple[Config, dict[str, Any]]:
    """The validated config and the raw mapping (to see which sections the user wrote)."""
    raw = dict(student) if isinstance(student, dict) else read_config_file(student)
    return load_config(raw), raw


def _training_data(source: Source, cfg: Config, raw: dict[str, Any], name: str) -> PreparedData:
    """The student config's data when it names some (same label set required), else the run's."""
    if "data" not in raw:
        return source.run_data("distillation")[1]
    data = prepare_classification_data(cfg.data)
    if data.label_names != source.meta["labels"]:
        raise LmforgeError(
            f"student config {name} has labels {data.label_names}, the teacher "
            f"{source.bundle_dir} has {source.meta['labels']}: a student must learn the same "
            "label set"
        )
    return data


def build_student(source: Source, cfg: Config, name: str) -> nn.Module:
    """The student of `cfg.model`, reading the teacher's tokenizer at the teacher's max length."""
    tokenizer = source.predictor.tokenizer
    if cfg.model.arch == "pretrained":
        theirs = load_pretrained_tokenizer(
            cfg.model.pretrained, cfg.model.revision, cfg.model.trust_remote_code
        )
        if theirs.fingerprint() != tokenizer.fingerprint():
            raise LmforgeError(
                f"student config {name}: '{cfg.model.pretrained}' has its own tokenizer, not the "
                "teacher's; use model.arch: transformer (it reads the teacher's tokenizer) or a "
                "pretrained model with the same tokenizer"
            )
    model_cfg = cfg.model.model_copy(update={"max_length": source.meta["max_length"]})
    seed_everything(cfg.train.seed)
    return build_model(model_cfg, tokenizer, source.meta["labels"])


def _unused_settings_note(raw: dict[str, Any], max_length: int) -> list[str]:
    """Say so when the student config sets what the teacher decides (no silent override)."""
    asked = raw.get("model", {}).get("max_length")
    unused = ["its tokenizer section"] if "tokenizer" in raw else []
    if asked is not None and asked != max_length:
        unused.append(f"model.max_length {asked}")
    if not unused:
        return []
    return [
        f"student config: {' and '.join(unused)} not used: the student reads the teacher's "
        f"tokenizer at max_length {max_length}"
    ]


def _student_meta(source: Source, cfg: Config, student: nn.Module) -> dict[str, Any]:
    meta = {k: v for k, v in source.meta.items()
            if k not in ("architecture", "pretrained", "adapter")}  # the teacher's model
    meta["arch"] = cfg.model.arch
    if cfg.model.arch == "transformer":
        meta["architecture"] = student.config.to_dict()
    else:
        meta["pretrained"] = {"name": cfg.model.pretrained, "revision": cfg.model.revision}
    meta["derived_from"] = {"bundle": str(source.bundle_dir.resolve()), "operation": "distill"}
    return meta


def distill_bundle(
    source: Source,
    student_config: str | Path | dict[str, Any],
    out: Path,
    temperature: float = 2.0,
    alpha: float = 0.5,
    show_progress: bool = True,
) -> dict[str, Any]:
    """`lmforge compress --distill STUDENT_CONFIG`: a student bundle, measured beside the
    teacher."""
    if temperature <= 0 or not 0 <= alpha <= 1:
        raise LmforgeError(
            f"--temperature must be > 0 and --alpha in [0, 1], got {temperature} and {alpha}"
        )
    if source.is_onnx:
        raise LmforgeError(f"{source.bundle_dir} is an ONNX bundle; the teacher must be PyTorch")
    name = str(student_config) if not isinstance(student_config, dict) else "(mapping)"
    cfg, raw = read_student_config(student_config)
    if cfg.task != source.meta["task"]:
        raise LmforgeError(
            f"student config {name} is for task '{cfg.task}', the teacher "
            f"{source.bundle_dir} is '{source.meta['task']}'"
        )
    data = _training_data(source, cfg, raw, name)
    student = build_student(source, cfg, name)
    tokenizer, labels = source.predictor.tokenizer, source.meta["labels"]
    train = encode_split(tokenizer, data.train, labels, source.meta["max_length"])
    val = encode_split(tokenizer, data.val, labels, source.meta["max_length"])
    teacher_logits = predict_logits(source.predictor.model, train.ids, tokenizer.pad_id)
    train_set = SoftLabelled(train.ids, train.labels, teacher_logits)
    train_in_scratch(
        student,
        train_set,
        make_soft_collate(tokenizer.pad_id),
        distillation_loss(temperature, alpha),
        val,
        tokenizer.pad_id,
        cfg.train,
        show_progress,
    )
    teacher_params = sum(p.numel() for p in source.predictor.model.parameters())
    student_params = sum(p.numel() for p in student.parameters())
    details = {
        "distillation": {
            "student_config": name,
            "student_arch": cfg.model.arch,
            "temperature": temperature,
            "alpha": alpha,
            "train_data": cfg.data.path if "data" in raw else "the teacher's run",
            "train_texts": len(train),
            "param_ratio": student_params / teacher_params,
        },
        "notes": [
            f"student: {student_params:,} parameters, {student_params / teacher_params:.1%} of "
            f"the teacher's; trained on {len(train)} texts at T={temperature}, alpha={alpha}",
            *_unused_settings_note(raw, source.meta["max_length"]),
        ],
    }
    meta = _student_meta(source, cfg, student)
    meta["distillation"] = details["distillation"]
    with staged_dir(out) as tmp:
        save_bundle(tmp, student, tokenizer, meta)
        return report_on(source, tmp, out, "distillation", details)
