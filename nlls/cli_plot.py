"""``nlls solve --plot``: before/after views of a solved problem (matplotlib, the Agg backend).

* Pose graphs: the trajectory of the pose positions (``x, y``; the first two coordinates in 3-D),
  the initial one beside the optimized one.
* Bundle adjustment (BAL): a top view of the scene, the points and the camera centres
  ``c = -R(w)^T t``, projected on the two principal axes of the initial points (the directions of
  their largest spread, about the ground plane of a typical scene), so before and after are
  drawn in the same frame. The view is cut to the 2nd-98th percentile of the points (widened by
  half that range on each side, then to hold every camera centre within 3 times it) and each
  panel says how many points fall outside: up to 2 % of wrong points, far away or behind a
  camera, do not shrink the scene to a dot.

The image format follows the extension of ``--plot`` (any format matplotlib writes); the file is
written whole or not at all (:func:`nlls.io.files.atomic_path`). :func:`check_plot` refuses a
missing matplotlib or an unknown format before anything is solved.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Tuple

import numpy as np
import torch

from .cli_report import UserError
from .geometry.so3 import SO3
from .io.files import atomic_path
from .solve.checks import short_repr

PERCENTILES = (2.0, 98.0)  # the points that set a BAL view...
SLACK = 0.5  # ...widened by this fraction of their range on each side
CAMERA_REACH = 3.0  # camera centres within this many times the points' range widen the view
MARGIN = 0.05  # of the view's size, on every side
ASPECT = (0.5, 1.5)  # the panels' height / width: a flatter (taller) view is widened to fit


def image_format(path: str) -> str:
    """The format of ``--plot`` (its extension; png without one)."""
    return Path(path).suffix[1:].lower() or "png"


def check_plot(path: str) -> None:
    """Refuse ``--plot`` before anything is solved when matplotlib is missing or the extension
    names no image format it writes."""
    try:
        import matplotlib
    except ImportError:
        raise UserError('--plot needs matplotlib, which is not installed: pip install "nlls[plot]"') from None
    matplotlib.use("Agg")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if image_format(path) not in formats:
        raise UserError(f"--plot {short_repr(path)}: unknown image format {image_format(path)!r}; one of "
                        f"{', '.join(sorted(formats))}")


def positions(objective) -> torch.Tensor:
    """``(N, 2|3)`` positions of the pose variables of a pose graph (first batch element)."""
    points = []
    for var in objective.optim_vars.values():
        if hasattr(var, "translation"):
            points.append(var.translation()[0].detach().cpu())
        elif var.dof() == 3:
            points.append(var.tensor[0].detach().cpu())
    return torch.stack(points) if points else torch.zeros(0, 2)


def snapshot(problem, objective) -> Any:
    """What :func:`plot` draws of ``problem`` as ``objective`` holds it now: the ``(cameras,
    points)`` of a BAL problem, the pose positions (:func:`positions`) of a pose graph."""
    from .io import BALProblem

    return problem.current_values(objective) if isinstance(problem, BALProblem) else positions(objective)


def plot(path: str, problem, before: Any, after: Any, title: str) -> None:
    """Save the before/after view of ``problem`` (two :func:`snapshot` results) to ``path``."""
    from .io import BALProblem

    if isinstance(problem, BALProblem):
        plot_bal(path, before, after, title)
    else:
        plot_poses(path, before, after, title)


def camera_centers(cameras: torch.Tensor) -> torch.Tensor:
    """``(C, 3)`` centres ``-R(w)^T t`` of BAL cameras ``(C, 9)`` (``w, t, f, k1, k2``)."""
    rotation = SO3.exp_tensor(cameras[:, :3])
    return -(rotation.transpose(1, 2) @ cameras[:, 3:6, None])[:, :, 0]


def _percentiles(points: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``PERCENTILES`` of each coordinate of ``(N, d)`` points (NumPy's: torch.quantile
    refuses inputs of more than 2^24 numbers)."""
    low, high = np.percentile(points.numpy(), PERCENTILES, axis=0)
    return torch.from_numpy(low).to(points.dtype), torch.from_numpy(high).to(points.dtype)


