"""The package reads bottom-up: a module never imports a higher layer, not even inside a function.

Layers (DEVELOPERS.md): ground (errors, utils, config, numerics) < data, models < quant < export
< evaluate < train < infer < cli. Every ``import``/``from ... import`` anywhere in a module's
syntax tree counts, so an import hidden in a function to dodge a cycle fails too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "quantir"

LAYERS = {
    "quantir": 0, "quantir.errors": 0, "quantir.utils": 0, "quantir.config": 0, "quantir.numerics": 0,
    "quantir.data": 1, "quantir.models": 1,
    "quantir.quant": 2,
    "quantir.export": 3,
    "quantir.evaluate": 4,
    "quantir.train": 5,
    "quantir.infer": 6,
    "quantir.cli": 7, "quantir.__main__": 7,
}


def layer_of(module: str) -> int:
    """The layer of the longest registered prefix of ``module``."""
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        key = ".".join(parts[:k])
        if key in LAYERS:
            return LAYERS[key]
    raise KeyError(module)


def module_name(path: Path, root: Path = SRC) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, this: str, is_package: bool) -> list[tuple[str, int]]:
    """Every quantir module named by an import statement anywhere in ``tree``, with its line."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = this.split(".") if is_package else this.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((mod, node.lineno))
            # ``from quantir import train`` imports the subpackage quantir.train
            found += [(f"{mod}.{alias.name}", node.lineno) for alias in node.names
                      if f"{mod}.{alias.name}" in LAYERS]
    return [(m, line) for m, line in found if m == "quantir" or m.startswith("quantir.")]


def upward_imports(root: Path = SRC) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        this = module_name(path, root)
        tree = ast.parse(path.read_text(), filename=str(path))
        own = layer_of(this)
        for mod, line in imported_modules(tree, this, path.name == "__init__.py"):
            if layer_of(mod) > own:
                bad.append(f"{path.relative_to(root.parent)}:{line}: {this} (layer {own}) imports {mod} "
                           f"(layer {layer_of(mod)})")
    return bad


def test_no_module_imports_a_higher_layer():
    bad = upward_imports()
    assert not bad, "imports that run up the layers:\n" + "\n".join(bad)


def test_every_module_has_a_layer():
    for path in SRC.rglob("*.py"):
        layer_of(module_name(path))  # raises KeyError for an unregistered top-level module


@pytest.mark.parametrize("source, importer", [
    ("from quantir.train import checkpoint\n", "export/from_checkpoint.py"),
    ("def f():\n    from quantir.train.checkpoint import load_torch_predictor\n", "evaluate/predictors.py"),
    ("def f():\n    from quantir.export.parity import torch_uint8\n", "quant/checkpoint.py"),
    ("from quantir.evaluate.metrics import psnr\n", "export/parity.py"),
    ("from ..evaluate import tiling\n", "export/runtime.py"),
])
def test_the_check_catches_upward_imports(tmp_path, source, importer):
    """The five imports that once ran up the layers, planted in a copy of the tree, are each caught."""
    root = tmp_path / "quantir"
    target = root / importer
    target.parent.mkdir(parents=True)
    target.write_text(source)
    bad = upward_imports(root)
    assert len(bad) == 1 and importer in bad[0]
