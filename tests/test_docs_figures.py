"""Every measured figure in the docs (the course, data-parallel training, the README) comes
from a command: where one has not been taken yet, the docs hold a marker naming the
command, and this test fails until each marker is replaced by the figure that command
printed on an idle machine."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "⟨FIGURE:"


@pytest.mark.parametrize("doc", ["docs/COURSE.md", "docs/DISTRIBUTED.md", "README.md"])
def test_no_figure_is_left_to_be_measured(doc):
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    waiting = [f"{doc}:{i}: {line.strip()}" for i, line in enumerate(lines, 1) if MARKER in line]
    assert not waiting, "figures still to be measured (run each command, put its number in):\n" \
        + "\n".join(waiting)
