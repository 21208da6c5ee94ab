"""provenance.json: what produced a run (versions, commit, data hash, hardware, command)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import torch

PACKAGES = ("lmforge", "torch", "transformers", "tokenizers", "numpy", "scikit-learn", "pydantic")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def collect(data_path: str, data_hash: str) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {name: _version(name) for name in PACKAGES}
        | {"python": platform.python_version()},
        "git_commit": _git_commit(),
        "data": {"path": data_path, "sha256": data_hash},
        "hardware": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": gpu,
        },
        "command": sys.argv,
    }
