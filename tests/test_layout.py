"""The package's layout: imports run one way (no cycles but the deliberate tensor <->
functional pair), and pyflakes finds nothing (where it is installed)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gasca_core

PACKAGE = Path(gasca_core.__file__).parent
# Tensor's methods are the functional ops and the ops build Tensors (as in PyTorch).
ALLOWED_CYCLES = [{"gasca_core.tensor", "gasca_core.functional"}]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every gasca_core module that `name` imports, at the top or inside a function (an
    import inside a function still makes a cycle)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import mod" imports the submodule when there is one.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_the_import_graph_is_read_correctly():
    graph = import_graph()
    assert "gasca_core.data.pairs" in graph["gasca_core.data.batching"]
    assert "gasca_core.training.phases" in graph["gasca_core.training.trainer"]
    assert "gasca_core.functional" in graph["gasca_core.tensor"]  # inside a function
    # A cycle planted in a copy of the graph is found.
    planted = {k: set(v) for k, v in graph.items()}
    planted["gasca_core.rng"].add("gasca_core.data.batching")
    assert any({"gasca_core.rng", "gasca_core.data.batching"} <= c
               for c in strongly_connected(planted))


def test_no_import_cycles_but_the_deliberate_one():
    cycles = [c for c in strongly_connected(import_graph()) if len(c) > 1]
    unexpected = [sorted(c) for c in cycles if c not in ALLOWED_CYCLES]
    assert not unexpected, f"import cycles: {unexpected}"


def test_pyflakes_is_clean():
    pytest.importorskip("pyflakes")
    r = subprocess.run([sys.executable, "-m", "pyflakes", str(PACKAGE)], capture_output=True,
                       text=True)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


@pytest.mark.parametrize("module", ["gasca_core.train", "gasca_core.evaluate",
                                    "gasca_core.compare", "gasca_core.classify",
                                    "gasca_core.frontalize", "gasca_core.bench_step",
                                    "gasca_core.bench.step", "gasca_core._bench_gpu",
                                    "gasca_core.bench.gpu"])
def test_every_command_answers_help(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr
