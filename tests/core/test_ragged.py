"""Ragged batches: a residual mask drops padded rows, so a padded batch solves and differentiates
exactly as its elements do alone, NaN padding included."""
import pytest
import torch

import nlls
from nlls.core.evaluation import Evaluator

F64 = torch.float64
LENGTHS = [5, 12, 50, 7, 31, 20]


def _line(optim, aux):
    ab = optim[0].tensor
    x, y = aux
    return ab[:, :1] * x.tensor + ab[:, 1:] - y.tensor


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [4.0 * torch.rand(n, generator=g, dtype=F64) for n in LENGTHS]
    ys = [1.5 * x - 0.3 + 0.2 * torch.randn(len(x), generator=g, dtype=F64) for x in xs]
    return xs, ys


def _layer(points, batch, mask=None, **options):
    ab = nlls.Vector(tensor=torch.zeros(1, 2, dtype=F64), name="ab")
    x = nlls.Variable(torch.zeros(batch, points, dtype=F64), name="x")
    y = nlls.Variable(torch.zeros(batch, points, dtype=F64), name="y")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction((ab,), _line, points, aux_vars=(x, y), residual_mask=mask,
                                            name="fit", **options))
    return nlls.OptimizationLayer(nlls.GaussNewton(objective, max_iterations=10))


def _solve(layer, x, y, mode, **inputs):
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    extra = {"backward_num_iterations": 3} if mode == "truncated" else {}
    solution, info = layer({"x": x, "y": y, **inputs}, backward_mode=mode, **extra)
    projection = torch.tensor([0.7, -1.3], dtype=F64)
    grad_x, grad_y = torch.autograd.grad((solution["ab"] * projection).sum(), (x, y))
    return solution["ab"].detach(), grad_x, grad_y, info


@pytest.mark.parametrize("mode, padding", [("implicit", float("nan")), ("unroll", float("nan")),
                                           ("truncated", float("nan")), ("implicit", 0.0)])
def test_a_ragged_batch_equals_the_separate_solves(mode, padding):
    xs, ys = _data()
    x, mask = nlls.pad_ragged(xs, value=padding)
    y, same = nlls.pad_ragged(ys, value=padding)
    assert torch.equal(mask, same) and mask.shape == (6, 50)
    ragged = _layer(50, 6, mask=mask)
    values, grad_x, grad_y, info = _solve(ragged, x, y, mode)
    assert bool(info.converged.all())
    for b, n in enumerate(LENGTHS):
        alone_values, alone_x, alone_y, _ = _solve(_layer(n, 1), xs[b][None], ys[b][None], mode)
        torch.testing.assert_close(values[b], alone_values[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad_x[b, :n], alone_x[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grad_y[b, :n], alone_y[0], rtol=1e-10, atol=1e-12)
        assert bool((grad_x[b, n:] == 0).all()) and bool((grad_y[b, n:] == 0).all())


def test_the_closed_form_line_fit():
    xs, ys = _data(seed=1)
    x, mask = nlls.pad_ragged(xs, value=float("nan"))
    y, _ = nlls.pad_ragged(ys, value=float("nan"))
    values, _, _, _ = _solve(_layer(50, 6, mask=mask), x, y, "implicit")
    for b, (xb, yb) in enumerate(zip(xs, ys)):
        design = torch.stack([xb, torch.ones_like(xb)], dim=1)
        expected = torch.linalg.lstsq(design, yb[:, None]).solution[:, 0]
        torch.testing.assert_close(values[b], expected, rtol=1e-10, atol=1e-10)


def test_masked_rows_are_zero_in_the_error_and_the_jacobians():
    x = torch.tensor([[1.0, 2.0, float("nan")], [1.0, float("inf"), 3.0]], dtype=F64)
    mask = torch.isfinite(x)
    ab = nlls.Vector(tensor=torch.tensor([[2.0, 1.0]], dtype=F64), name="ab")
    weight = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("nan"), 1.0]], dtype=F64)  # padded too
    for cost_weight in (None, nlls.DiagonalCostWeight(weight, name="w"),
                        nlls.MatrixCostWeight(torch.eye(3, dtype=F64) + 0.1, name="S")):
        cf = nlls.AutoDiffCostFunction((ab,), _line, 3, aux_vars=(
            nlls.Variable(x, name="x"), nlls.Variable(torch.zeros(2, 3, dtype=F64), name="y")),
            cost_weight=cost_weight, residual_mask=mask)
        (jac,), error = cf.weighted_jacobians_error()
        assert bool(torch.isfinite(error).all()) and bool(torch.isfinite(jac).all())
        assert bool((error[~mask] == 0).all()) and bool((jac[~mask] == 0).all())
        torch.testing.assert_close(cf.weighted_error(), error)
    objective = nlls.Objective()
    objective.add(cf)
    assert objective.error().shape == (2, 3) and bool(torch.isfinite(objective.error_metric()).all())
    assert "fit" not in objective.aux_vars and cf.residual_mask.name in objective.aux_vars


