"""Levenberg-Marquardt's step rule: damping updates, rejection, stalling, fixed damping."""
import pytest
import torch

import nlls
from nlls.solve.levenberg_marquardt import DampingState
from nlls.solve.systems import DenseSystem

F64 = torch.float64


def _lm(**kwargs):
    obj = nlls.Objective()
    p = nlls.Vector(tensor=torch.zeros(3, 1, dtype=F64), name="p")
    obj.add(nlls.AutoDiffCostFunction((p,), lambda o, a: o[0].tensor - 1.0, 1, name="c"))
    return nlls.LevenbergMarquardt(obj, **kwargs)


def _judge(lm, actual_decrease, predicted_decrease):
    """accept() on a 1-D system whose model predicts ``predicted_decrease`` for delta = 1."""
    g = torch.full((3, 1), -predicted_decrease - 0.5, dtype=F64)  # -(g + 0.5 A) = predicted, A = 1
    system = DenseSystem(torch.ones(3, 1, 1, dtype=F64), g)
    error = torch.full((3,), 10.0, dtype=F64)
    state = lm.init_step_state(error)
    delta = torch.ones(3, 1, dtype=F64)
    solved = torch.ones(3, dtype=torch.bool)
    return state, lm.accept(system, state, delta, solved, error, error - actual_decrease)


def test_a_good_step_is_accepted_and_the_damping_shrinks():
    lm = _lm(damping=1e-2)
    state, (accept, failed, stalled, new) = _judge(lm, torch.tensor([1.0, 1.0, 1.0], dtype=F64), 1.0)
    assert accept.all() and not failed.any() and not stalled.any()
    assert isinstance(new, DampingState)
    torch.testing.assert_close(new.damping, state.damping / 3)  # ratio 1: the largest shrink
    torch.testing.assert_close(new.growth, torch.full((3,), 2.0, dtype=F64))


def test_rejections_grow_the_damping_by_doubling_factors_until_it_stalls():
    lm = _lm(damping=1.0, max_damping=5.0)
    bad = torch.full((3,), -1.0, dtype=F64)  # the error rose
    state, (accept, _, stalled, new) = _judge(lm, bad, 1.0)
    assert not accept.any() and not stalled.any()
    torch.testing.assert_close(new.damping, torch.full((3,), 2.0, dtype=F64))
    torch.testing.assert_close(new.growth, torch.full((3,), 4.0, dtype=F64))
    g = torch.full((3, 1), -1.5, dtype=F64)
    system = DenseSystem(torch.ones(3, 1, 1, dtype=F64), g)
    error = torch.full((3,), 10.0, dtype=F64)
    accept, _, stalled, newer = lm.accept(system, new, torch.ones(3, 1, dtype=F64),
                                          torch.ones(3, dtype=torch.bool), error, error + 1)
    torch.testing.assert_close(newer.damping, torch.full((3,), 8.0, dtype=F64))
    assert stalled.all()  # past max_damping: cannot decrease further


def test_fixed_damping_takes_every_finite_step():
    lm = _lm(adaptive_damping=False)
    state, (accept, failed, _, new) = _judge(lm, torch.tensor([-1.0, 1.0, float("nan")], dtype=F64), 1.0)
    assert accept.tolist() == [True, True, False] and failed.tolist() == [False, False, True]
    assert new is state


def test_damping_is_shown_in_verbose_output(capsys):
    lm = _lm(max_iterations=2)
    lm.optimize(verbose=True)
    assert "damping" in capsys.readouterr().out


def test_a_fixed_damping_factor_divides_on_success_and_multiplies_on_rejection():
    lm = _lm(damping=1e-2, damping_factor=10.0)
    # element 0 a perfect step, 1 a poor but accepted one (ratio 0.01), 2 an increase of the error
    state, (accept, _, stalled, new) = _judge(lm, torch.tensor([1.0, 0.01, -1.0], dtype=F64), 1.0)
    assert accept.tolist() == [True, True, False] and not stalled.any()
    # GTSAM's rule: the step's quality does not matter, only whether it was accepted
    torch.testing.assert_close(new.damping, torch.tensor([1e-3, 1e-3, 1e-1], dtype=F64))
    g = torch.full((3, 1), -1.5, dtype=F64)
    system = DenseSystem(torch.ones(3, 1, 1, dtype=F64), g)
    error = torch.full((3,), 10.0, dtype=F64)
    _, _, _, newer = lm.accept(system, new, torch.ones(3, 1, dtype=F64), torch.ones(3, dtype=torch.bool),
                               error, error + 1)  # every element rejected now: x10, no doubling
    torch.testing.assert_close(newer.damping, torch.tensor([1e-2, 1e-2, 1.0], dtype=F64))


