"""Box bounds (Objective.set_bounds): every optimizer reaches SciPy's bounded least-squares solution
(``least_squares(method="trf", bounds=...)``) to 1e-8, with bounds active and inactive at the
solution, per batch element; bad bounds are refused naming the variable."""
import numpy as np
import pytest
import torch

import nlls
from tests.problems import exp_data, exp_error, rosenbrock_error

scipy_optimize = pytest.importorskip("scipy.optimize")

F64 = torch.float64
TIGHT = dict(abs_err_tolerance=0.0, function_tolerance=1e-15, gradient_tolerance=1e-13,
             parameter_tolerance=1e-15, max_iterations=500)


def _optimizers():
    out = [("gn", lambda obj, **kw: nlls.GaussNewton(obj, **kw)),
           ("lm", lambda obj, **kw: nlls.LevenbergMarquardt(obj, **kw)),
           ("lm_jacobi", lambda obj, **kw: nlls.LevenbergMarquardt(obj, jacobi_scaling=True, diagonal_scaling=True, **kw))]
    if hasattr(nlls, "Dogleg"):
        out.append(("dogleg", _dogleg))
    return out


def _dogleg(obj, **kw):
    tolerances = {k: kw.pop(k) for k in ("function_tolerance", "gradient_tolerance", "parameter_tolerance")}
    optimizer = nlls.Dogleg(obj, **kw)
    for key, value in tolerances.items():  # the base's rules, whatever the subclass's signature says
        setattr(optimizer, key, value)
    return optimizer


OPTIMIZERS = _optimizers()


def _scipy(residual, x0, lower, upper):
    result = scipy_optimize.least_squares(residual, x0, bounds=(lower, upper), method="trf",
                                          ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=10000)
    return result.x


# ---- problems ---------------------------------------------------------------------------------
def _rosenbrock(x0, lower, upper):
    p = nlls.Vector(tensor=torch.tensor(x0, dtype=F64), name="p")
    obj = nlls.Objective()
    obj.add(nlls.AutoDiffCostFunction((p,), rosenbrock_error, 2, name="rosenbrock"))
    obj.set_bounds(p, lower=torch.tensor(lower, dtype=F64), upper=torch.tensor(upper, dtype=F64))
    return obj


def _rosenbrock_numpy(p):
    return np.array([10 * (p[1] - p[0] ** 2), 1 - p[0]])


def _exp(batch, lower, upper):
    x, y, _ = exp_data(batch)
    abc = nlls.Vector(tensor=torch.tensor([[1.0, 1.0, 0.0]], dtype=F64).repeat(batch, 1), name="abc")
    obj = nlls.Objective()
    obj.add(nlls.AutoDiffCostFunction((abc,), exp_error, x.shape[1],
                                      aux_vars=(nlls.Variable(x, name="x"), nlls.Variable(y, name="y")), name="exp"))
    obj.set_bounds("abc", lower=lower, upper=upper)
    return obj, x, y


def _exp_numpy(x, y):
    return lambda p: p[0] * np.exp(-p[1] * x) + p[2] - y


@pytest.mark.parametrize("name,make", OPTIMIZERS, ids=[n for n, _ in OPTIMIZERS])
def test_rosenbrock_with_an_active_upper_bound_matches_scipy(name, make):
    # SciPy's documented example: the bound x0 <= 1.5 excludes the minimum (1, 1)... here x1 <= 0.5
    lower, upper = [[-np.inf, -np.inf]], [[0.5, np.inf]]
    obj = _rosenbrock([[2.0, 2.0]], [[-np.inf, -np.inf]], upper)
    info = make(obj, **TIGHT).optimize()
    expected = _scipy(_rosenbrock_numpy, np.array([0.5, 2.0]), lower[0], upper[0])
    got = obj.optim_vars["p"].tensor[0].numpy()
    assert info.converged.all(), info.message
    np.testing.assert_allclose(got, expected, atol=1e-8)
    assert got[0] == 0.5  # exactly on the bound
    assert info.active_bounds["p"].tolist() == [[1, 0]]


