"""optimize(callback=...): per-iteration information, and stopping from the callback."""
import pytest
import torch

import nlls
from nlls.solve.state import IterationInfo
from tests.problems import exp_fit

F64 = torch.float64


def _exp(batch=3):
    return exp_fit(batch, seed=3)


def test_the_callback_sees_the_error_history_and_the_steps():
    objective, p = _exp()
    seen = []
    info = nlls.LevenbergMarquardt(objective, max_iterations=30).optimize(
        track_err_history=True, callback=lambda i: seen.append(i))
    assert all(isinstance(i, IterationInfo) for i in seen)
    assert [i.iteration for i in seen] == list(range(1, len(seen) + 1))
    history = torch.stack([i.error for i in seen], dim=1)
    torch.testing.assert_close(history, info.err_history[:, 1:], rtol=0, atol=0)
    assert all(i.damping is not None and i.damping.shape == (3,) for i in seen)
    assert seen[0].step_norm.gt(0).all() and seen[-1].elapsed >= seen[0].elapsed
    assert not seen[-1].active.any() and info.converged.all()


def test_stopping_elements_from_the_callback():
    objective, p = _exp()
    reference, p_ref = _exp()
    nlls.LevenbergMarquardt(reference, max_iterations=2).optimize()

    def stop_first_after_two(i):
        return torch.tensor([i.iteration >= 2, False, False])

    info = nlls.LevenbergMarquardt(objective, max_iterations=30).optimize(callback=stop_first_after_two)
    assert info.status.tolist() == [nlls.Status.STOPPED, nlls.Status.CONVERGED, nlls.Status.CONVERGED]
    assert info.iterations[0] == 2 and info.iterations[1] > 2
    torch.testing.assert_close(p.tensor[0], p_ref.tensor[0], rtol=0, atol=0)
    assert "1 stopped by the callback" in info.message

    objective, p = _exp()
    info = nlls.GaussNewton(objective, max_iterations=30).optimize(callback=lambda i: i.iteration == 3)
    assert (info.iterations == 3).all() and (info.status == nlls.Status.STOPPED).all()


def test_callbacks_with_compiled_chunks_the_layer_and_errors():
    objective, _ = _exp()
    calls = []
    nlls.GaussNewton(objective, max_iterations=6, check_every=3, abs_err_tolerance=0,
                     rel_err_tolerance=0).optimize(compile=True, callback=lambda i: calls.append(i.iteration))
    assert calls == [3, 6]
    objective, _ = _exp()
    layer = nlls.OptimizationLayer(nlls.LevenbergMarquardt(objective, max_iterations=30))
    y = objective.aux_vars["y"].tensor.clone().requires_grad_(True)
    seen = []
    solution, info = layer({"y": y}, callback=lambda i: seen.append(i.iteration), backward_mode="unroll")
    solution["p"].sum().backward()
    assert seen and torch.isfinite(y.grad).all()
    with pytest.raises(TypeError, match="callback must be callable"):
        nlls.GaussNewton(objective).optimize(callback=3)
    with pytest.raises(TypeError, match="returns None, a bool or a"):
        nlls.GaussNewton(objective).optimize(callback=lambda i: "stop")
    with pytest.raises(ValueError, match="callback runs between iterations"):
        nlls.GaussNewton(objective).optimize(
            driver=nlls.solve.drivers.cuda_graph.CUDAGraphDriver(
                recorder=nlls.solve.drivers.cuda_graph.EagerRecorder, require_cuda=False),
            callback=print)


def test_no_callback_tracks_nothing():
    objective, _ = _exp()
    optimizer = nlls.GaussNewton(objective)
    state = optimizer.step(optimizer.init())
    assert state.step_norm is None and state.callback is None
