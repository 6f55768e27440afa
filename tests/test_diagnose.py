"""nlls.diagnose names what leaves J^T J singular: unconstrained coordinates and variables,
gauge directions of pose graphs and bundle adjustment, per batch element; dense and sparse."""
from pathlib import Path

import pytest
import torch

import nlls
from tests.test_covariance import pose_graph

F64 = torch.float64
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _fit_problem():
    """'ab': r = a x - y (b unseen); 'cd': r = (c + d) x (one combination unseen); element 1 has
    x = 0 on the first fit, so 'ab' is wholly unseen there."""
    x = torch.linspace(0.5, 1.5, 5, dtype=F64).repeat(2, 1)
    x0 = x.clone()
    x0[1] = 0.0
    ab = nlls.Vector(tensor=torch.ones(2, 2, dtype=F64), name="ab")
    cd = nlls.Vector(tensor=torch.ones(1, 2, dtype=F64), name="cd")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction([ab], lambda v, a: v[0].tensor[:, :1] * a[0].tensor - 1.0, 5,
                                            aux_vars=[nlls.Variable(x0, name="x0")], name="fit"))
    objective.add(nlls.AutoDiffCostFunction([cd], lambda v, a: (v[0].tensor[:, :1] + v[0].tensor[:, 1:]) * a[0].tensor,
                                            5, aux_vars=[nlls.Variable(x, name="x")], name="sum"))
    return objective


@pytest.mark.parametrize("method", ["dense", "sparse"])
def test_unconstrained_coordinates_and_combinations_are_named_per_element(method):
    report = nlls.diagnose(_fit_problem(), linear_solver=method)
    assert not report.ok and report.null_space_dim.tolist() == [2, 3]
    text = str(report)
    assert "element(s) [0]: 1 unconstrained coordinate(s): no residual depends on 'ab'[1]" in text
    assert "element(s) [1]: 2 unconstrained coordinate(s): no residual depends on 'ab'" in text
    assert "1 null direction(s) within 'cd' (Vector)" in text
    kinds = {(f.kind, f.elements) for f in report.findings}
    assert kinds == {("unconstrained", (0,)), ("unconstrained", (1,)), ("gauge", (0, 1))}
    assert set(report.unconstrained()) == {"'ab'[1]", "'ab'"}


@pytest.mark.parametrize("method", ["dense", "sparse"])
def test_a_pose_graph_without_a_prior_has_three_gauge_directions(method):
    objective, xs = pose_graph(batch=2, poses=12, prior=False, closures=((0, 7),))
    report = nlls.diagnose(objective, linear_solver=method)
    assert report.null_space_dim.tolist() == [3, 3]
    (finding,) = report.findings
    assert finding.kind == "gauge" and finding.directions == 3 and finding.elements == (0, 1)
    assert set(finding.variables) == {x.name for x in xs}
    assert "3 gauge direction(s) shared by all 12 SE2 variables ('x0', 'x1', 'x2', ..., 'x11')" in str(report)
    with_prior, _ = pose_graph(batch=2, poses=12, prior=True)
    report = nlls.diagnose(with_prior, linear_solver=method)
    assert report.ok and report.findings == [] and "no null directions" in str(report)


def test_two_disconnected_graphs_are_reported_apart():
    objective, _ = pose_graph(poses=5, prior=True, closures=())
    other, _ = pose_graph(poses=4, prior=False, closures=(), seed=1, prefix="y")
    for cost in other.cost_functions.values():
        objective.add(cost)
    report = nlls.diagnose(objective)
    (finding,) = report.findings
    assert finding.variables == ("y0", "y1", "y2", "y3") and finding.directions == 3


def test_real_files_w100_and_bundle_adjustment():
    report = nlls.diagnose(nlls.io.read(DATA / "w100.graph").objective())
    assert "3 gauge direction(s) shared by all 100 SE2 variables" in str(report)
    report = nlls.diagnose(nlls.io.read(DATA / "pose3example.txt").objective(), linear_solver="sparse")
    assert "6 gauge direction(s) shared by all 5 SE3 variables" in str(report)
    bal = nlls.diagnose(nlls.io.read(DATA / "dubrovnik-3-7-pre.txt").objective())
    assert int(bal.null_space_dim) >= 7 and not bal.ok


def test_arguments():
    with pytest.raises(TypeError, match="diagnose: objective"):
        nlls.diagnose(None)
    with pytest.raises(ValueError, match="diagnose: linear_solver"):
        nlls.diagnose(_fit_problem(), linear_solver="qr")
    with pytest.raises(ValueError, match="'jacobian' linearization"):
        nlls.diagnose(_fit_problem(), linear_solver=nlls.ConjugateGradient())
