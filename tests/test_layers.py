"""The package's import structure, read with ``ast`` from its own files: no circles, and the torch-free modules stay so.

Every import counts: at the top, under ``TYPE_CHECKING`` and inside functions. A lazy import may keep start-up fast,
but it must point down like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "qualiclip_infer"
# Modules the commands import before they parse their arguments: they must not need torch (``--help`` stays instant).
TORCH_FREE = {"_cli", "_lazy", "_version", "allocator", "atomic", "constants", "extras", "files", "hub", "messages", "output", "uris",
              "parquet_rows", "presets", "ray_scoring", "results", "score_files", "deadline_pool", "writelock", "streams",
              "runtime_info", "cpu_features", "export_cli", "ray_actors", "sources", "sources.entries", "sources.hf",
              "sources.parquet", "sources.patterns", "sources.tar"}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, modules: Set[str], root: Path = PACKAGE, tree: Optional[ast.AST] = None) -> Set[str]:
    """The package modules ``path`` imports anywhere in its code, or in ``tree`` when given (a part of it);
    ``from . import x`` names module ``x``."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")) if tree is None else tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names if alias.name.startswith("qualiclip_infer")]
            found.update(target.removeprefix("qualiclip_infer").lstrip(".") for target in targets)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                stem = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("qualiclip_infer"):
                stem = node.module.removeprefix("qualiclip_infer").lstrip(".")
            else:
                continue
            for alias in node.names:
                candidate = f"{stem}.{alias.name}" if stem else alias.name
                found.add(candidate if candidate in modules else stem)
    return {module for module in found if module in modules and module != name}


def import_graph(root: Path = PACKAGE) -> Dict[str, Set[str]]:
    files = sorted(root.rglob("*.py"))
    modules = {module_name(path, root) for path in files}
    return {module_name(path, root): imported_modules(path, modules, root) for path in files}


def find_circle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import circle as ``[a, b, ..., a]``, or ``[]`` when there is none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                circle = visit(target)
                if circle:
                    return circle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            circle = visit(node)
            if circle:
                return circle
    return []


def test_no_import_circle():
    graph = import_graph()
    assert len(graph) > 30  # the walk found the package
    assert find_circle(graph) == []


def test_no_circle_between_rooms():
    """Counting each subpackage (eval, train, report) as one room, as a reader of the tree sees it: a package's
    command may sit on the shared command module, but nothing below may reach back into the package."""
    rooms: Dict[str, Set[str]] = {}
    for module, targets in import_graph().items():
        room = module.split(".")[0]
        rooms.setdefault(room, set()).update(target.split(".")[0] for target in targets)
    for room, targets in rooms.items():
        targets.discard(room)
    assert find_circle(rooms) == []


def test_the_check_finds_a_circle_through_a_function_level_import(tmp_path):
    package = tmp_path / "qualiclip_infer"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .high import X\n")
    (package / "high.py").write_text("def f():\n    from . import low\n")
    graph = import_graph(package)
    assert graph["low"] == {"high"} and graph["high"] == {"low"}
    assert find_circle(graph) in (["high", "low", "high"], ["low", "high", "low"])


@pytest.mark.parametrize("module", sorted(TORCH_FREE))
def test_torch_free_modules_stay_torch_free(module):
    """A torch-free module imports, at its top level, neither torch nor numpy nor a package module that is not
    torch-free itself (inside a function it may: that import runs only when the function does)."""
    path = module_path(module)
    top_level = ast.Module(body=[node for node in ast.parse(path.read_text(encoding="utf-8")).body
                                 if isinstance(node, (ast.Import, ast.ImportFrom))], type_ignores=[])
    for node in top_level.body:
        if isinstance(node, ast.Import) or not node.level:
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(name.split(".")[0] in ("torch", "numpy", "open_clip", "PIL") for name in names), (module,
                                                                                                            names)
    modules = {module_name(file) for file in PACKAGE.rglob("*.py")}
    for target in imported_modules(path, modules, tree=top_level):
        assert target in TORCH_FREE, f"{module} imports {target} at its top level"


def module_path(module: str) -> Path:
    """The file of a package module (``sources`` is ``sources/__init__.py``)."""
    folder = PACKAGE.joinpath(*module.split("."))
    return folder / "__init__.py" if folder.is_dir() else folder.with_suffix(".py")


def _names_used(module: str) -> Set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    names |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    return names


def test_front_ends_never_name_the_facade():
    """The engine and the maps are written against the batch core; the facade composes them, never the reverse."""
    for module in ("engine", "maps", "runner", "loading", "loss"):
        assert "QualityScorer" not in _names_used(module), module
        assert "scorer" not in import_graph()[module], module


def test_the_0_1_module_names_keep_working():
    """Code written against 0.1 imported from ``weights`` and ``distributed``; those names still lead to the same
    objects."""
    from qualiclip_infer import checkpoint, distributed, hub, ray_scoring, weights

    assert weights.load_checkpoint is checkpoint.load_checkpoint and weights.HubFile is hub.HubFile
    assert weights.resolve_weights is hub.resolve_weights and weights.CheckpointError is checkpoint.CheckpointError
    assert distributed.score_dataset is ray_scoring.score_dataset
