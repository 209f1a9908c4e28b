"""docs/COURSE.md stays true: every command of its `sh` blocks runs from the repository, its
worked C++ example still applies and compiles (tests/test_docs_figures.py checks that no
figure is left unmeasured).

A command may end with a comment `# quick: FLAGS`: the document's own small-budget
version, which is what runs here (FLAGS appended to the command line), so that the course
runs in CI in a few minutes.  Its outputs go to runs/ (ignored by git).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "docs" / "COURSE.md"
DIFF = ROOT / "docs" / "course" / "conv2d_rows.diff"


def blocks(text: str, lang: str) -> list[str]:
    """The bodies of the ```lang fenced blocks of a Markdown text."""
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def course_commands() -> list[str]:
    """Every command of COURSE.md's sh blocks, its `# quick:` flags appended."""
    out = []
    for body in blocks(COURSE.read_text(encoding="utf-8"), "sh"):
        for line in body.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            command, _, quick = line.partition("# quick:")
            out.append((command.strip() + " " + quick.strip()).strip())
    return out


def test_the_course_has_its_commands():
    commands = course_commands()
    assert len(commands) >= 15
    assert any("--ladder" in c and "--step-batch" in c for c in commands)  # the v0 ladder, quick
    assert any(c.startswith("python -m gasca_core.train --out") for c in commands)  # the default run


def in_running_order(commands: list[str]) -> list[str]:
    """The document's order, but the training runs on the built-in kernels first: the first
    run trains the recognizer every run's report uses (cached per training set, and the
    quick runs share theirs), which on a registered NumPy version takes minutes."""
    return sorted(commands, key=lambda c: not (c.startswith("python -m gasca_core.train") and "--kernel" not in c))


def _path() -> str:
    """PATH with this interpreter's scripts first (`python`, and `mpiexec` from the extra)."""
    return str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")


@pytest.mark.slow
@pytest.mark.parametrize("command", in_running_order(course_commands()))
def test_course_command_runs(command):
    """Run as a reader would, from the repository root, with this interpreter as `python`
    (importing gasca_core as this process does: installed, or through PYTHONPATH)."""
    if command.startswith("mpiexec") and shutil.which("mpiexec", path=_path()) is None:
        pytest.skip("mpiexec is not installed (pip install \".[mpi]\")")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GASCA_KERNEL")}
    env["PATH"] = _path()
    r = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, f"{command}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def test_the_worked_example_is_the_diff_file_and_applies():
    """The diff shown in COURSE.md is docs/course/conv2d_rows.diff, and it applies to this
    tree (git apply --check, which changes nothing)."""
    shown = [b for b in blocks(COURSE.read_text(encoding="utf-8"), "diff")]
    assert shown == [DIFF.read_text(encoding="utf-8")]
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    r = subprocess.run(["git", "apply", "--check", str(DIFF)], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def test_the_worked_example_compiles(tmp_path):
    """Applied to a copy of cpp/, the new version compiles (its tests need a full build:
    COURSE.md says how)."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None or shutil.which("git") is None:
        pytest.skip("needs git and a C++ compiler")
    shutil.copytree(ROOT / "cpp", tmp_path / "cpp")
    r = subprocess.run(["git", "apply", str(DIFF)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    source = tmp_path / "cpp" / "conv2d.cpp"
    assert "case 3: forward_rows" in source.read_text()
    r = subprocess.run([cxx, "-std=c++17", "-fopenmp", "-fsyntax-only", "-Wall", "-Werror", f"-I{tmp_path / 'cpp'}",
                        str(source)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
