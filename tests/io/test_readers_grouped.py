"""The readers' grouped objectives (one FactorGroup for the edges or observations) equal their
one-object-per-factor objectives, unobserved variables left out alike, and solve alike."""
import numpy as np
import torch

import nlls
from nlls.io import BALProblem, read
from nlls.io.pose_graph import PoseGraph, PoseGraphEdges

from .reference import BAL, data_file, lm


def _same(grouped, single):
    assert set(grouped.optim_vars) == set(single.optim_vars)
    assert grouped.size() == single.size() and grouped.dim() == single.dim()
    torch.testing.assert_close(grouped.error(), single.error(), rtol=0, atol=1e-10)


def test_bal_leaves_unobserved_cameras_and_points_out():
    gen = torch.Generator().manual_seed(0)
    cameras = torch.randn(4, 9, dtype=torch.float64, generator=gen) * 0.1
    cameras[:, 5] = -10.0
    cameras[:, 6] = 500.0
    points = torch.randn(6, 3, dtype=torch.float64, generator=gen)
    # cameras 1 and 3 and points 0, 2 and 4 are not observed
    pairs = np.array([(0, 1), (2, 1), (0, 3), (2, 5), (0, 5), (2, 3)], dtype=np.int64)
    problem = BALProblem(cameras, points, pairs, 10 * torch.randn(6, 2, dtype=torch.float64, generator=gen))
    grouped, single = problem.objective(), problem.objective(vectorized=False)
    assert sorted(grouped.optim_vars) == ["c0", "c2", "p1", "p3", "p5"]
    _same(grouped, single)
    assert "uv" in grouped.aux_vars and grouped.cost_functions["obs"].count == 6


def test_bal_file_solves_alike():
    problem = read(data_file(next(iter(BAL))))
    grouped, single = problem.objective(), problem.objective(vectorized=False)
    _same(grouped, single)
    lm(grouped).optimize()
    lm(single).optimize()
    torch.testing.assert_close(grouped.error_metric(), single.error_metric(), rtol=1e-6, atol=1e-12)


def test_pose_graph_leaves_isolated_vertices_out():
    poses = nlls.SE2.exp_tensor(torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    pairs = np.array([[10, 14], [14, 12], [12, 10]], dtype=np.int64)  # vertex 11 and 13 have no edge
    measurements = nlls.SE2.exp_tensor(0.1 * torch.ones(3, 3, dtype=torch.float64))
    information = torch.eye(3, dtype=torch.float64).repeat(3, 1, 1) * torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    graph = PoseGraph(2, np.arange(10, 15), poses, PoseGraphEdges(pairs, measurements, information))
    grouped, single = graph.objective(), graph.objective(vectorized=False)
    assert sorted(grouped.optim_vars) == ["x10", "x12", "x14"]
    _same(grouped, single)
    info = nlls.GaussNewton(grouped).optimize()
    assert torch.isfinite(info.final_error).all()
    torch.testing.assert_close(graph.current_poses(grouped)[1], poses[1])  # an isolated vertex as it was
