"""Imports point one way (DESIGN.md): cli → pipeline, serve → optimize → bundle → decoding, data,
tokenization, tasks → training, evaluation, models, config → version. Read from the source's
import statements, type-checking-only imports aside."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "lmforge"

# Each part of the package (a top-level module or subpackage) by layer, lowest first: a part
# may import its own layer and those below. "lmforge" is the package's __init__.
LAYERS = [
    {"version", "errors", "files", "provenance", "render"},  # import nothing of lmforge
    {"config", "training", "evaluation", "models"},
    {"decoding", "data", "tokenization", "chat", "check", "tasks", "runs", "cross_validation",
     "tracking", "tuning", "attributions"},
    {"bundle"},
    {"optimize"},
    {"serve"},
    {"pipeline"},
    {"cli", "__main__", "lmforge"},
]
LAYER = {part: level for level, parts in enumerate(LAYERS) for part in parts}
TOP = {"cli", "__main__", "lmforge"}  # the only parts that may use the pipeline or the package
# Stages that must not know each other, beyond the layers: a server never trains, the loop
# knows nothing of tasks, data or models' insides, models know nothing of data.
NEVER = {
    "serve": {"training", "data", "evaluation"},
    "training": {"tasks", "data", "models", "evaluation", "bundle"},
    "models": {"data", "tokenization", "training"},
}
# Imports that break the direction today, each to be removed; a new one fails the test.
KNOWN_UPWARD = {
    # the classification recipe builds the bundle's Predictor, which lives in bundle.py
    ("tasks", "bundle"),
    # a config's task, and the early-stopping metric it may use, are checked against the
    # recipes when it loads (a lazy import: the recipes are built on the config)
    ("config", "tasks"),
}


def part_of(module: str) -> str:
    """'lmforge.serve.routers.classify' → 'serve'; 'lmforge' → 'lmforge'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "lmforge"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported(path: Path) -> list[str]:
    """The lmforge modules `path` imports; `from lmforge import name` of a name that is no
    submodule is the package itself ("lmforge")."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found, todo = [], [ast.parse(path.read_text(encoding="utf-8"))]
    while todo:
        node = todo.pop()
        todo.extend(child for child in ast.iter_child_nodes(node) if not is_type_checking(child))
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                is_module = any(PACKAGE.parent.joinpath(*full.split(".")).with_suffix(suffix)
                                .exists() for suffix in (".py", ""))
                found.append(full if is_module else base)
    return [module for module in found if module.split(".")[0] == "lmforge"]


SOURCES = sorted(PACKAGE.rglob("*.py"))
EDGES = [(module_name(path), target) for path in SOURCES for target in imported(path)]


def test_every_part_of_the_package_has_a_layer():
    unplaced = {part_of(module_name(path)) for path in SOURCES} - set(LAYER)
    assert not unplaced, f"place these in LAYERS: {sorted(unplaced)}"


def test_nothing_below_the_command_line_imports_the_pipeline_or_the_package():
    wrong = [
        (source, target) for source, target in EDGES
        if part_of(source) not in TOP and (target == "lmforge" or part_of(target) == "pipeline")
    ]
    assert not wrong


def test_imports_point_down_the_layers():
    upward = {
        (part_of(source), part_of(target)): (source, target) for source, target in EDGES
        if LAYER[part_of(target)] > LAYER[part_of(source)]
    }
    new = {pair: edge for pair, edge in upward.items() if pair not in KNOWN_UPWARD}
    assert not new, f"imports against the direction: {sorted(new.values())}"


@pytest.mark.parametrize("part", sorted(NEVER))
def test_stages_that_must_not_know_each_other_do_not(part):
    wrong = [(s, t) for s, t in EDGES if part_of(s) == part and part_of(t) in NEVER[part]]
    assert not wrong