def test_masks_are_data_cost_functions_with_different_masks_share_one_call():
    ab = nlls.Vector(tensor=torch.tensor([[2.0, 1.0]], dtype=F64), name="ab")
    objective = nlls.Objective()
    separate = []
    for k in range(3):
        x = nlls.Variable(torch.arange(4.0, dtype=F64)[None] + k, name=f"x{k}")
        y = nlls.Variable(torch.zeros(1, 4, dtype=F64), name=f"y{k}")
        mask = torch.arange(4)[None] < k + 2
        cf = nlls.AutoDiffCostFunction((ab,), _line, 4, aux_vars=(x, y), residual_mask=mask, name=f"f{k}")
        objective.add(cf)
        separate.append(cf.weighted_error())
    evaluator = Evaluator(objective)
    assert len(evaluator.groups) == 1
    torch.testing.assert_close(objective.error(), torch.cat(separate, dim=1))
    # a mask is replaced by name, like any data
    objective.update({"f0_residual_mask": torch.ones(1, 4, dtype=torch.bool)})
    assert bool((objective.error()[:, :4] != 0).all())


def test_the_mask_is_a_layer_input_and_a_shared_mask_broadcasts():
    xs, ys = _data(seed=2)
    x, mask = nlls.pad_ragged(xs[:2], length=16)
    y, _ = nlls.pad_ragged(ys[:2], length=16)
    layer = _layer(16, 2, mask=torch.ones(16, dtype=torch.bool))  # (dim,): every element, every row
    full, _, _, _ = _solve(layer, x, y, "implicit")
    masked, _, grad_y, _ = _solve(layer, x, y, "implicit", fit_residual_mask=mask)
    for b, n in enumerate(LENGTHS[:2]):
        alone, _, _, _ = _solve(_layer(n, 1), xs[b][None], ys[b][None], "implicit")
        torch.testing.assert_close(masked[b], alone[0], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(full[b], alone[0])  # the zero padding is fitted without the mask
        assert bool((grad_y[b, n:] == 0).all())


def test_a_robust_wrapper_keeps_its_inner_mask():
    xs, ys = _data(seed=3)
    ys = [y.clone() for y in ys]
    ys[0][0] += 5.0  # an outlier
    x, mask = nlls.pad_ragged(xs, value=float("nan"))
    y, _ = nlls.pad_ragged(ys, value=float("nan"))

    def robust_layer(points, batch, mask=None):
        ab = nlls.Vector(tensor=torch.zeros(1, 2, dtype=F64), name="ab")
        inner = nlls.AutoDiffCostFunction((ab,), _line, points, aux_vars=(
            nlls.Variable(torch.zeros(batch, points, dtype=F64), name="x"),
            nlls.Variable(torch.zeros(batch, points, dtype=F64), name="y")), residual_mask=mask, name="fit")
        objective = nlls.Objective()
        objective.add(nlls.RobustCostFunction(inner, nlls.HuberLoss(0.5)))
        return nlls.OptimizationLayer(nlls.LevenbergMarquardt(objective, max_iterations=50, abs_err_tolerance=0.0,
                                                              rel_err_tolerance=1e-14))

    values, _, grad_y, info = _solve(robust_layer(50, 6, mask), x, y, "implicit")
    assert bool(torch.isfinite(grad_y).all())
    for b in (0, 3):
        alone, _, alone_y, _ = _solve(robust_layer(LENGTHS[b], 1), xs[b][None], ys[b][None], "implicit")
        torch.testing.assert_close(values[b], alone[0], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(grad_y[b, :LENGTHS[b]], alone_y[0], rtol=1e-7, atol=1e-9)


def test_pad_ragged():
    padded, mask = nlls.pad_ragged([torch.ones(2, 3), torch.zeros(0, 3), 2 * torch.ones(1, 3)], value=-1.0)
    assert padded.shape == (3, 2, 3) and mask.tolist() == [[True, True], [False, False], [True, False]]
    assert padded[2, 1].tolist() == [-1.0] * 3 and padded[2, 0].tolist() == [2.0] * 3
    padded, mask = nlls.pad_ragged([torch.arange(3)], length=5)
    assert padded.tolist() == [[0, 1, 2, 0, 0]] and padded.dtype == torch.int64
    with pytest.raises(ValueError, match="element 1 has shape"):
        nlls.pad_ragged([torch.ones(2, 3), torch.ones(2, 4)])
    with pytest.raises(TypeError, match="element 1 has dtype"):
        nlls.pad_ragged([torch.ones(2), torch.ones(2, dtype=F64)])
    with pytest.raises(ValueError, match="length must be"):
        nlls.pad_ragged([torch.ones(4)], length=3)
    with pytest.raises(ValueError, match="non-empty sequence"):
        nlls.pad_ragged([])


def test_bad_masks_are_named():
    ab = nlls.Vector(tensor=torch.zeros(1, 2, dtype=F64), name="ab")
    aux = (nlls.Variable(torch.zeros(1, 3, dtype=F64), name="x"), nlls.Variable(torch.zeros(1, 3, dtype=F64), name="y"))
    with pytest.raises(TypeError, match="'fit'.*residual_mask.*bool"):
        nlls.AutoDiffCostFunction((ab,), _line, 3, aux_vars=aux, name="fit", residual_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="'fit'.*4 columns.*dimension 3"):
        nlls.AutoDiffCostFunction((ab,), _line, 3, aux_vars=aux, name="fit",
                                  residual_mask=torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="'fit'.*shape \\(B, dim\\)"):
        nlls.AutoDiffCostFunction((ab,), _line, 3, aux_vars=aux, name="fit",
                                  residual_mask=torch.ones(1, 3, 1, dtype=torch.bool))


def test_a_black_box_residual_takes_a_mask_and_never_sees_the_padding():
    """NumericDiffCostFunction: masked rows reach the numpy residual as zeros, and the padded
    batch solves as its elements do alone."""
    import numpy as np

    xs, ys = _data()
    x, mask = nlls.pad_ragged(xs, value=float("nan"))
    y, _ = nlls.pad_ragged(ys, value=float("nan"))
    seen = []

    def line(optim, aux):
        ab, (xv, yv) = optim[0].tensor.numpy(), (a.tensor.numpy() for a in aux)
        seen.append(np.isfinite(xv).all() and np.isfinite(yv).all())
        return ab[:, :1] * xv + ab[:, 1:] - yv

    def solve(xv, yv, points, m=None):
        ab = nlls.Vector(tensor=torch.zeros(1, 2, dtype=F64), name="ab")
        objective = nlls.Objective()
        objective.add(nlls.NumericDiffCostFunction(
            (ab,), line, points, aux_vars=(nlls.Variable(xv, name="x"), nlls.Variable(yv, name="y")),
            residual_mask=m, name="fit"))
        info = nlls.GaussNewton(objective, max_iterations=10).optimize()
        return ab.tensor, info

    values, info = solve(x, y, 50, mask)
    assert bool(info.converged.all()) and all(seen)
    for b, n in enumerate(LENGTHS):
        alone, _ = solve(xs[b][None], ys[b][None], n)
        torch.testing.assert_close(values[b], alone[0], rtol=1e-8, atol=1e-8)