CHECKED = [(n, m) for n, m in OPTIMIZERS if n != "gn"]  # projected Gauss-Newton steps are not checked: they may cycle


@pytest.mark.parametrize("name,make", CHECKED, ids=[n for n, _ in CHECKED])
def test_per_element_bounds_in_one_batch_match_scipy_solo_solves(name, make):
    # four elements: unbounded, an inactive box, the decay rate bounded below (active), both a and c
    # bounded (active at the upper bound of a and the lower bound of c)
    inf = float("inf")
    lower = torch.tensor([[-inf, -inf, -inf], [-10.0, -10.0, -10.0], [-inf, 1.6, -inf], [-inf, -inf, 0.3]], dtype=F64)
    upper = torch.tensor([[inf, inf, inf], [10.0, 10.0, 10.0], [inf, inf, inf], [1.2, inf, inf]], dtype=F64)
    obj, x, y = _exp(4, lower, upper)
    info = make(obj, **TIGHT).optimize()
    assert info.converged.all(), info.message
    got = obj.optim_vars["abc"].tensor
    for b in range(4):
        expected = _scipy(_exp_numpy(x[b].numpy(), y[b].numpy()), np.clip([1.0, 1.0, 0.0], lower[b].numpy(), upper[b].numpy()),
                          lower[b].numpy(), upper[b].numpy())
        # (the dogleg judges steps by the cost alone, which stops it within sqrt(eps) of the solution)
        np.testing.assert_allclose(got[b].numpy(), expected, atol=1e-6 if name == "dogleg" else 1e-8,
                                   err_msg=f"element {b}")
    active = info.active_bounds["abc"]
    assert active[0].tolist() == [0, 0, 0] and active[1].tolist() == [0, 0, 0]
    assert active[2].tolist() == [0, -1, 0]
    assert active[3, 0] == 1  # a on its upper bound (c ends inside its box)
    assert (got >= lower).all() and (got <= upper).all()


def test_bounded_linear_least_squares_matches_scipy_with_several_active_bounds():
    g = torch.Generator().manual_seed(3)
    batch, m, n = 3, 12, 5
    A = torch.randn(batch, m, n, generator=g, dtype=F64)
    b = torch.randn(batch, m, generator=g, dtype=F64) * 3
    x = nlls.Vector(tensor=torch.zeros(batch, n, dtype=F64), name="x")
    obj = nlls.Objective()
    obj.add(nlls.AutoDiffCostFunction(
        (x,), lambda optim, aux: (aux[0].tensor @ optim[0].tensor[..., None])[..., 0] - aux[1].tensor, m,
        aux_vars=(nlls.Variable(A, name="A"), nlls.Variable(b, name="b")), name="linear"))
    obj.set_bounds(x, lower=-0.2, upper=0.25)
    info = nlls.LevenbergMarquardt(obj, **TIGHT).optimize()
    assert info.converged.all(), info.message
    for k in range(batch):
        expected = scipy_optimize.lsq_linear(A[k].numpy(), b[k].numpy(), bounds=(-0.2, 0.25), tol=1e-15).x
        np.testing.assert_allclose(x.tensor[k].numpy(), expected, atol=1e-8)
    assert (info.active_bounds["x"] != 0).sum() >= 3


@pytest.mark.parametrize("solver", ["dense_lu", "sparse_cholesky", "cg"])
def test_bounds_work_with_every_linearization(solver):
    upper = [[0.5, np.inf]]
    obj = _rosenbrock([[2.0, 2.0]], [[-np.inf, -np.inf]], upper)
    info = nlls.LevenbergMarquardt(obj, linear_solver=solver, **TIGHT).optimize()
    expected = _scipy(_rosenbrock_numpy, np.array([0.5, 2.0]), [-np.inf, -np.inf], upper[0])
    assert info.converged.all(), info.message
    np.testing.assert_allclose(obj.optim_vars["p"].tensor[0].numpy(), expected, atol=1e-7)


