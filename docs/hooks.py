"""MkDocs hook: one page per tutorial, generated at build time from ``tutorials/NN_*.py``.

The tutorials are jupytext "percent" scripts. Their ``# %% [markdown]`` cells become markdown,
their code cells ``python`` blocks, and each tutorial is run small (the sizes of its tests) into a
temporary folder so that the figures it writes are embedded in its page. Nothing is written into
the source tree: pages and figures are handed to MkDocs as generated files.
"""
from __future__ import annotations

import importlib.util
import re
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"

# small sizes, as tests/tutorials runs them; a tutorial absent here (or without output_dir) is
# rendered without running it
SMALL_RUNS: Dict[str, dict] = {
    "00_curve_fitting": dict(batch_size=5, num_points=30),
    "01_sensitivity": dict(),
    "02_end_to_end": dict(num_series=16, num_fit=16, num_held_out=8, steps=12, lr=2e-2),
    "03_implicit_function": dict(num_points=21),
    "04_rotation_fit": dict(batch_size=24, num_pairs=10, noise=0.01),
    "05_pose_graph_2d": dict(num_poses=60, num_loop_closures=12),
    "06_black_box": dict(batch_size=2, num_points=6),
    "08_checks": dict(),
}


def split_cells(source: str) -> List[Tuple[str, str]]:
    """``(kind, text)`` per cell, kind ``"markdown"`` or ``"code"``; the jupytext header and
    anything before the first cell are dropped."""
    cells: List[Tuple[str, List[str]]] = []
    for line in source.splitlines():
        marker = re.match(r"#\s*%%(.*)$", line)
        if marker:
            cells.append(("markdown" if "[markdown]" in marker.group(1) else "code", []))
        elif cells:
            cells[-1][1].append(line)
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [re.sub(r"^# ?", "", line) if line.startswith("#") else line for line in lines]
        text = "\n".join(lines).strip("\n")
        if text.strip():
            out.append((kind, text))
    return out


def tutorial_markdown(source: str, figures: List[str]) -> str:
    """The page of one tutorial: its cells, then its figures (paths relative to the page)."""
    parts = []
    for kind, text in split_cells(source):
        parts.append(text if kind == "markdown" else f"```python\n{text}\n```")
    if figures:
        parts.append("## Figures\n\nWritten by this tutorial, run small while the documentation was built.")
        parts += [f"![{Path(figure).stem}]({figure})" for figure in figures]
    return "\n\n".join(parts) + "\n"


def run_small(path: Path, output_dir: Path) -> List[Path]:
    """Run ``path``'s ``main`` with small sizes into ``output_dir``; the PNG files it wrote."""
    kwargs = SMALL_RUNS.get(path.stem)
    if kwargs is None:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import torch

    spec = importlib.util.spec_from_file_location(f"docs_tutorial_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    extra = {"verbose": False} if "verbose" in module.main.__code__.co_varnames else {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module.main(**kwargs, **extra, output_dir=str(output_dir))
    finally:
        torch.set_num_threads(threads)
        import matplotlib.pyplot as plt

        plt.close("all")
    return sorted(output_dir.glob("*.png"))


def on_files(files, config):
    """Add ``tutorials/<name>.md`` and its figures for every ``tutorials/NN_*.py``."""
    from mkdocs.structure.files import File

    with tempfile.TemporaryDirectory(prefix="nlls-docs-") as tmp:
        for path in sorted(TUTORIALS.glob("[0-9][0-9]_*.py")):
            output_dir = Path(tmp) / path.stem
            output_dir.mkdir()
            figures = []
            for png in run_small(path, output_dir):
                uri = f"tutorials/figures/{png.name}"
                files.append(File.generated(config, uri, content=png.read_bytes()))
                figures.append(f"figures/{png.name}")
            page = tutorial_markdown(path.read_text(encoding="utf-8"), figures)
            files.append(File.generated(config, f"tutorials/{path.stem}.md", content=page))
    return files
