"""Which ``slimformer`` modules a script really runs: its transitive imports, read from the source.

Imports inside functions count (a stage that imports ``slimformer.tensorrt`` lazily still runs
it), and so does every package ``__init__`` on the way to a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_file(name: str) -> Path | None:
    """``slimformer.engines`` -> ``src/slimformer/engines.py`` (or a package's ``__init__.py``); None if absent."""
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(path: Path) -> set[str]:
    """Dotted ``slimformer`` module names imported anywhere in ``path`` (top level or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "slimformer"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "slimformer":
                continue
            names.add(node.module)
            # ``from slimformer import tensorrt`` imports a module; ``from slimformer.x import f`` a name
            names |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
    out = set()
    for name in names:  # every package on the way is imported too
        parts = name.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return out


def slimformer_closure(script: Path) -> set[str]:
    """Repository-relative paths of every ``slimformer`` source file ``script`` imports, transitively."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        for name in _imported(path):
            f = module_file(name)
            if f is not None and f not in seen:
                seen.add(f)
                todo.append(f)
    return {p.relative_to(ROOT).as_posix() for p in seen}
