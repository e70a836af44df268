"""The package's shape as a contract: imports run one way, down the layers, with no cycles,
and docs/architecture.md names every module there is.

Every import counts, the ones inside functions too: a lazy import still ties two modules
together. Layers, top to bottom (a module may import its own layer and the ones below):
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mobiletune"

LAYERS: list[tuple[str, ...]] = [
    ("mobiletune", "__main__"),  # the package's entry points: `mobiletune.load`, `python -m`
    ("cli",),  # the only package that talks to the terminal
    ("deploy",),  # export to ONNX / TorchScript / TFLite / Core ML, parity, int8
    ("training",),  # a run: stages, checkpoints in memory, finishing, folds, resume
    ("evaluation",),  # scoring a checkpoint on images: metrics, calibration, report, explain
    ("predict",),  # one Predictor over checkpoints and exports (backends)
    ("frozen",),  # the frozen prefix: engines, the feature cache, feeds for a stage
    ("model",),  # the backbone, its head and split, checkpoints on disk, profiling
    ("data",),  # images, folders, labels, splits, transforms, the eval view
    ("config",),  # the schema, YAML loading, overrides
    ("errors", "fileio", "parallel", "vision", "onnxrt", "dist"),  # shared utilities
]
UTILITIES = LAYERS[-1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(pkg: Path = PKG) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(pkg.rglob("*.py"))}


def imports_of(path: Path, name: str) -> set[str]:
    """Every mobiletune module `path` imports, at module level or inside a function."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    known = modules()
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "mobiletune"}
        elif isinstance(node, ast.ImportFrom):
            base = (here[:len(here) - node.level + 1] if node.level else [])
            mod = ".".join(base + ([node.module] if node.module else []))
            if mod.split(".")[0] != "mobiletune":
                continue
            for a in node.names:  # `from pkg import module` imports the module
                sub = f"{mod}.{a.name}"
                out.add(sub if sub in known else mod)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    return {name: imports_of(path, name) for name, path in modules().items()}


def layer_of(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else parts[0]
    for i, names in enumerate(LAYERS):
        if key in names:
            return i
    raise AssertionError(f"{module} is in no layer: add its folder to LAYERS and to "
                         "docs/architecture.md")


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `g` as a path (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (found := visit(n)):
            return found
    return None


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    # the bare package (`from mobiletune import __version__`) is imported before any of its
    # modules anyway, and its own import (`mobiletune.load`) runs only when called
    return [f"{a} -> {b}" for a, deps in sorted(g.items()) for b in sorted(deps)
            if b != "mobiletune" and layer_of(b) < layer_of(a)]


def test_no_import_cycles():
    assert find_cycle(graph()) is None


def test_imports_only_run_down_the_layers():
    assert upward_imports(graph()) == []


def test_the_checks_catch_a_cycle_and_an_upward_import():
    g = graph()
    g["mobiletune.data.images"] = g["mobiletune.data.images"] | {"mobiletune.data.scan"}
    assert find_cycle(g) is not None
    assert upward_imports(g) == []  # same layer: a cycle, not a layering fault
    g["mobiletune.model.backbone"] = g["mobiletune.model.backbone"] | {"mobiletune.training.run"}
    assert upward_imports(g) == ["mobiletune.model.backbone -> mobiletune.training.run"]


def test_the_import_reader_sees_lazy_and_relative_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from mobiletune.training import run\n"
                 "    import mobiletune.errors\n")
    assert imports_of(f, "mobiletune.model.backbone") == {"mobiletune.training.run",
                                                         "mobiletune.errors"}


def test_the_package_root_holds_entry_points_and_a_few_utilities():
    root = {p.stem for p in PKG.glob("*.py")} - {"__init__", "__main__"}
    assert root == set(UTILITIES), "a root module is a shared utility: list it in LAYERS"
    assert len(root) <= 6


def test_every_folder_says_what_it_holds():
    for init in PKG.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 20, f"{init} needs a docstring saying what the folder holds"


def _documented() -> set[str]:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    return set(re.findall(r"`(mobiletune/[\w/]+\.py)`", doc))


def test_docs_architecture_lists_every_module_and_no_other():
    if not (ROOT / "docs" / "architecture.md").is_file():
        pytest.fail("docs/architecture.md is missing")
    tree = {str(p.relative_to(ROOT)) for p in PKG.rglob("*.py") if p.name != "__init__.py"}
    documented = _documented()
    assert sorted(tree - documented) == [], "modules docs/architecture.md does not describe"
    assert sorted(documented - tree) == [], "docs/architecture.md names modules that are gone"