def top_view_axes(points: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(origin (3,), axes (3, 2))``: the points' median and their two principal axes (of the
    points within the percentiles of each coordinate, so outliers do not tilt the view)."""
    if points.shape[0] == 0:
        return torch.zeros(3, dtype=points.dtype), torch.eye(3, 2, dtype=points.dtype)
    origin = points.median(dim=0).values
    low, high = _percentiles(points)
    inside = ((points >= low) & (points <= high)).all(dim=1)
    core = points[inside] if int(inside.sum()) >= 3 else points
    centered = core - core.mean(dim=0)
    if core.shape[0] < 3:
        return origin, torch.eye(3, 2, dtype=points.dtype)
    _, vectors = torch.linalg.eigh(centered.T @ centered)
    return origin, vectors[:, [2, 1]]  # the largest spread first


def view_limits(points: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
    """``(2, 2)`` ``[[x_min, x_max], [y_min, y_max]]`` of a top view: the points' percentiles
    widened by ``SLACK`` of their range, then to hold the camera centres within ``CAMERA_REACH``
    times that range."""
    if points.shape[0] == 0:
        points = cameras
    low, high = _percentiles(points)
    span = (high - low).clamp_min(1e-9)
    low, high = low - SLACK * span, high + SLACK * span
    if cameras.shape[0]:
        near = ((cameras >= low - CAMERA_REACH * span) & (cameras <= high + CAMERA_REACH * span)).all(dim=1)
        if bool(near.any()):
            low = torch.minimum(low, cameras[near].min(dim=0).values)
            high = torch.maximum(high, cameras[near].max(dim=0).values)
    pad = MARGIN * (high - low).clamp_min(1e-9)
    return torch.stack([low - pad, high + pad], dim=1)


def _framed(limits: torch.Tensor) -> Tuple[torch.Tensor, float]:
    """``limits`` widened about their centre so that height / width lies in ``ASPECT``, and that
    ratio (the panels' shape at equal scales on both axes)."""
    center, half = limits.mean(dim=1), (limits[:, 1] - limits[:, 0]) / 2
    ratio = float(half[1] / half[0])
    if ratio < ASPECT[0]:
        half[1], ratio = half[0] * ASPECT[0], ASPECT[0]
    elif ratio > ASPECT[1]:
        half[0], ratio = half[1] / ASPECT[1], ASPECT[1]
    return torch.stack([center - half, center + half], dim=1), ratio


def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as temporary:
            fig.savefig(temporary, format=image_format(path), dpi=110, bbox_inches="tight")
    except OSError as exc:
        raise UserError(f"--plot: cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def plot_poses(path: str, before: torch.Tensor, after: torch.Tensor, title: str) -> None:
    """Save the initial and optimized trajectories (``(N, 2|3)`` positions) side by side."""
    check_plot(path)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, points, label in ((axes[0], before, "initial"), (axes[1], after, "optimized")):
        style = "-" if points.shape[0] < 5000 else ","
        ax.plot(points[:, 0].numpy(), points[:, 1].numpy(), style, lw=0.8, ms=2)
        ax.set_title(label)
        ax.set_aspect("equal", adjustable="datalim")
    fig.suptitle(title)
    _save(fig, path)


def plot_bal(path: str, before: Tuple[torch.Tensor, torch.Tensor], after: Tuple[torch.Tensor, torch.Tensor],
             title: str) -> None:
    """Save top views of a BAL scene before and after the solve: ``before`` and ``after`` are
    ``(cameras (C, 9), points (P, 3))`` (see the module's description for the view)."""
    check_plot(path)
    import matplotlib.pyplot as plt

    origin, axes_3d = top_view_axes(before[1].double())
    views = []
    for cameras, points in (before, after):
        flat_points = (points.double() - origin) @ axes_3d
        flat_cameras = (camera_centers(cameras.double()) - origin) @ axes_3d
        views.append((flat_points, flat_cameras))
    limits = view_limits(torch.cat([views[0][0], views[1][0]]), torch.cat([views[0][1], views[1][1]]))
    limits, ratio = _framed(limits)
    fig, panels = plt.subplots(1, 2, figsize=(11, 1.0 + 5.0 * ratio))
    for ax, (flat_points, flat_cameras), label in zip(panels, views, ("initial", "optimized")):
        inside = ((flat_points >= limits[:, 0]) & (flat_points <= limits[:, 1])).all(dim=1)
        shown = flat_points[inside]
        size = 10.0 if shown.shape[0] < 100 else 3.0 if shown.shape[0] < 5000 else 0.5
        ax.scatter(shown[:, 0].numpy(), shown[:, 1].numpy(), s=size, c="tab:blue", lw=0,
                   label=f"{flat_points.shape[0]} points")
        ax.scatter(flat_cameras[:, 0].numpy(), flat_cameras[:, 1].numpy(), s=24, c="tab:red", marker="^",
                   label=f"{flat_cameras.shape[0]} camera centres")
        outside = int(flat_points.shape[0] - shown.shape[0])
        ax.set_title(label + (f" ({outside} points outside the view)" if outside else ""))
        ax.set_xlim(*limits[0].tolist())
        ax.set_ylim(*limits[1].tolist())
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel("first principal axis of the initial points")
        ax.set_ylabel("second principal axis")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8, markerscale=1.5)
    fig.suptitle(title)
    _save(fig, path)