def test_a_fixed_damping_factor_has_a_floor_and_a_ceiling():
    lm = _lm(damping=1e-2, damping_factor=10.0, max_damping=0.5)
    state = lm.init_step_state(torch.full((3,), 10.0, dtype=F64))
    tiny = DampingState(torch.full((3,), 1e-12, dtype=F64), state.growth, state.scale)
    system = DenseSystem(torch.ones(3, 1, 1, dtype=F64), torch.full((3, 1), -1.5, dtype=F64))
    error = torch.full((3,), 10.0, dtype=F64)
    ones, solved = torch.ones(3, 1, dtype=F64), torch.ones(3, dtype=torch.bool)
    accept, _, _, new = lm.accept(system, tiny, ones, solved, error, error - 1)
    assert accept.all()  # 1e-12 / 10 is below 1e-10 x the initial 1e-2: held at 1e-12
    torch.testing.assert_close(new.damping, torch.full((3,), 1e-12, dtype=F64))
    big = DampingState(torch.full((3,), 0.1, dtype=F64), state.growth, state.scale)
    accept, _, stalled, _ = lm.accept(system, big, ones, solved, error, error + 1)
    assert not accept.any() and stalled.all()  # 1.0 > max_damping: it can decrease no further


def test_a_damping_factor_must_exceed_one():
    for bad in (1.0, 0.5, float("nan")):
        with pytest.raises(ValueError, match="LevenbergMarquardt: damping_factor"):
            _lm(damping_factor=bad)
    with pytest.raises(TypeError, match="LevenbergMarquardt: damping_factor"):
        _lm(damping_factor="10")


def test_a_fixed_damping_factor_solves_a_curve_fit_batch_like_nielsens_rule():
    torch.manual_seed(0)
    t = torch.linspace(0, 1, 30, dtype=F64)
    truth = torch.tensor([[1.0, -2.0], [0.5, 1.5], [2.0, 0.3]], dtype=F64)
    y = truth[:, :1] * torch.exp(truth[:, 1:] * t) + 1e-3 * torch.randn(3, 30, dtype=F64)
    results = []
    for factor in (None, 10.0):
        obj = nlls.Objective()
        p = nlls.Vector(tensor=torch.ones(3, 2, dtype=F64), name="p")
        data = nlls.Variable(y, name="y")
        obj.add(nlls.AutoDiffCostFunction(
            (p,), lambda o, a: o[0].tensor[:, :1] * torch.exp(o[0].tensor[:, 1:] * t) - a[0].tensor, 30,
            aux_vars=(data,), name="fit"))
        info = nlls.LevenbergMarquardt(obj, max_iterations=100, damping_factor=factor).optimize()
        assert info.converged.all()
        results.append(p.tensor.clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-7, atol=1e-9)


def _pose_graph(batch=2):
    torch.manual_seed(3)
    objective = nlls.Objective()
    def pose(name):
        return nlls.SE2(tensor=nlls.SE2.exp_tensor(torch.randn(batch, 3, dtype=F64)), name=name)

    poses = [pose(f"x{k}") for k in range(6)]
    for k, (a, b) in enumerate([(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0), (1, 4)]):
        z = pose(f"z{k}")
        objective.add(nlls.Between(poses[a], poses[b], z, cost_weight=1.0 + k, name=f"e{k}"))
    return objective


def test_the_model_decrease_from_the_solve_equals_the_product_with_a():
    for solver in ("sparse_cholesky", nlls.Schur(eliminate=["x5"])):
        for settings in ({}, {"diagonal_scaling": True}, {"jacobi_scaling": True, "diagonal_scaling": True},
                         {"jacobi_scaling": True, "step_size": 0.5}):
            lm = nlls.LevenbergMarquardt(_pose_graph(), linear_solver=solver, damping=0.3, **settings)
            assert lm.linear_solver.model_from_solve
            state = lm.init()
            system = lm.linearization.linearize(state.values, state.aux)
            delta, solved = lm.compute_step(system, state.step_state)
            assert solved.all()
            from_solve = lm._model_decrease(system, state.step_state, delta)
            product = system.quadratic_decrease(delta * lm.step_size)
            assert (product > 0).all()
            torch.testing.assert_close(from_solve, product, rtol=1e-10, atol=0)
            with pytest.raises(AssertionError):  # the identity is not the product for another damping
                other = DampingState(state.step_state.damping * 2, state.step_state.growth, state.step_state.scale)
                torch.testing.assert_close(lm._model_decrease(system, other, delta), product, rtol=1e-10, atol=0)
