"""The compiled solves' Inductor pass: small CPU stacks become selections, bitwise the same."""
import pytest
import torch

import nlls
import nlls.solve.drivers.compiled as compiled_module
from nlls.solve.drivers import stack_pass as _stack_pass
from tests.problems import QuadFit, quad_data

pytestmark = pytest.mark.skipif(_stack_pass.StacksAsSelections is None,
                                reason="this torch has no Inductor custom-pass interface")


def _compiled(function):
    """``function`` compiled with a fresh pass; returns (compiled, the pass)."""
    torch._dynamo.reset()
    graph_pass = _stack_pass.StacksAsSelections()
    # no FX graph cache: a cached graph skips the passes, and the tests count what the pass did
    return torch.compile(function, dynamic=False, fullgraph=True,
                         options={"post_grad_custom_pre_pass": graph_pass, "fx_graph_cache": False}), graph_pass


def _columns(x):  # a Jacobian as users write it, and its normal matrix
    J = torch.stack([x ** 2, torch.ones_like(x), -x], dim=-1)
    return J, (J.mT @ J)


def _signs(x):  # negative zeros and infinities kept; returned and consumed by a reduction
    stacked = torch.stack([-x, x * 0.0, x * 2], dim=-1)
    return torch.cat([x[..., None], -x[..., None]], -1), stacked, stacked.sum(-2)


def _scalars(x):  # 0-d pieces into a vector
    return (torch.stack([x[0, 0, 0] + 1, x[1, 1, 1] * 2, x[2, 2, 2]]) * 2,)


def _integers(x):
    n = x.round().to(torch.int64)
    return (torch.stack([n, n * 3, -n], dim=-1) + 1,)


def _booleans(x):
    return (torch.stack([x > 0, x < 0.5], dim=-1) & (x[..., None] != 0),)


@pytest.mark.parametrize("function", [_columns, _signs, _scalars, _integers, _booleans])
def test_stacks_are_rewritten_and_bitwise_equal(function):
    x = torch.randn(5, 7, 4, dtype=torch.float64)
    x[0, 0, 0], x[0, 0, 1], x[0, 0, 2] = float("inf"), float("-inf"), 0.0
    compiled, graph_pass = _compiled(function)
    got, expected = compiled(x), function(x)
    assert graph_pass.rewritten >= 1
    stacked, reduced = (got[:-1], expected[:-1]) if len(got) > 1 else (got, expected)
    for g, e in zip(stacked, expected):  # the stacks themselves: bitwise, signed zeros too
        assert g.dtype == e.dtype and g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=0, atol=0, equal_nan=True)
        if g.is_floating_point():
            assert torch.equal(torch.signbit(g), torch.signbit(e))
    if len(got) > 1:  # a reduction of them: the compiler may sum in another order
        torch.testing.assert_close(got[-1], expected[-1], rtol=1e-12, atol=1e-12, equal_nan=True)


def _too_many(x):
    return torch.stack([x * k for k in range(_stack_pass.MAX_PIECES + 1)], dim=-1).sum(-1)


def _uneven(x):
    return torch.cat([x, x[..., :2] * 2], dim=-1).sum(-1)


def _middle(x):  # a stack along another than the last dimension reaches the graph as a cat of
    return torch.stack([x, -x], dim=1).sum(-1)  # whole pieces (and a reshape): not a stack here


def _mixed_dtypes(x):
    return torch.cat([x[..., :1], x[..., 1:2].to(torch.float32)], dim=-1) * 2


@pytest.mark.parametrize("function", [_too_many, _uneven, _middle, _mixed_dtypes])
def test_other_concatenations_are_left_alone(function):
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    compiled, graph_pass = _compiled(function)
    torch.testing.assert_close(compiled(x), function(x), rtol=1e-12, atol=1e-12)
    assert graph_pass.rewritten == 0


def test_a_configured_post_grad_pass_still_runs_first():
    class Counting(_stack_pass.CustomGraphPass):
        calls = 0

        def __call__(self, graph):
            Counting.calls += 1
            assert any(n.target is torch.ops.aten.cat.default for n in graph.nodes)  # not yet rewritten

        def uuid(self):
            return "counting"

    from torch._inductor import config
    with config.patch(post_grad_custom_pre_pass=Counting()):
        options = _stack_pass.compile_options()
    graph_pass = options["post_grad_custom_pre_pass"]
    assert isinstance(graph_pass.then, Counting) and graph_pass.uuid()[1] == "counting"
    torch._dynamo.reset()
    x = torch.randn(4, 3, 3, dtype=torch.float64)
    compiled = torch.compile(_scalars, dynamic=False, options={**options, "fx_graph_cache": False})
    torch.testing.assert_close(compiled(x), _scalars(x), rtol=0, atol=0)
    assert Counting.calls >= 1 and graph_pass.rewritten == 1


def test_uuid_names_the_pass_and_refuses_caching_after_an_uncacheable_user_pass():
    assert _stack_pass.StacksAsSelections().uuid() == _stack_pass.StacksAsSelections().uuid()
    assert _stack_pass.StacksAsSelections(then=lambda graph: None).uuid() is None


def test_compiled_solve_uses_the_pass_and_matches_eager(monkeypatch):
    passes = []

    def recording_options():
        options = _stack_pass.compile_options()
        passes.append(options["post_grad_custom_pre_pass"])
        return {**options, "fx_graph_cache": False}

    monkeypatch.setattr(compiled_module, "compile_options", recording_options)
    x, y, _ = quad_data(4, points=20)
    solutions = []
    for compile in (False, True):
        ab = nlls.Vector(tensor=torch.zeros(4, 2, dtype=torch.float64), name="ab")
        objective = nlls.Objective()
        objective.add(QuadFit(ab, nlls.Variable(x, name="x"), nlls.Variable(y, name="y")))
        nlls.GaussNewton(objective, max_iterations=4, abs_err_tolerance=0, rel_err_tolerance=0,
                         check_every=4).optimize(compile=compile)
        solutions.append(ab.tensor)
    assert len(passes) == 1 and passes[0].rewritten >= 1  # QuadFit stacks its Jacobian's columns
    torch.testing.assert_close(solutions[1], solutions[0], rtol=1e-12, atol=1e-12)
