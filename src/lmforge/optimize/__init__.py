"""Optimize: export (ONNX), quantize (int8), prune, distill. Each takes a classification bundle,
writes a bundle, and measures it beside the original in compress_report.json."""

from lmforge.optimize.bundles import REPORT_FILE, Source, check_out, default_out, load_source
from lmforge.optimize.distill import distill_bundle
from lmforge.optimize.export import DEFAULT_OPSET, export_bundle
from lmforge.optimize.prune import check_amount, prune_bundle
from lmforge.optimize.quantize import quantize_bundle
from lmforge.optimize.report import render_report

__all__ = [
    "DEFAULT_OPSET",
    "REPORT_FILE",
    "Source",
    "check_amount",
    "check_out",
    "default_out",
    "distill_bundle",
    "export_bundle",
    "load_source",
    "prune_bundle",
    "quantize_bundle",
    "render_report",
]
