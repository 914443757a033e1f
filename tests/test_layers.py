"""The import layering the package docstring states holds for every import of the
product code, those inside functions and under ``TYPE_CHECKING`` included (where
cycles hide): a module imports only from its own subpackage and from the layers below
it, so no two subpackages import each other. Read from the source (``ast``), not by
importing it."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import circuitray

PACKAGE = Path(circuitray.__file__).resolve().parent


def declared_layers() -> list[set[str]]:
    """The layers of the package docstring's ``Import layers`` block, lowest first."""
    doc = circuitray.__doc__ or ""
    block = doc.split("Import layers, lowest first", 1)[1].split("::", 1)[1]
    text = " ".join(block.strip().split("\n\n", 1)[0].split())
    return [{name.strip() for name in layer.split(",")} for layer in text.split("<")]


def unit_of(path: Path) -> str:
    """The subpackage (or top-level module) a file of the package belongs to."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "circuitray":  # from circuitray import jobs
                found += [(node.lineno, f"circuitray.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def layering_violations(layers: list[set[str]]) -> list[str]:
    rank = {name: i for i, layer in enumerate(layers) for name in layer}
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":  # the lazy public API re-exports every layer
            continue
        unit = unit_of(path)
        if unit not in rank:
            problems.append(f"{path.relative_to(PACKAGE.parent)}: {unit!r} is in no layer")
            continue
        for line, module in imports_of(path):
            parts = module.split(".")
            if parts[0] in ("tests", "conftest"):
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {module}")
            if parts[0] != "circuitray" or len(parts) < 2 or parts[1] not in rank:
                continue
            target = parts[1]
            if target != unit and rank[target] >= rank[unit]:
                problems.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line}: {unit} imports {module} "
                    f"({target} is not below {unit})"
                )
    return problems


def test_every_unit_of_the_package_is_in_exactly_one_layer():
    layers = declared_layers()
    names = [n for layer in layers for n in layer]
    assert len(names) == len(set(names)), names
    units = {unit_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert units == set(names), (units ^ set(names), layers)


def test_imports_go_down_the_layers():
    assert layering_violations(declared_layers()) == []


def test_an_import_up_the_layers_is_found(tmp_path, monkeypatch):
    """The check itself: storage importing jobs inside a function is named."""
    fake = tmp_path / "circuitray"
    (fake / "storage").mkdir(parents=True)
    (fake / "jobs").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "jobs" / "run.py").write_text("from circuitray.storage.store import x\n")
    (fake / "storage" / "store.py").write_text(
        "def f():\n    from circuitray.jobs.run import g\n    return g\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    found = layering_violations([{"storage"}, {"jobs"}])
    assert len(found) == 1 and re.search(r"store\.py:2: storage imports circuitray\.jobs", found[0])


def test_loading_models_imports_no_builder():
    """Loading any model (``circuitray/models/*.py``) stands without the project's own
    builders (``circuitray.models.builders``), as the ``models`` docstring says."""
    problems = [
        f"models/{path.name}:{line}: imports {module}"
        for path in sorted((PACKAGE / "models").glob("*.py"))
        for line, module in imports_of(path)
        if module.startswith("circuitray.models.builders")
    ]
    assert problems == []
