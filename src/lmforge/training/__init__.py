"""Training: the loop, atomic checkpoints with exact resume, and where progress is reported."""

from lmforge.training.loop import FitResult, fit, resolve_device, seed_everything

__all__ = ["FitResult", "fit", "resolve_device", "seed_everything"]
