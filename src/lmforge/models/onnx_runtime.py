"""An exported ONNX model behind the call every lmforge classifier has:
`forward(input_ids, attention_mask) -> logits`, run by ONNX Runtime on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.errors import LmforgeError

ONNX_INPUTS = ("input_ids", "attention_mask")
ONNX_OUTPUT = "logits"


def open_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime session on the CPU, on `threads` threads or else as many as torch uses
    (OMP_NUM_THREADS, torch.set_num_threads): ONNX Runtime's own default, every core, ignores
    both and ran several times slower on a busy machine. A missing or damaged file raises
    LmforgeError naming it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    if not path.is_file():
        raise LmforgeError(f"{path}: missing; the bundle's ONNX model belongs there")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ONNX Runtime's own types (InvalidProtobuf, Fail, ...)
        reason = " ".join(str(error).rpartition("failed:")[2].split()) or type(error).__name__
        raise LmforgeError(f"{path}: not a valid ONNX model ({reason})") from None


class OnnxClassifier(nn.Module):
    """An ONNX Runtime session that the Predictor calls like a PyTorch classifier."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = open_session(self.path, threads)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feeds = {
            "input_ids": input_ids.cpu().numpy(),
            "attention_mask": attention_mask.cpu().numpy(),
        }
        (logits,) = self.session.run([ONNX_OUTPUT], feeds)  # (B, n_classes)
        return torch.from_numpy(logits)


class OnnxImageClassifier(OnnxClassifier):
    """The same for an image classifier: `forward(pixels) -> logits` (input "pixels")."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (logits,) = self.session.run([ONNX_OUTPUT], {"pixels": pixels.cpu().numpy()})
        return torch.from_numpy(logits)
