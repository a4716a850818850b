"""The package's structure stays what the README's "How it works" describes: the layer contract holds (import-linter,
as `make lint` runs it), no module reaches into another's underscored names, and no two modules share a name."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "estuary"


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def _is_module(dotted: str) -> bool:
    return (SRC.parent / dotted.replace(".", "/")).with_suffix(".py").exists() or \
        (SRC.parent / dotted.replace(".", "/") / "__init__.py").exists()


def private_imports(path: Path, root: Path = SRC.parent) -> list[str]:
    """`from estuary.x import _name`, and `m._name` on an Estuary module `m` imported by name."""
    tree = ast.parse(path.read_text())
    found, module_aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("estuary"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.relative_to(root)}:{node.lineno} imports {node.module}.{alias.name}")
                elif _is_module(f"{node.module}.{alias.name}"):
                    module_aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path.relative_to(root)}:{node.lineno} uses {module_aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    found = [line for p in _modules() for line in private_imports(p)]
    assert not found, "\n".join(found)


def test_private_import_check_sees_both_forms(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from estuary.lm.encoding import _ids\nfrom estuary.lm import seeding\nseeding._x\nseeding.mix_seed\n")
    assert [line.split(" ", 1)[1] for line in private_imports(bad, tmp_path)] == [
        "imports estuary.lm.encoding._ids", "uses estuary.lm.seeding._x"]


def test_no_two_modules_share_a_name() -> None:
    names = Counter(p.name for p in _modules() if p.name != "__init__.py")
    assert not [n for n, c in names.items() if c > 1], sorted(n for n, c in names.items() if c > 1)


@pytest.mark.skipif(importlib.util.find_spec("importlinter") is None, reason="import-linter is not installed")
def test_layer_contract_holds() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(exe)], cwd=SRC.parents[1], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
