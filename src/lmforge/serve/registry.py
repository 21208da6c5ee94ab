"""The served models: names from the command line, each with its task and the engine that runs it.

A name is looked up here and nowhere else: a request's "model" never becomes a path. Each task
has a loader (TASK_LOADERS) that turns a bundle into the engine its routes call (engines/): a
ClassificationEngine, a GenerationEngine or an AssistantEngine.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.bundle import (
    Generator,
    check_bundle,
    load,
    locate_bundle,
    open_model_bundle,
    read_meta,
)
from lmforge.errors import LmforgeError
from lmforge.models.adapters import SharedBases
from lmforge.serve.engines.assistant import AssistantEngine
from lmforge.serve.engines.classification import ClassificationEngine
from lmforge.serve.engines.generation import GenerationEngine
from lmforge.serve.engines.grounded import BundleWriter, UpstreamWriter
from lmforge.serve.engines.images import ImageEngine
from lmforge.serve.engines.recommendation import RecommendationEngine
from lmforge.serve.engines.table import TableEngine
from lmforge.serve.engines.text_regression import TextRegressionEngine
from lmforge.serve.engines.threaded import ThreadedEngine
from lmforge.serve.engines.translation import TranslationEngine
from lmforge.serve.errors import APIError
from lmforge.serve.metrics import ServeMetrics
from lmforge.serve.settings import ServeSettings

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
ENDPOINT_OF_TASK = {
    "classification": "POST /v1/classify",
    "generation": "POST /v1/completions or POST /v1/chat/completions",
    "assistant": "POST /v1/chat/completions",
    "recommendation": "POST /v1/recommend",
    "translation": "POST /v1/translations",
    "table": "POST /v1/predict",  # a feature table's classification or regression
    "regression": "POST /v1/predict",  # a text's number
    "image": "POST /v1/classify",  # images' classification, images as base64
}


def open_served(bundle_dir: Path, settings: ServeSettings, bases: SharedBases | None) -> Any:
    """The bundle's predictor; adapter bundles over the same base share one copy of it."""
    if bases is not None and "adapter" in read_meta(bundle_dir):
        return open_model_bundle(bundle_dir, settings.device, bases)
    return load(bundle_dir, device=settings.device)


def load_classifier(
    name: str, bundle_dir: Path, settings: ServeSettings, metrics: ServeMetrics,
    bases: SharedBases | None = None,
) -> ClassificationEngine:
    predictor = open_served(bundle_dir, settings, bases)
    return ClassificationEngine(
        name,
        predictor,
        settings.max_batch_size,
        settings.max_wait_ms / 1000,
        settings.max_queue,
        metrics,
    )


def load_generation_engine(
    name: str, bundle_dir: Path, settings: ServeSettings, metrics: ServeMetrics,
    bases: SharedBases | None = None,
) -> GenerationEngine:
    generator = open_served(bundle_dir, settings, bases)
    assert isinstance(generator, Generator)  # the registry checked the bundle's task
    return GenerationEngine(
        name, generator, settings.max_queue, settings.max_batch_size, metrics
    )


def load_assistant_engine(
    name: str, bundle_dir: Path, settings: ServeSettings, metrics: ServeMetrics,
    bases: SharedBases | None = None,
) -> AssistantEngine:
    assistant = load(bundle_dir, device=settings.device)
    generator, writer = assistant.meta.get("generator"), None
    if generator and "://" in generator:
        writer = UpstreamWriter(generator, assistant.meta["generator_model"])
    elif generator:  # a generation bundle, decoded in this process
        generator_dir = locate_bundle(generator).bundle_dir
        if read_meta(generator_dir)["task"] != "generation":
            raise LmforgeError(f"assistant.generator {generator} is not a generation bundle")
        writer = BundleWriter(
            load_generation_engine(f"{name}:generator", generator_dir, settings, metrics)
        )
    return AssistantEngine(
        name,
        assistant,
        settings.max_batch_size,
        settings.max_wait_ms / 1000,
        settings.max_queue,
        metrics,
        writer,
    )


def threaded_loader(engine: type[ThreadedEngine]) -> Callable[..., ThreadedEngine]:
    """The loader of a model that answers one request at a time in a worker thread (a table's
    MLP, an image CNN, a recommender): its bundle's predictor inside `engine`."""

    def load_engine(name: str, bundle_dir: Path, settings: ServeSettings,
                    metrics: ServeMetrics, bases: SharedBases | None = None) -> ThreadedEngine:
        return engine(name, load(bundle_dir, device=settings.device), settings.max_queue,
                      metrics)

    return load_engine


