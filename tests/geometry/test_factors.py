"""Between and Difference: analytic Jacobians equal autodiff, vectorized evaluation, solves."""
import math

import pytest
import torch

import nlls
from nlls.core.evaluation import Evaluator

from .conftest import GROUPS, tangents


def between_error(optim_vars, aux_vars):
    x1, x2 = optim_vars
    (measurement,) = aux_vars
    if isinstance(x1, nlls.LieGroup):
        return measurement.local(x1.between(x2))
    return (x2.tensor - x1.tensor) - measurement.tensor


def difference_error(optim_vars, aux_vars):
    (x,), (target,) = optim_vars, aux_vars
    if isinstance(x, nlls.LieGroup):
        return target.local(x)
    return x.tensor - target.tensor


def _random(kind, batch, generator, name):
    if kind in GROUPS:
        return kind.exp_map(tangents(kind, batch, generator), name=name)
    return kind(tensor=torch.randn(batch, kind._fixed_dof or 4, generator=generator,
                                   dtype=torch.float64), name=name)


KINDS = GROUPS + [nlls.Vector, nlls.Point2, nlls.Point3]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_jacobians_equal_autodiff(kind, mode):
    generator = torch.Generator().manual_seed(0)
    x1, x2 = _random(kind, 10, generator, "x1"), _random(kind, 10, generator, "x2")
    measurement = _random(kind, 1, generator, "m")  # a batch of one broadcasts
    weight = nlls.DiagonalCostWeight(torch.rand(1, x1.dof(), generator=generator, dtype=torch.float64) + 0.5)
    pairs = [
        (nlls.Between(x1, x2, measurement, cost_weight=weight),
         nlls.AutoDiffCostFunction((x1, x2), between_error, x1.dof(), aux_vars=(measurement,),
                                   cost_weight=weight, autograd_mode=mode)),
        (nlls.Difference(x1, measurement, cost_weight=weight),
         nlls.AutoDiffCostFunction((x1,), difference_error, x1.dof(), aux_vars=(measurement,),
                                   cost_weight=weight, autograd_mode=mode)),
    ]
    for analytic, autodiff in pairs:
        (jacobians, error), (expected, expected_error) = analytic.jacobians(), autodiff.jacobians()
        assert torch.allclose(error, expected_error, atol=1e-12)
        assert torch.allclose(analytic.error(), error, atol=1e-12)
        assert len(jacobians) == len(expected)
        for a, b in zip(jacobians, expected):
            assert a.shape == (10, x1.dof(), x1.dof())
            assert torch.allclose(a, b, atol=1e-9), (a - b).abs().max()
        (weighted, werr), (wexpected, wexp_err) = (analytic.weighted_jacobians_error(),
                                                  autodiff.weighted_jacobians_error())
        assert torch.allclose(werr, wexp_err, atol=1e-12)
        assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(weighted, wexpected))


def test_error_is_the_documented_formula():
    generator = torch.Generator().manual_seed(1)
    x1, x2, m = (nlls.SE3.rand(4, generator, dtype=torch.float64) for _ in range(3))
    cf = nlls.Between(x1, x2, m)
    assert torch.allclose(cf.error(), m.local(x1.between(x2)), atol=0)
    assert torch.allclose(cf.error(), (m.inverse() * x1.inverse() * x2).log_map(), atol=1e-12)
    assert torch.allclose(nlls.Difference(x1, m).error(), m.local(x1), atol=0)
    assert nlls.Between(x1, x2, x1.between(x2)).error().abs().max() < 1e-12


def _pose_chain(group, count, batch, generator):
    poses = [_random(group, batch, generator, f"x{i}") for i in range(count)]
    objective = nlls.Objective()
    factors = []
    for i in range(count):
        j = (i + 1) % count
        measurement = _random(group, batch, generator, f"m{i}")
        factors.append(nlls.Between(poses[i], poses[j], measurement, name=f"odometry_{i}",
                                    cost_weight=nlls.ScaleCostWeight(2.0, name=f"w{i}")))
        objective.add(factors[-1])
    return objective, factors


def test_many_betweens_are_one_stacked_call(group):
    objective, factors = _pose_chain(group, 40, 3, torch.Generator().manual_seed(2))
    evaluator = Evaluator(objective)
    assert len(evaluator.groups) == 1 and evaluator.groups[0].size == 40
    state = evaluator.gather()
    aux = evaluator.aux()
    (jac, error), = evaluator.jacobians(state, aux)
    for k, cf in enumerate(factors):
        expected_jacobians, expected_error = cf.weighted_jacobians_error()
        assert torch.allclose(error[k], expected_error, atol=1e-12)
        assert torch.allclose(jac[k], torch.cat(expected_jacobians, dim=-1), atol=1e-12)
    assert torch.allclose(evaluator.error_metric(state, aux), objective.error_metric(), atol=1e-9)


def test_robust_betweens_group_by_loss_value():
    generator = torch.Generator().manual_seed(3)
    poses = [nlls.SE2.rand(1, generator, dtype=torch.float64, name=f"x{i}") for i in range(6)]
    objective = nlls.Objective()
    for i in range(5):
        inner = nlls.Between(poses[i], poses[i + 1], nlls.SE2.rand(1, generator, dtype=torch.float64,
                                                                 name=f"m{i}"))
        objective.add(nlls.RobustCostFunction(inner, nlls.HuberLoss(0.5 if i < 3 else 1.0)))
    evaluator = Evaluator(objective)
    assert sorted(g.size for g in evaluator.groups) == [2, 3]
    state, aux = evaluator.gather(), evaluator.aux()
    assert torch.allclose(evaluator.error_metric(state, aux), objective.error_metric(), atol=1e-12)


