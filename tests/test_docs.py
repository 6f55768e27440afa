"""The documentation site builds with warnings as errors (``mkdocs build --strict``).

The build runs every tutorial small (docs/hooks.py) to embed its figures: ~15 s on the 2-core
development machine. Skipped when the ``docs`` extra is not installed (``pip install -e ".[docs]"``);
.ci/run installs it and builds the site too.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_hook_turns_percent_cells_into_markdown_and_python():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import hooks
    finally:
        sys.path.pop(0)
    source = ("# ---\n# jupyter: header\n# ---\n\n# %% [markdown]\n# # Title\n#\n# Some *text*.\n\n"
              "# %%\nimport nlls\n\n\n# %%\nx = 1  # a comment\n")
    page = hooks.tutorial_markdown(source, ["figures/a.png"])
    assert page.startswith("# Title\n\nSome *text*.\n\n```python\nimport nlls\n```\n\n```python\nx = 1  # a comment\n```")
    assert "jupyter" not in page and "![a](figures/a.png)" in page


def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="the docs extra is not installed: pip install -e '.[docs]'")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    site = tmp_path / "site"
    for page in ("index.html", "guide/failures/index.html", "api/nlls/index.html", "ARCHITECTURE/index.html",
                 "tutorials/00_curve_fitting/index.html", "tutorials/07_fast_loops/index.html"):
        assert (site / page).is_file(), page
    assert (site / "tutorials/figures/00_curve_fitting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tutorials/figures/00_curve_fitting.png".split("/")[-1] in (site / "tutorials/00_curve_fitting/index.html").read_text()