def load_translation_engine(
    name: str, bundle_dir: Path, settings: ServeSettings, metrics: ServeMetrics,
    bases: SharedBases | None = None,
) -> TranslationEngine:
    translator = load(bundle_dir, device=settings.device)
    return TranslationEngine(name, translator, settings.max_batch_size, settings.max_queue,
                             metrics)




Engine = (ClassificationEngine | GenerationEngine | AssistantEngine | RecommendationEngine
          | TranslationEngine | TableEngine | ImageEngine | TextRegressionEngine)
TASK_LOADERS: dict[str, Callable[..., Engine]] = {
    "classification": load_classifier,
    "generation": load_generation_engine,
    "assistant": load_assistant_engine,
    "recommendation": threaded_loader(RecommendationEngine),
    "translation": load_translation_engine,
    "table": threaded_loader(TableEngine),
    "regression": threaded_loader(TextRegressionEngine),
    "image": threaded_loader(ImageEngine),
}


@dataclass
class ServedModel:
    name: str
    task: str
    bundle_dir: Path
    created: int  # unix time the bundle was written (OpenAI's "created")
    engine: Engine | None = None  # None until loaded
    load_error: str | None = None


def parse_model_spec(spec: str) -> tuple[str, Path]:
    """'NAME=BUNDLE' or 'BUNDLE' → (name, bundle dir); a run directory stands for its model/
    (bundle.locate_bundle). Without a NAME, a model is named after its run (or its folder)."""
    name, sep, path = spec.partition("=")
    if not sep or not NAME_PATTERN.match(name):
        name, path = "", spec
    bundle_dir = locate_bundle(path).bundle_dir  # a clear error now beats a failed load later
    if not name:
        run_dir = bundle_dir.resolve().parent if bundle_dir.name == "model" else bundle_dir
        name = run_dir.resolve().name
    if not NAME_PATTERN.match(name):
        raise LmforgeError(f"model name {name!r} is not allowed; name it: NAME={spec}")
    return name, bundle_dir


class ModelRegistry:
    def __init__(self, specs: list[str]) -> None:
        self._models: dict[str, ServedModel] = {}
        for spec in specs:
            name, bundle_dir = parse_model_spec(spec)
            if name in self._models:
                raise LmforgeError(
                    f"two models are named '{name}'; name them apart with NAME=BUNDLE"
                )
            meta = read_meta(bundle_dir)
            # a kind of input with an engine of its own (a table's rows, images) is served by
            # it, whatever the task; the others by their task's
            kind = meta.get("inputs", "text")
            task = kind if kind in TASK_LOADERS else meta["task"]
            if task not in TASK_LOADERS:
                raise LmforgeError(
                    f"{bundle_dir} holds a '{task}' model; lmforge serve runs "
                    f"{', '.join(TASK_LOADERS)} models so far"
                )
            check_bundle(bundle_dir)  # a damaged file stops the start; the model loads later
            created = int((bundle_dir / "lmforge.json").stat().st_mtime)
            self._models[name] = ServedModel(name, task, bundle_dir, created)

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def load_all(self, settings: ServeSettings, metrics: ServeMetrics) -> None:
        """Load every model (slow: runs in a thread at startup). Engines start afterwards.
        Adapter bundles over one base share that base's weights (one copy in memory)."""
        bases = SharedBases()
        for model in self:
            try:
                model.engine = TASK_LOADERS[model.task](
                    model.name, model.bundle_dir, settings, metrics, bases
                )
            except LmforgeError as error:  # reported by /readyz; the other models still serve
                model.load_error = str(error)
            except Exception as error:
                model.load_error = f"{type(error).__name__}: {error}"

    @property
    def ready(self) -> bool:
        return all(model.engine is not None for model in self)

    def get(self, name: str) -> ServedModel:
        model = self._models.get(name)
        if model is None:
            served = ", ".join(self._models)
            raise APIError(
                404,
                f"the model '{name}' does not exist; this server has: {served}",
                code="model_not_found",
                param="model",
            )
        return model

    def require(self, name: str, task: str) -> ServedModel:
        """The model `name`, loaded, if it does `task`; else the error the client should see."""
        model = self.get(name)
        if model.task != task:
            where = ENDPOINT_OF_TASK.get(model.task, "its own endpoint")
            raise APIError(
                400,
                f"'{name}' is a {model.task} model and cannot serve {task}; use {where}",
                code="wrong_model_task",
                param="model",
            )
        if model.engine is None:
            detail = f"failed to load ({model.load_error})" if model.load_error else "is loading"
            raise APIError(503, f"the model '{name}' {detail}", code="model_not_ready")
        return model
