"""What ``nlls solve`` reports beside its summary: the problem's format and sizes (``--json``), the
marginal standard deviations of the first and last poses (``--covariance``), and the diagnosis of
a problem whose normal equations are singular (printed whenever a batch element failed with
``Failure.LINEAR_SOLVE``).

``--covariance`` computes :class:`nlls.Covariance` at the solution with ``--gauge``: ``first`` holds
the first pose fixed (the others' uncertainty is relative to it), ``pseudo_inverse`` takes the
Moore-Penrose pseudo-inverse (no pose fixed), ``auto`` (default) is ``first`` for pose graphs and
``pseudo_inverse`` for bundle adjustment (fixing one camera leaves the scale free there). Pose
graphs report their first and last vertices, bundle adjustment its first and last cameras.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch


class UserError(Exception):
    """A problem with the user's input: ``nlls solve`` reports it in one line, no traceback, and
    exits with status 2."""


TANGENT_ORDER = {"SE2": "x, y, theta", "SE3": "tx, ty, tz, rx, ry, rz"}
GAUGES = ("auto", "first", "pseudo_inverse")


def add_options(parser: argparse.ArgumentParser) -> None:
    """``--covariance`` and ``--gauge`` on the ``solve`` parser."""
    parser.add_argument("--covariance", action="store_true",
                        help="after solving, print the marginal standard deviations of the first and last poses "
                             "(pose graphs) or cameras (BAL); with --json they are in its 'covariance' entry")
    parser.add_argument("--gauge", default="auto", choices=GAUGES,
                        help="the covariance's gauge: first (the first pose held fixed), pseudo_inverse, or auto "
                             "(default: first for pose graphs, pseudo_inverse for BAL)")


def sizes(problem) -> Dict[str, Any]:
    """The format and sizes of a problem read from a file, for ``--json``."""
    from nlls import io

    if isinstance(problem, io.BALProblem):
        return {"format": "bal", "cameras": int(problem.cameras.shape[0]), "points": int(problem.points.shape[0]),
                "observations": int(problem.observations.shape[0])}
    return {"format": pose_graph_format(problem.path), "dimension": problem.dimension,
            "poses": len(problem.vertex_ids), "edges": len(problem.edges),
            "initialization": problem.initialization, "information_order": problem.information_order,
            "reader_notes": list(problem.notes)}


def pose_graph_format(path: Optional[Path]) -> Optional[str]:
    from nlls.io import g2o

    try:
        with open(path, encoding="utf-8", errors="replace") as handle:  # type: ignore[arg-type]
            for line in handle:
                words = line.split()
                if words and not words[0].startswith("#"):
                    return "g2o" if words[0] in g2o.TAGS else "toro"
    except (OSError, TypeError):
        pass
    return None


def _ends(problem, objective) -> List[str]:
    """The names of the first and last poses (pose graphs) or cameras (BAL) in ``objective``."""
    if hasattr(problem, "vertex_ids"):
        names = [f"x{int(i)}" for i in problem.vertex_ids if f"x{int(i)}" in objective.optim_vars]
    else:
        names = [name for name in objective.optim_vars if name.startswith("c")]
    return [names[0], names[-1]] if len(names) > 1 else names


def _numbers(values: torch.Tensor) -> List[Optional[float]]:
    return [float(v) if math.isfinite(float(v)) else None for v in values.flatten().tolist()]


def covariance(objective, problem, gauge: str, say: Callable[..., None]) -> Dict[str, Any]:
    """The marginals of the first and last poses (cameras) at the objective's values, printed with
    ``say``; the ``--json`` entry."""
    import nlls

    names = _ends(problem, objective)
    if gauge == "auto":
        gauge = "first" if hasattr(problem, "vertex_ids") else "pseudo_inverse"
    with torch.no_grad():
        cov = nlls.Covariance(objective, gauge=names[0] if gauge == "first" else "pseudo_inverse").compute()
        marginals = {name: cov.marginal(name)[0].double().cpu() for name in names}
    ok = bool(cov.ok.all()) if cov.ok is not None else False
    kind = type(objective.optim_vars[names[0]]).__name__
    order = TANGENT_ORDER.get(kind, "tangent coordinates")
    fixed = f"{names[0]} held fixed" if gauge == "first" else "pseudo-inverse"
    say(f"  covariance       {fixed}; marginal standard deviations ({order}):")
    entry: Dict[str, Any] = {"gauge": gauge, "ok": ok, "message": cov.message,
                             "order": order, "variables": {}}
    for name, marginal in marginals.items():
        std = marginal.diagonal().clamp_min(0).sqrt()
        say(f"    {name:<14} " + " ".join(f"{v:.6g}" for v in std.tolist()))
        entry["variables"][name] = {"std": _numbers(std), "covariance": [_numbers(row) for row in marginal]}
    if not ok:
        say(f"  ({cov.message})")
    return entry


def diagnosis(objective, say: Callable[..., None]) -> Dict[str, Any]:
    """:func:`nlls.diagnose` at the objective's values, printed with ``say``; the ``--json``
    entry."""
    import nlls

    report = nlls.diagnose(objective)
    say("diagnosis (the normal equations are singular):")
    for line in str(report).splitlines():
        say(f"  {line.strip()}")
    return {"null_space_dim": report.null_space_dim.tolist(),
            "findings": [{"kind": f.kind, "directions": f.directions, "variables": list(f.variables[:20]),
                          "coordinates": list(f.coordinates[:20]), "elements": list(f.elements), "text": f.text}
                         for f in report.findings]}
