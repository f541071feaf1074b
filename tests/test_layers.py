"""The house's one rule that code review cannot keep by eye: imports run down the flow data -> augment -> methods
-> train -> evaluate -> track/export, never back up; MLflow stays in the tracking package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Lowest first; a module may import from its own layer and those before it. A module's layer is that of its
# longest listed prefix.
LAYERS = [
    (
        "pipeline",
        "pipeline.errors",
        "pipeline.options",
        "pipeline.distributed",
        "pipeline.schedules",
        "pipeline.cluster",
        "pipeline.storage",
        "pipeline.console",
        "pipeline.stopping",
    ),
    ("pipeline.data",),
    ("augment",),
    ("pipeline.models", "pipeline.losses"),
    ("pipeline.methods", "pipeline.optim"),
    ("pipeline.sections", "pipeline.config"),
    ("pipeline.train",),
    ("pipeline.evaluate",),
    ("pipeline.track", "pipeline.export"),
    ("pipeline.job", "pipeline.embedding"),
    ("pipeline.search",),
    ("pipeline.commands",),
    ("pipeline.cli", "pipeline.__main__"),
]


def _layer(module: str) -> int | None:
    matches = [
        (len(prefix), index)
        for index, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(matches)[1] if matches else None


def _modules() -> dict[str, Path]:
    files = [*(REPO / "pipeline").rglob("*.py"), *(REPO / "augment").rglob("*.py")]
    return {".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): path for path in files}


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_run_down_the_flow(module):
    own = _layer(module)
    assert own is not None, f"{module} is in no layer: add it to LAYERS"
    upward = [name for name in _imports(_modules()[module]) if (_layer(name) or 0) > own]
    assert not upward, f"{module} imports against the flow: {upward}"


def test_only_tracking_imports_mlflow_and_training_knows_nothing_of_it():
    importers = {
        module
        for module, path in _modules().items()
        if any(name == "mlflow" or name.startswith("mlflow.") for name in _imports(path))
    }
    assert importers <= {"pipeline.track.tracker"}
    training = [module for module in _modules() if module.startswith("pipeline.train")]
    assert training and not [
        name
        for module in training
        for name in _imports(_modules()[module])
        if name.startswith(("pipeline.track", "mlflow"))
    ]


def test_commands_stand_on_the_library_alone():
    """No command imports another (the CLI hands ``tune`` and ``anomaly`` the pretraining job), and no two modules
    share a name across packages."""
    commands = {module: path for module, path in _modules().items() if module.startswith("pipeline.commands.")}
    assert commands
    for module, path in commands.items():
        others = [name for name in _imports(path) if name.startswith("pipeline.commands") and name != module]
        assert not others, f"{module} imports another command: {others}"
    names = [path.name for path in _modules().values() if path.name != "__init__.py"]
    assert len(names) == len(set(names)), f"modules share a name: {sorted({n for n in names if names.count(n) > 1})}"
