"""GTSAM 4.3.0 (optional: ``pip install gtsam==4.3.0``), set up as shared/data/README.md says.

Pose graphs: ``readG2o`` / ``load2D(..., NoiseFormatTORO)``, a prior on pose 0 at its initial value
with sigma 1e-6. BAL: ``SfmData.FromBalFile``, one ``GeneralSFMFactorCal3Bundler`` per observation,
sigma 1 pixel, no prior. ``LevenbergMarquardtParams()`` with ``relativeErrorTol 1e-10`` and
``maxIterations 200`` (``absoluteErrorTol`` stays 1e-5, which is what stops it).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

from problems_pose_graph import MAX_ITERATIONS, REL_TOLERANCE, Runner


def gtsam_missing() -> Optional[str]:
    """Why GTSAM cannot run here (``None`` when it imports)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import gtsam  # noqa: F401
    except ImportError as exc:
        return f"gtsam does not import: {exc}"
    return None


def gtsam_runner(problem) -> Runner:
    """``gtsam.LevenbergMarquardtOptimizer`` on ``problem``; its construction is part of the
    solve (GTSAM takes the start values as a constructor argument)."""
    import gtsam

    params = gtsam.LevenbergMarquardtParams()
    params.setRelativeErrorTol(REL_TOLERANCE)
    params.setMaxIterations(MAX_ITERATIONS)
    if problem.is_bal:
        graph, initial = _bal(gtsam, problem.path)
    else:
        if problem.path.suffix == ".graph":
            graph, initial = gtsam.load2D(str(problem.path),
                                          noiseFormat=gtsam.NoiseFormat.NoiseFormatTORO)
        else:
            graph, initial = gtsam.readG2o(str(problem.path), problem.dimension == 3)
        # a prior on pose 0 at its initial value, sigma 1e-6 (as in shared/data/README.md)
        first = min(initial.keys())
        if problem.dimension == 3:
            graph.add(gtsam.PriorFactorPose3(first, initial.atPose3(first),
                                             gtsam.noiseModel.Isotropic.Sigma(6, 1e-6)))
        else:
            graph.add(gtsam.PriorFactorPose2(first, initial.atPose2(first),
                                             gtsam.noiseModel.Isotropic.Sigma(3, 1e-6)))

    def solve():
        optimizer = gtsam.LevenbergMarquardtOptimizer(graph, initial, params)
        result = optimizer.optimize()
        iterations = int(optimizer.iterations())
        return {"iterations": iterations, "converged": iterations < MAX_ITERATIONS,
                "initial_cost": float(graph.error(initial)),
                "final_cost": float(graph.error(result))}

    return Runner(solve)


def _bal(gtsam, path: Path):
    return bal_graph(gtsam, gtsam.SfmData.FromBalFile(str(path)))


def bal_graph(gtsam, data):
    """``(graph, initial)`` of a BAL ``gtsam.SfmData``: one ``GeneralSFMFactorCal3Bundler`` per
    observation, sigma 1 pixel, no prior."""
    noise = gtsam.noiseModel.Isotropic.Sigma(2, 1.0)
    graph, initial = gtsam.NonlinearFactorGraph(), gtsam.Values()
    for j in range(data.numberTracks()):
        track = data.track(j)
        for k in range(track.numberMeasurements()):
            camera, uv = track.measurement(k)
            graph.add(gtsam.GeneralSFMFactorCal3Bundler(uv, noise, gtsam.symbol("c", camera),
                                                        gtsam.symbol("p", j)))
        initial.insert(gtsam.symbol("p", j), track.point3())
    for i in range(data.numberCameras()):
        initial.insert(gtsam.symbol("c", i), data.camera(i))
    return graph, initial
