"""The Python examples of README.md and every page under docs/ run as written.

Tutorial pages are generated from tutorials/*.py when the site is built (docs/hooks.py): they are
not in docs/, and the tutorials are tested by tests/tutorials. Blocks meant not to run use another
fence language (``sh``, ``yaml``)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _blocks(path: Path):
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def test_every_docs_page_is_collected():
    pages = {p.relative_to(ROOT).as_posix() for p in DOCUMENTS}
    assert {"README.md", "docs/index.md", "docs/guide/cost-functions.md", "docs/guide/failures.md"} <= pages


@pytest.mark.parametrize("path", [p for p in DOCUMENTS if _blocks(p)], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_examples_run(path, registries):
    namespace = {"__name__": "__readme__"}
    for block in _blocks(path):  # in order, sharing names, as a reader would paste them
        exec(compile(block, str(path), "exec"), namespace)
