"""The bundles export and compress take besides a text classifier, each with its own exporter:
a feature table's MLP and an image CNN (ONNX fp32, and int8), lmforge's GPT (ONNX with its KV
cache; no int8), lmforge's encoder–decoder (ONNX: an encoder graph and a decoder graph with its
KV cache; int8 where it keeps the translations). A text classifier takes the shared path
(load_source: export, quantize, prune, distill). Each exporter's module is imported when it is
used."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

Report = dict[str, Any]
# (bundle dir, run dir or None, output dir, ONNX opset, data file or None) -> the report
Run = Callable[[Path, Path | None, Path, int, str | Path | None], Report]


@dataclass(frozen=True)
class Exporter:
    what: str  # the bundle, as an error names it
    export: Run
    quantize: Run | None  # int8; None: compress does not take this bundle (the shared path says)
    render: Callable[[Report, Console], None]


def _table(int8: bool) -> Run:
    def run(bundle_dir: Path, run_dir: Path | None, out: Path, opset: int,
            data: str | Path | None) -> Report:
        from lmforge.optimize.tables import export_table_bundle

        return export_table_bundle(bundle_dir, run_dir, out, opset, int8)

    return run


def _render_table(report: Report, console: Console) -> None:
    from lmforge.optimize.tables import render_table_report

    render_table_report(report, console)


def _image(int8: bool) -> Run:
    def run(bundle_dir: Path, run_dir: Path | None, out: Path, opset: int,
            data: str | Path | None) -> Report:
        from lmforge.optimize.images import export_image_bundle, quantize_image_bundle

        return (quantize_image_bundle if int8 else export_image_bundle)(
            bundle_dir, run_dir, out, opset, data)

    return run


def _render(report: Report, console: Console) -> None:
    from lmforge.optimize.report import render_report

    render_report(report, console)


def _gpt(bundle_dir: Path, run_dir: Path | None, out: Path, opset: int,
         data: str | Path | None) -> Report:
    from lmforge.optimize.export_gpt import export_gpt_bundle

    return export_gpt_bundle(bundle_dir, run_dir, out, opset, data)


def _render_gpt(report: Report, console: Console) -> None:
    from lmforge.optimize.export_gpt import render_gpt_report

    render_gpt_report(report, console)


def _translation(int8: bool) -> Run:
    def run(bundle_dir: Path, run_dir: Path | None, out: Path, opset: int,
            data: str | Path | None) -> Report:
        from lmforge.optimize.export_translation import export_translation_bundle

        return export_translation_bundle(bundle_dir, run_dir, out, opset, data, int8)

    return run


def _render_translation(report: Report, console: Console) -> None:
    from lmforge.optimize.export_translation import render_translation_report

    render_translation_report(report, console)


def _text_regression(int8: bool) -> Run:
    def run(bundle_dir: Path, run_dir: Path | None, out: Path, opset: int,
            data: str | Path | None) -> Report:
        from lmforge.optimize.text_regression import export_text_regression_bundle

        return export_text_regression_bundle(bundle_dir, run_dir, out, opset, data, int8)

    return run


# by the bundle's meta["inputs"], then by its task
BY_INPUTS = {
    "table": Exporter("a feature table's bundle", _table(False), _table(True), _render_table),
    "image": Exporter("an image bundle", _image(False), _image(True), _render),
}
BY_TASK = {
    "generation": Exporter("a generation bundle", _gpt, None, _render_gpt),
    "translation": Exporter("a translation bundle", _translation(False), _translation(True),
                            _render_translation),
}


# a text regression bundle (a feature table's has meta["inputs"] "table")
BY_TASK["regression"] = Exporter("a text regression bundle", _text_regression(False),
                                 _text_regression(True), _render_table)


def exporter_of(meta: dict[str, Any]) -> Exporter | None:
    """The exporter of a bundle that has its own, or None for the shared path."""
    return BY_INPUTS.get(meta.get("inputs", "text")) or BY_TASK.get(meta.get("task", ""))