def test_a_start_outside_the_box_is_projected_and_iterates_stay_inside():
    obj = _rosenbrock([[2.0, 2.0]], [[-1.0, -1.0]], [[0.5, 0.3]])
    seen = []
    info = nlls.GaussNewton(obj, **TIGHT).optimize(
        callback=lambda i: seen.append(obj.optim_vars["p"].tensor.clone()), track_err_history=True)
    p = obj.optim_vars["p"].tensor
    assert info.converged.all(), info.message
    assert (p <= torch.tensor([0.5, 0.3], dtype=F64)).all() and (p >= -1).all()
    assert torch.allclose(info.initial_error, torch.tensor([0.5 * (100 * (0.3 - 0.25) ** 2 + 0.25)], dtype=F64))


def test_compiled_solve_keeps_bounds():
    obj = _rosenbrock([[2.0, 2.0]], [[-np.inf, -np.inf]], [[0.5, np.inf]])
    info = nlls.LevenbergMarquardt(obj, **TIGHT).optimize(compile=True)
    assert info.converged.all(), info.message
    assert float(obj.optim_vars["p"].tensor[0, 0]) == 0.5


# ---- errors -------------------------------------------------------------------------------------
def _vector_objective():
    obj, _, _ = _exp(2, None, None)
    return obj


def test_lower_above_upper_is_refused_naming_the_variable():
    obj = _vector_objective()
    with pytest.raises(ValueError, match=r"variable 'abc': lower > upper at batch element 1, coordinate 2"):
        obj.set_bounds("abc", lower=torch.tensor([[0.0, 0, 0], [0, 0, 2.0]], dtype=F64), upper=1.0)


def test_nan_and_impossible_infinities_are_refused():
    obj = _vector_objective()
    with pytest.raises(ValueError, match=r"'abc': lower contains NaN"):
        obj.set_bounds("abc", lower=torch.tensor([0.0, float("nan"), 0.0], dtype=F64))
    with pytest.raises(ValueError, match=r"'abc': upper contains -inf"):
        obj.set_bounds("abc", upper=-float("inf"))


def test_a_variable_not_in_the_objective_is_refused():
    obj = _vector_objective()
    stranger = nlls.Vector(tensor=torch.zeros(1, 3, dtype=F64), name="abc")
    with pytest.raises(ValueError, match=r"'abc' is not an optim variable of this objective"):
        obj.set_bounds(stranger, lower=0.0)
    with pytest.raises(ValueError, match=r"'y' is not an optim variable"):
        obj.set_bounds("y", lower=0.0)


def test_a_lie_group_is_refused_naming_it():
    pose = nlls.SE2(x_y_theta=torch.zeros(1, 3, dtype=F64), name="pose")
    obj = nlls.Objective()
    obj.add(nlls.Difference(pose, nlls.SE2(x_y_theta=torch.ones(1, 3, dtype=F64), name="target"), name="prior"))
    with pytest.raises(TypeError, match=r"variable 'pose' is a SE2; box bounds apply to vector variables"):
        obj.set_bounds(pose, lower=0.0)


def test_a_wrong_shape_is_refused():
    obj = _vector_objective()
    with pytest.raises(ValueError, match=r"'abc': lower has shape \(2,\), expected one broadcastable to \(2, 3\)"):
        obj.set_bounds("abc", lower=torch.zeros(2, dtype=F64))


def test_bounds_are_removed_with_none_on_both_sides():
    obj = _vector_objective()
    obj.set_bounds("abc", lower=0.0)
    assert "abc" in obj.bounds
    obj.set_bounds("abc")
    info = nlls.LevenbergMarquardt(obj).optimize()
    assert info.active_bounds is None and not obj.bounds
