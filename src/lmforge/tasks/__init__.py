"""The tasks, each a recipe (see tasks/recipe.py) the verbs run: TASKS maps a config's `task`
to its recipe. A new task is a module here with its recipe, and one entry below.

A task that reads more than one kind of input (text; a feature table; images) keeps its text
recipe in TASKS and has one recipe per other kind in INPUT_RECIPES, keyed (task, kind). At
train time `inputs_of(cfg)` picks the kind: `data.inputs`, or with `auto` the first kind whose
detector (INPUT_DETECTORS) recognises the config's data. A bundle records its kind in
meta["inputs"]; a bundle without one holds text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmforge.data.images import looks_like_images
from lmforge.errors import LmforgeError
from lmforge.tasks import (
    assistant,
    classification,
    generation,
    images,
    preference,
    recommendation,
    tabular,
    text_regression,
    translation,
)
from lmforge.tasks.recipe import TaskRecipe

TASKS: dict[str, TaskRecipe] = {
    "classification": classification.RECIPE,
    "generation": generation.RECIPE,
    "assistant": assistant.RECIPE,
    "recommendation": recommendation.RECIPE,
    "translation": translation.RECIPE,
    "regression": text_regression.RECIPE,  # a text column; feature tables: INPUT_RECIPES
    "preference": preference.RECIPE,
}
INPUT_RECIPES: dict[tuple[str, str], TaskRecipe] = {}
INPUT_RECIPES[("classification", "table")] = tabular.CLASSIFICATION
INPUT_RECIPES[("regression", "table")] = tabular.REGRESSION
INPUT_RECIPES[("classification", "image")] = images.RECIPE
# a generation model tuned on preference pairs: its bundle loads and evaluates through them
INPUT_RECIPES[("generation", preference.INPUTS)] = preference.RECIPE
# kind -> whether a config (data.inputs: auto) holds that kind of data; asked in this order.
INPUT_DETECTORS: dict[str, Callable[[Any], bool]] = {}
INPUT_DETECTORS["image"] = looks_like_images  # before "table": a table of image paths is images
INPUT_DETECTORS["table"] = tabular.holds_table
TEXT = "text"


def recipe_for(task: str, inputs: str = TEXT) -> TaskRecipe:
    """The recipe of `task` for `inputs` (text, or a kind in INPUT_RECIPES)."""
    if inputs != TEXT:
        if (task, inputs) in INPUT_RECIPES:
            return INPUT_RECIPES[(task, inputs)]
        kinds = [TEXT, *(kind for name, kind in INPUT_RECIPES if name == task)]
        raise LmforgeError(f"task '{task}' does not read {inputs} inputs; it reads: "
                           f"{', '.join(kinds)}")
    if task not in TASKS:
        raise LmforgeError(f"unknown task '{task}'; available: {', '.join(TASKS)}")
    return TASKS[task]


def inputs_of(cfg: Any) -> str:
    """The kind of input a config trains on: data.inputs, or the one its data looks like."""
    chosen = getattr(cfg.data, "inputs", "auto")
    if chosen != "auto":
        return chosen
    for kind, detects in INPUT_DETECTORS.items():
        if (cfg.task, kind) in INPUT_RECIPES and detects(cfg):
            return kind
    return TEXT


def recipe_of(meta: dict[str, Any]) -> TaskRecipe:
    """The recipe that loads a bundle, from its meta.json."""
    return recipe_for(meta["task"], meta.get("inputs", TEXT))


__all__ = ["INPUT_DETECTORS", "INPUT_RECIPES", "TASKS", "TaskRecipe", "inputs_of", "recipe_for",
           "recipe_of"]
