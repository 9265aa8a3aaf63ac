"""The package's shape: imports point one way (no module imports one that imports it back, even
for type checking) and no module reaches for another's private names.

Package ``__init__`` files are left out: they only re-export (lazily) what their modules define.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lance_assets"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if "_proto" in path.parts or path.name == "__init__.py":
            continue
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name] = ast.parse(path.read_text())
    return out


def _imports(tree: ast.Module) -> list[tuple[str, str]]:
    """(module, name) of every ``from lance_assets... import name`` and ``import lance_assets...``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lance_assets"):
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.startswith("lance_assets")]
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    modules = _modules()
    edges: dict[str, set[str]] = {}
    for name, tree in modules.items():
        targets = set()
        for module, imported in _imports(tree):
            for candidate in (f"{module}.{imported}", module):
                if candidate in modules and candidate != name:
                    targets.add(candidate)
                    break
        edges[name] = targets

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(edges[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += edges[m]
        return seen

    circles = sorted(name for name in modules if name in reach(name))
    assert circles == [], f"modules on an import circle: {circles}"


def test_no_private_name_crosses_a_module() -> None:
    crossing = [
        f"{name} imports {module}.{imported}"
        for name, tree in _modules().items()
        for module, imported in _imports(tree)
        if imported.startswith("_") and not imported.startswith("__")
    ]
    assert crossing == []


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
    """Lines of code in a function's body: its docstring, blank lines and comments left out."""
    body = node.body
    start = body[0].lineno
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
        start = body[0].end_lineno + 1 if len(body) > 1 and body[0].end_lineno is not None else body[0].lineno
    end = node.end_lineno or start
    return sum(1 for line in lines[start - 1 : end] if line.strip() and not line.strip().startswith("#"))


def test_no_function_is_longer_than_80_lines_of_code() -> None:
    """A function a reader has to scroll through to follow is cut into named steps."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        if "_proto" in path.parts:
            continue
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node, lines) > 80:
                long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({_code_lines(node, lines)} lines)")
    assert long == []
