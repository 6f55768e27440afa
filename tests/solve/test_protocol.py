"""The solve protocol: a hand-written driver over init/step/terminate/postprocess is optimize()."""
import pytest
import torch

import nlls
from nlls.solve.drivers.base import Driver
from nlls.solve.state import SolveState, Status, flatten, map_tensors, unflatten
from tests.problems import exp_fit

F64 = torch.float64


def _exp(batch=4):
    return exp_fit(batch, seed=7)


def test_a_loop_over_the_protocol_equals_optimize():
    obj, p = _exp()
    reference = nlls.LevenbergMarquardt(obj, max_iterations=30).optimize(track_err_history=True)
    expected = p.tensor.clone()
    obj, p = _exp()
    opt = nlls.LevenbergMarquardt(obj, max_iterations=30)
    state = opt.init(track_err_history=True)
    assert isinstance(state, SolveState) and state.iteration == 0
    assert state.status.dtype == torch.int8 and (state.status == Status.RUNNING).all()
    while state.iteration < opt.max_iterations and not opt.terminate(state):
        state = opt.step(state)
    info = opt.postprocess(state)
    torch.testing.assert_close(p.tensor, expected, rtol=0, atol=0)
    assert torch.equal(info.iterations, reference.iterations)
    torch.testing.assert_close(info.err_history, reference.err_history, rtol=0, atol=0)


def test_step_returns_a_new_state_and_leaves_the_old_one():
    obj, _ = _exp(batch=2)
    opt = nlls.GaussNewton(obj)
    state = opt.init()
    before = [t.clone() for t in state.tensors()]
    new = opt.step(state)
    assert new is not state and new.iteration == 1
    for old, kept in zip(state.tensors(), before):
        assert torch.equal(old, kept)
    assert (new.error < state.error).all()


def test_a_custom_driver_only_needs_run():
    class EveryOther(Driver):
        """Checks for termination every second iteration, whatever check_every says."""

        def run(self, optimizer, state, num_iterations):
            for count in range(1, num_iterations + 1):
                state = optimizer.step(state)
                if count % 2 == 0 and optimizer.terminate(state):
                    break
            return state

    obj, p = _exp()
    info = nlls.LevenbergMarquardt(obj, max_iterations=30).optimize(driver=EveryOther())
    obj2, p2 = _exp()
    reference = nlls.LevenbergMarquardt(obj2, max_iterations=30).optimize()
    assert info.converged.all()
    torch.testing.assert_close(p.tensor, p2.tensor, rtol=0, atol=0)
    assert torch.equal(info.iterations, reference.iterations)
    with pytest.raises(ValueError, match="either driver= or compile"):
        nlls.GaussNewton(obj).optimize(driver=EveryOther(), compile=True)
    with pytest.raises(TypeError, match="driver must be"):
        nlls.GaussNewton(obj).optimize(driver="eager")


def test_flatten_and_unflatten_are_inverse_on_a_state():
    obj, _ = _exp(batch=2)
    opt = nlls.LevenbergMarquardt(obj)
    state = opt.init(track_best_solution=True)
    part = state.device_part()
    tensors = flatten(part)
    assert len(tensors) == len(state.tensors())
    rebuilt = unflatten(part, iter([t + 0 for t in tensors]))
    for a, b in zip(flatten(rebuilt), tensors):
        assert torch.equal(a, b)
    doubled = map_tensors(lambda t: t.double() * 2 if t.is_floating_point() else t, part)
    torch.testing.assert_close(doubled["step_state"].damping, 2 * part["step_state"].damping)


def test_step_carries_every_field_of_the_state():
    """A field added to SolveState must be carried by step(): set them all, step once."""
    import dataclasses

    obj, _ = _exp(batch=2)
    opt = nlls.LevenbergMarquardt(obj)
    state = opt.init(track_best_solution=True, track_err_history=True)
    state = state.replace(freeze_converged=False, started=123.0, iteration=4)
    new = opt.step(state)
    for field in dataclasses.fields(SolveState):
        old_value, new_value = getattr(state, field.name), getattr(new, field.name)
        assert (old_value is None) == (new_value is None), field.name
        if not isinstance(old_value, (torch.Tensor, tuple, list)) and field.name != "step_state":
            assert new_value == (5 if field.name == "iteration" else old_value), field.name
    assert new.aux is state.aux and len(new.history) == len(state.history) + 1
