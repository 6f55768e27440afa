"""The Python examples of README.md and docs/ run as written."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(path: Path):
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("path", [p for p in DOCUMENTS if _blocks(p)], ids=lambda p: p.name)
def test_python_examples_run(path, registries):
    namespace = {"__name__": "__readme__"}
    for block in _blocks(path):  # in order, sharing names, as a reader would paste them
        exec(compile(block, str(path), "exec"), namespace)
