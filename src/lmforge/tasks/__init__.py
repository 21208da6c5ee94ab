"""The tasks, each a recipe (see tasks/recipe.py) the verbs run: TASKS maps a config's `task`
to its recipe. A new task is a module here with its recipe, and one entry below."""

from lmforge.tasks import assistant, classification, generation
from lmforge.tasks.recipe import TaskRecipe

TASKS: dict[str, TaskRecipe] = {
    "classification": classification.RECIPE,
    "generation": generation.RECIPE,
    "assistant": assistant.RECIPE,
}

__all__ = ["TASKS", "TaskRecipe"]
