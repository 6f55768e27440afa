"""``PoseGraph.objective(anchor=True)``: a prior holding one pose, the cost unchanged, the gauge gone."""
import numpy as np
import pytest
import torch

import nlls

from .reference import POSE_GRAPHS, data_file, lm

F64 = torch.float64


@pytest.mark.parametrize("name", sorted(POSE_GRAPHS))
@pytest.mark.parametrize("vectorized", [True, False])
def test_the_anchor_leaves_the_cost_and_the_optimum_as_they_are(name, vectorized):
    graph = nlls.io.read(data_file(name))
    free, anchored = graph.objective(vectorized=vectorized), graph.objective(vectorized=vectorized, anchor=True)
    assert "anchor" in anchored.cost_functions and "anchor" not in free.cost_functions
    assert float(anchored.error_metric().sum()) == pytest.approx(float(free.error_metric().sum()), rel=1e-14)
    lm(free).optimize()
    lm(anchored).optimize()
    final = POSE_GRAPHS[name][3]
    for objective in (free, anchored):
        assert float(objective.error_metric().sum()) == pytest.approx(final, rel=1e-6)
    # the anchored pose has hardly moved: each step keeps it in place to first order, and what the
    # steps' curvature moves it by is pulled back; its prior adds nothing measurable to the cost
    prior = anchored.cost_functions["anchor"]
    assert float(prior.error().abs().max()) < 1e-6
    assert 0.5 * float(prior.weighted_error().square().sum()) < 1e-10 * final
    np.testing.assert_allclose(graph.current_poses(anchored)[0].numpy(), graph.poses[0].numpy(), atol=1e-6)


def test_gauss_newton_solves_an_anchored_graph_and_refuses_a_free_one():
    graph = nlls.io.read(data_file("w100.graph"))
    free, anchored = graph.objective(), graph.objective(anchor=True)
    settings = dict(linear_solver="sparse_cholesky", max_iterations=20, abs_err_tolerance=0.0)
    assert (nlls.GaussNewton(free, **settings).optimize().status == nlls.Status.FAILED).all()
    info = nlls.GaussNewton(anchored, **settings).optimize()
    assert info.converged.all()
    assert float(anchored.error_metric().sum()) == pytest.approx(POSE_GRAPHS["w100.graph"][3], rel=1e-6)


def test_the_anchor_holds_the_first_fixed_vertex_with_the_strongest_edge_weight(tmp_path):
    path = tmp_path / "fixed.g2o"
    path.write_text(
        "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 0\nVERTEX_SE2 2 2 0.1 0\nVERTEX_SE2 7 5 5 5\n"
        "EDGE_SE2 0 1 1 0 0 4 0 0 4 0 9\nEDGE_SE2 1 2 1 0 0 100 0 0 1 0 1\nFIX 7 2\n")
    graph = nlls.io.read(path)
    for vectorized in (True, False):
        objective = graph.objective(vectorized=vectorized, anchor=True)
        prior = objective.cost_functions["anchor"]
        assert prior.var.name == "x2"  # vertex 7 has no edge: left out, so the next FIX id
        torch.testing.assert_close(prior.target.tensor, graph.poses[2:3].to(F64))
        assert float(prior.weighted_error().abs().max()) == 0.0
        weight = prior.weighted_jacobians_error()[0][0][0]
        torch.testing.assert_close(weight.diagonal(), torch.full((3,), 10.0, dtype=F64))  # sqrt(100)


def test_without_fix_records_the_first_vertex_with_edges_is_anchored(tmp_path):
    path = tmp_path / "loose.g2o"
    path.write_text("VERTEX_SE2 3 9 9 0\nVERTEX_SE2 4 0 0 0\nVERTEX_SE2 5 1 0 0\n"
                    "EDGE_SE2 4 5 1 0 0 1 0 0 1 0 1\n")
    graph = nlls.io.read(path)
    for vectorized in (True, False):
        assert graph.objective(vectorized=vectorized, anchor=True).cost_functions["anchor"].var.name == "x4"