def test_bad_arguments_name_the_cost_function():
    x = nlls.SE2(name="x")
    with pytest.raises(TypeError, match=r"Between 'odom_3': measurement must be a SE2"):
        nlls.Between(x, nlls.SE2(name="y"), nlls.SO2(name="m"), name="odom_3")
    with pytest.raises(TypeError, match=r"'odom_3': variables 'x' \(SE2 .*\) and 'p' .* same type"):
        nlls.Between(x, nlls.Point2(name="p"), nlls.SE2(name="m"), name="odom_3")
    with pytest.raises(TypeError, match=r"Difference 'prior': target must be a SE2"):
        nlls.Difference(x, nlls.Variable(torch.zeros(1, 4)), name="prior")
    with pytest.raises(ValueError, match=r"Difference 'prior': target 't' has shape \(1, 2\)"):
        nlls.Difference(nlls.Vector(3, name="v"), nlls.Variable(torch.zeros(1, 2), name="t"), name="prior")
    with pytest.raises(TypeError, match=r"must be a Lie group .* or a Vector"):
        class Odd(nlls.Manifold):  # a manifold that is neither a Lie group nor a vector
            check_tensor = classmethod(lambda cls, tensor, name: None)
            dof_of = classmethod(lambda cls, event_shape: event_shape[0])
            retract_tensor = classmethod(lambda cls, tensor, delta: tensor + delta)
            local_tensor = classmethod(lambda cls, tensor, other: other - tensor)
        odd = Odd(torch.zeros(1, 2), name="odd")
        nlls.Difference(odd, nlls.Variable(torch.zeros(1, 2)), name="prior")


def test_pose_graph_2d_solves():
    """A loop of 2-D poses with noisy odometry and a loop closure converges near the truth."""
    generator = torch.Generator().manual_seed(4)
    count = 12
    angles = torch.arange(count, dtype=torch.float64) * (2 * math.pi / count)
    truth = nlls.SE2(x_y_theta=torch.stack([3 * torch.cos(angles), 3 * torch.sin(angles),
                                            angles + math.pi / 2], dim=1))
    t = truth.tensor
    noise = 0.02
    estimate = [t[:1]]
    objective = nlls.Objective()
    measurements = {}
    for i in range(count):
        j = (i + 1) % count
        relative = nlls.SE2.between_tensor(t[i:i + 1], t[j:j + 1])
        step = noise * torch.randn(1, 3, generator=generator, dtype=torch.float64)
        measurements[i] = nlls.SE2(nlls.SE2.retract_tensor(relative, step), name=f"m{i}")
        if j:
            estimate.append(nlls.SE2.compose_tensor(estimate[-1], measurements[i].tensor))
    poses = [nlls.SE2(e, name=f"x{i}") for i, e in enumerate(estimate)]
    for i in range(count):
        objective.add(nlls.Between(poses[i], poses[(i + 1) % count], measurements[i],
                                   cost_weight=1 / noise, name=f"odometry_{i}"))
    objective.add(nlls.Difference(poses[0], nlls.SE2(t[:1], name="origin"), cost_weight=100.0,
                                  name="prior"))
    initial = objective.error_metric()
    info = nlls.LevenbergMarquardt(objective, max_iterations=30).optimize()
    assert bool(info.converged.all())
    assert float(info.final_error) < 0.1 * float(initial)
    solution = torch.cat([p.tensor for p in poses])
    position_error = (solution[:, :2] - t[:, :2]).norm(dim=1).max()
    assert float(position_error) < 0.3
    assert float(position_error) < float((torch.cat(estimate)[:, :2] - t[:, :2]).norm(dim=1).max())


def test_rotation_fit_batch_of_256_converges():
    """256 independent rotations from noisy point pairs, one LM run, within 1e-3 rad."""
    batch, pairs = 256, 20
    generator = torch.Generator().manual_seed(5)
    truth = nlls.SO3.rand(batch, generator, dtype=torch.float64)
    rotation = nlls.SO3.identity(batch, dtype=torch.float64, name="R")
    objective = nlls.Objective()
    for k in range(pairs):
        p = torch.randn(batch, 3, generator=generator, dtype=torch.float64)
        q = truth.rotate(p) + 1e-3 * torch.randn(batch, 3, generator=generator, dtype=torch.float64)
        objective.add(nlls.AutoDiffCostFunction(
            (rotation,), _rotated_minus, 3,
            aux_vars=(nlls.Variable(p, name=f"p{k}"), nlls.Variable(q, name=f"q{k}")), name=f"pair{k}"))
    info = nlls.LevenbergMarquardt(objective, max_iterations=50).optimize()
    assert bool(info.converged.all())
    angle_error = truth.local(rotation).norm(dim=1)
    assert float(angle_error.max()) < 1e-3, float(angle_error.max())


def _rotated_minus(optim_vars, aux_vars):
    (rotation,), (p, q) = optim_vars, aux_vars
    return rotation.rotate(p.tensor) - q.tensor
