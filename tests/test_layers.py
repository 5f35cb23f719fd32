"""The package's layers: no module imports one of a higher layer (lazy imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import maskrcnn

# Low to high. A module may import its own layer and the layers below it, never above.
LAYERS: dict[str, int] = {
    "config": 0,
    "structures": 1,
    "ops": 2,
    "data": 3,
    "modeling": 4,
    "weights": 5,
    "viz": 6,
    "evaluation": 7,
    "export": 7,
    "train": 8,
    "serve": 9,
    "demo": 9,
    "ablation": 9,
    "cli": 10,
    "__init__": 10,  # the package's public API re-exports from below
    "__main__": 10,
}
PACKAGE = Path(maskrcnn.__file__).parent


def _part(module: str) -> str:
    """``maskrcnn.modeling.rpn`` -> ``modeling``; ``maskrcnn`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported maskrcnn module) for every import statement in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("maskrcnn")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("maskrcnn"):
                names = [f"{node.module}.{a.name}" for a in node.names]
                found += [
                    (node.lineno, node.module if node.module != "maskrcnn" else n) for n in names
                ]
    return found


FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_top_level_part_has_a_layer() -> None:
    parts = {
        _part("maskrcnn." + ".".join(f.relative_to(PACKAGE).with_suffix("").parts)) for f in FILES
    }
    assert parts - set(LAYERS) == set(), "add new top-level modules to LAYERS"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_back_up(path: Path) -> None:
    own = _part("maskrcnn." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    upward = [
        f"line {line}: {name}"
        for line, name in _imports(path)
        if LAYERS.get(_part(name), 99) > LAYERS[own]
    ]
    assert upward == [], f"{own} (layer {LAYERS[own]}) imports from a higher layer"


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from maskrcnn.weights import save_model\n")
    assert _imports(bad) == [(2, "maskrcnn.weights")]
    assert LAYERS[_part("maskrcnn.weights")] > LAYERS["modeling"]
