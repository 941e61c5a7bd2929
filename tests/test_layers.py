"""The library's layers: packages import only from the ones below them, never in a circle, and the
command line starts without the heavy libraries."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "proloc_lib"
# each package may import from the ones before it (predict sits beside stages)
ORDER = {"core": 0, "data": 1, "features": 2, "training": 3, "evaluation": 4, "profiles": 5, "stages": 6,
         "predict": 6, "bench": 7, "cli": 8}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _imports(path: Path):
    """(proloc_lib module imported, line, at module level?) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    for node in tree.body:   # an entry point's `if __name__ == "__main__":` block counts as module level
        if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'":
            top |= {id(n) for n in node.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("proloc_lib"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                target = full if (ROOT / (full.replace(".", "/") + ".py")).exists() else node.module
                yield target, node.lineno, id(node) in top


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_import_points_down_and_sits_at_module_level():
    upward, inner = [], []
    for module, path in _modules():
        me = _layer(module)
        for target, line, at_top in _imports(path):
            there = _layer(target)
            if me in ORDER and there in ORDER and ORDER[there] > ORDER[me]:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
            if not at_top:
                inner.append(f"{path.relative_to(ROOT)}:{line} imports {target} inside a function")
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)
    assert not inner, "library imports inside functions (only optional heavy dependencies belong there):\n" \
        + "\n".join(inner)


def test_no_import_circle():
    graph = {m: {t for t, _, _ in _imports(p)} for m, p in _modules()}
    state: dict[str, int] = {}

    def visit(mod, trail):
        state[mod] = 1
        for dep in sorted(graph.get(mod, ())):
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " -> ".join([*trail, mod, dep]))
            if dep not in state:
                visit(dep, [*trail, mod])
        state[mod] = 2

    for mod in graph:
        if mod not in state:
            visit(mod, [])


def test_the_command_line_starts_without_torch_or_pandas():
    code = "import sys, proloc_lib.cli.main; print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
