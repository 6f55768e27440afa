"""Termination rules, per batch element: each rule fires on a problem built for it, one batch holds
elements stopped by different rules, the message counts them, a plateau is never "converged", the
older rel_err_tolerance keeps its meaning, and compiled solves stop as eager ones do."""
import pytest
import torch

import nlls
from nlls import Termination
from nlls.solve.report import Outcome
from nlls.solve.state import Failure, Status
from tests.problems import QuadFit, exp_data, exp_error, quad_data, rosenbrock_error

F64 = torch.float64
OFF = dict(abs_err_tolerance=0.0, function_tolerance=0.0, gradient_tolerance=0.0, parameter_tolerance=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def _quad(batch=3, noise=0.05):
    x, y, _ = quad_data(batch, noise=noise)
    ab = nlls.Vector(tensor=torch.zeros(batch, 2, dtype=F64), name="ab")
    obj = nlls.Objective()
    obj.add(QuadFit(ab, nlls.Variable(x, name="x"), nlls.Variable(y, name="y")))
    return obj


def _exp(batch=4, start=(1.0, 1.0, 0.0), seed=0):
    x, y, truth = exp_data(batch, seed=seed)
    p = nlls.Vector(tensor=torch.tensor([start], dtype=F64).repeat(batch, 1), name="p")
    obj = nlls.Objective()
    obj.add(nlls.AutoDiffCostFunction((p,), exp_error, x.shape[1],
                                      aux_vars=(nlls.Variable(x, name="x"), nlls.Variable(y, name="y")), name="exp"))
    return obj, x, y


def _codes(info):
    return [Termination(int(t)) for t in info.termination]


# ---- each rule, alone ------------------------------------------------------------------------
def test_gradient_tolerance_stops_gauss_newton_at_the_answer():
    # a linear problem: one step lands on the answer, the next iteration sees a zero gradient
    info = nlls.GaussNewton(_quad(), **{**OFF, "gradient_tolerance": 1e-10}, max_iterations=50).optimize()
    assert _codes(info) == [Termination.GRADIENT_TOLERANCE] * 3 and info.iterations.tolist() == [2, 2, 2]
    assert info.message == "3/3 converged: 3 gradient tolerance"


def test_function_tolerance_stops_an_accepted_step_that_changes_the_cost_little():
    obj, _, _ = _exp()
    info = nlls.LevenbergMarquardt(obj, **{**OFF, "function_tolerance": 1e-6}, max_iterations=100).optimize()
    assert _codes(info) == [Termination.FUNCTION_TOLERANCE] * 4, info.message


def test_parameter_tolerance_stops_a_small_step():
    obj, _, _ = _exp()
    info = nlls.LevenbergMarquardt(obj, **{**OFF, "parameter_tolerance": 1e-6}, max_iterations=100).optimize()
    assert _codes(info) == [Termination.PARAMETER_TOLERANCE] * 4, info.message


def _far_coordinate():
    """``x = (1e12, 0)``, one residual ``x_1 - 5``: ``x_0`` is unseen (a zero column), so any step
    on ``x_1`` is below 1e-10 of ``||x||``."""
    x = nlls.Vector(tensor=torch.tensor([[1e12, 0.0]], dtype=F64), name="x")
    obj = nlls.Objective()
    obj.add(nlls.AutoDiffCostFunction((x,), lambda optim, aux: optim[0].tensor[:, 1:] - 5.0, 1, name="far"))
    return obj, x


@pytest.mark.parametrize("optimizer", ["Dogleg", "LevenbergMarquardt"])
def test_parameter_tolerance_needs_a_stationary_point(optimizer):
    """A short step beside a huge ``||x||`` far from the answer (the residual's cosine with its
    column is 1) does not stop a run: the small start radius doubles, the large damping shrinks,
    until ``x_1 = 5``."""
    obj, x = _far_coordinate()
    settings = dict(initial_radius=1e-3) if optimizer == "Dogleg" else dict(damping=1e4)
    info = getattr(nlls, optimizer)(obj, **{**OFF, "parameter_tolerance": 1e-10}, max_iterations=100,
                                    **settings).optimize()
    assert int(info.status[0]) == Status.CONVERGED and info.iterations.item() > 3, info.message
    assert x.tensor[0, 1].item() == pytest.approx(5.0, abs=1e-8)


def test_absolute_error_at_the_start_and_after_a_step():
    obj = _quad(noise=0.0)  # zero residual at the answer
    info = nlls.GaussNewton(obj, **{**OFF, "abs_err_tolerance": 1e-20}, max_iterations=10).optimize()
    assert _codes(info) == [Termination.ABSOLUTE_ERROR] * 3 and info.iterations.tolist() == [1, 1, 1]
    info = nlls.GaussNewton(obj, **{**OFF, "abs_err_tolerance": 1e-20}, max_iterations=10).optimize()
    assert _codes(info) == [Termination.ABSOLUTE_ERROR] * 3 and info.iterations.tolist() == [0, 0, 0]




class WrongJacobian(nlls.CostFunction):
    """r = (p - 3, p - 1) with the Jacobian's sign flipped: every model step goes uphill; the
    minimum, p = 2, leaves residuals of 1 (a stationary point that is no zero of r)."""

    def __init__(self, p):
        super().__init__(optim_vars=(p,), name="wrong")
        self.p = p

    def dim(self):
        return 2 * self.p.dof()

    def error(self):
        return torch.cat([self.p.tensor - 3.0, self.p.tensor - 1.0], dim=1)

    def jacobians(self):
        eye = torch.eye(self.p.dof(), dtype=self.p.tensor.dtype).expand(self.p.tensor.shape[0], -1, -1)
        return [-torch.cat([eye, eye], dim=1)], self.error()


def test_no_further_decrease_at_a_stationary_point_is_a_convergence():
    # 1e-9 from the minimum with a wrong-signed Jacobian: every step is rejected, the damping passes
    # max_damping, and the point is stationary to working precision (cosine of r and J's columns 1e-9)
    p = nlls.Vector(tensor=torch.full((2, 2), 2.0 + 1e-9, dtype=F64), name="p")
    obj = nlls.Objective()
    obj.add(WrongJacobian(p))
    info = nlls.LevenbergMarquardt(obj, **OFF, max_damping=1e4, max_iterations=100).optimize()
    assert _codes(info) == [Termination.NO_FURTHER_DECREASE] * 2 and info.converged.all(), info.message
    assert info.message == "2/2 converged: 2 no further decrease"


def test_a_plateau_away_from_a_stationary_point_fails_instead_of_converging():
    p = nlls.Vector(tensor=torch.zeros(2, 2, dtype=F64), name="p")
    obj = nlls.Objective()
    obj.add(WrongJacobian(p))
    info = nlls.LevenbergMarquardt(obj, max_iterations=200).optimize()
    assert not info.converged.any()
    assert (info.status == Status.FAILED).all() and (info.failure == Failure.NO_DECREASE).all()
    assert _codes(info) == [Termination.NO_FURTHER_DECREASE] * 2
    assert "2 stalled: no step decreases the error although the point is not stationary" in info.message
    assert torch.equal(p.tensor, torch.zeros(2, 2, dtype=F64))  # no step was taken


class Offset(nlls.CostFunction):
    """r = p - 3 with its exact Jacobian: one Gauss-Newton step reaches a cost of exactly 0."""

    def __init__(self, p):
        super().__init__(optim_vars=(p,), name="offset")
        self.p = p

    def dim(self):
        return self.p.dof()

    def error(self):
        return self.p.tensor - 3.0

    def jacobians(self):
        eye = torch.eye(self.p.dof(), dtype=self.p.tensor.dtype).expand(self.p.tensor.shape[0], -1, -1)
        return [eye], self.error()


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_a_fixed_count_solve_settles_its_stalls_and_exact_zeros_at_the_end(compile):
    """Every tolerance 0: the steps track no termination codes and test no stationarity; an
    element that stalled is judged at the end as the steps of other solves judge it (stationary:
    converged; a plateau: failed), and an exact zero cost is the absolute error rule."""
    p = nlls.Vector(tensor=torch.tensor([[2.0 + 1e-9] * 2, [0.0, 0.0]], dtype=F64), name="p")
    obj = nlls.Objective()
    obj.add(WrongJacobian(p))
    opt = nlls.LevenbergMarquardt(obj, **OFF, max_damping=1e4, max_iterations=40, check_every=40)
    assert opt.fixed_count
    info = opt.optimize(compile=compile)
    assert _codes(info) == [Termination.NO_FURTHER_DECREASE] * 2
    assert info.status.tolist() == [Status.CONVERGED, Status.FAILED]
    assert info.failure.tolist() == [Failure.NONE, Failure.NO_DECREASE]
    assert info.message.startswith("1/2 converged: 1 no further decrease; 1 stalled: no step decreases"), info.message
    assert torch.equal(p.tensor[1], torch.zeros(2, dtype=F64))  # no step was taken
    p.update(torch.zeros(1, 2, dtype=F64))  # a plateau alone (no element converged)
    info = opt.optimize(compile=compile)
    assert _codes(info) == [Termination.NO_FURTHER_DECREASE] and info.failure.tolist() == [Failure.NO_DECREASE]

    q = nlls.Vector(tensor=torch.tensor([[0.0, 1.0], [3.0, 3.0], [5.0, -1.0]], dtype=F64), name="q")
    obj = nlls.Objective()
    obj.add(Offset(q))
    info = nlls.GaussNewton(obj, **OFF, max_iterations=5, check_every=5).optimize(compile=compile)
    assert _codes(info) == [Termination.ABSOLUTE_ERROR] * 3 and info.converged.all()
    assert info.iterations.tolist() == [1, 0, 1] and info.message == "3/3 converged: 3 absolute error"


class HugeFlat(WrongJacobian):
    """r = 1e10 + p with the Jacobian's sign flipped: a plateau at a cost of 1e20 whose gradient,
    1e10, is small beside the cost (a relative gradient of 1e-10, "stationary" by a gradient
    relative to the cost) but not beside ``J`` and ``r``: the cosine of ``r`` and ``J``'s columns
    is 1 / sqrt(2)."""

    def dim(self):
        return self.p.dof()

    def error(self):
        return 1e10 + self.p.tensor

    def jacobians(self):
        eye = torch.eye(self.p.dof(), dtype=self.p.tensor.dtype).expand(self.p.tensor.shape[0], -1, -1)
        return [-eye], self.error()


@pytest.mark.parametrize("make", [
    lambda obj: nlls.LevenbergMarquardt(obj, max_iterations=200),
    lambda obj: nlls.LevenbergMarquardt(obj, max_iterations=200, max_damping=1e12),
    lambda obj: nlls.LevenbergMarquardt(obj, max_iterations=200, max_damping=1e12, jacobi_scaling=True,
                                        diagonal_scaling=True),
    lambda obj: nlls.Dogleg(obj, max_iterations=200),
    lambda obj: nlls.Dogleg(obj, max_iterations=200, diagonal_scaling=True),
], ids=["lm", "lm_stalls", "lm_scaled", "dogleg", "dogleg_scaled"])
def test_a_plateau_at_a_huge_cost_is_not_stationary(make):
    """The stationarity test is scale-invariant: a gradient tiny beside the cost is no minimum.
    Levenberg-Marquardt's damping passes its maximum there (a failure); the dogleg's steps fall
    below the cost's rounding before its radius runs out, and it takes them as good ones (their
    cost changes, noise, end a run by the function tolerance only at a stationary point)."""
    p = nlls.Vector(tensor=torch.ones(2, 2, dtype=F64), name="p")
    obj = nlls.Objective()
    obj.add(HugeFlat(p))
    optimizer = make(obj)
    info = optimizer.optimize()
    assert not info.converged.any(), info.message
    if isinstance(optimizer, nlls.LevenbergMarquardt):
        assert (info.status == Status.FAILED).all() and (info.failure == Failure.NO_DECREASE).all(), info.message
        assert _codes(info) == [Termination.NO_FURTHER_DECREASE] * 2
    else:
        assert _codes(info) == [Termination.MAX_ITERATIONS] * 2, info.message


@pytest.mark.parametrize("settings", [dict(jacobi_scaling=True), dict(diagonal_scaling=True)])
def test_the_function_tolerance_ends_no_run_far_from_a_stationary_point(settings):
    """Chebyquad10 from 10 x0: with scaled damping Levenberg-Marquardt runs off to a cost of 1e28,
    where short, heavily damped steps change the cost by less than the function tolerance; that
    is no convergence (the cosine of r and J's columns is 1 there)."""
    from tests.mgh import BY_NAME, objective_for

    problem = BY_NAME["chebyquad10"]
    start = problem.start_labels.index("10x0")
    objective = objective_for(problem, problem.x0()[start:start + 1])
    info = nlls.LevenbergMarquardt(objective, max_iterations=100 * problem.n, **settings).optimize()
    assert info.final_error.item() > 1e20 and not info.converged.any(), info.message


# ---- one batch, several rules ------------------------------------------------------------------
@pytest.mark.parametrize("few", [64, 0], ids=["host_counts", "device_counts"])
def test_one_batch_reports_each_elements_rule_and_counts_them(few, monkeypatch):
    monkeypatch.setattr(Outcome, "FEW", few)  # the codes counted as lists, or by one bincount
    obj, x, y = _exp(batch=5)
    y = y.clone()
    y[1, 3] = float("nan")  # non-finite data
    obj.update({"y": y})
    # element 2 starts on a zero-residual answer: its data are made exact
    p0 = obj.optim_vars["p"].tensor.clone()
    with torch.no_grad():
        y[2] = exp_error((nlls.Vector(tensor=p0[2:3], name="q"),),
                         (nlls.Variable(x[2:3], name="u"), nlls.Variable(torch.zeros_like(y[2:3]), name="v")))[0]
    obj.update({"y": y})
    stop = torch.tensor([False, False, False, True, False])
    info = nlls.LevenbergMarquardt(obj, max_iterations=3).optimize(callback=lambda i: stop if i.iteration == 1 else None)
    codes = _codes(info)
    assert codes[1] == Termination.NONFINITE and codes[2] == Termination.ABSOLUTE_ERROR
    assert codes[3] == Termination.STOPPED_BY_CALLBACK
    assert codes[0] == codes[4] == Termination.MAX_ITERATIONS
    assert info.message.startswith("1/5 converged: 1 absolute error; 2 reached max_iterations=3")
    assert "1 stopped by the callback" in info.message and "1 failed at the start" in info.message


def test_a_singular_system_is_a_linear_solver_failure():
    p = nlls.Vector(tensor=torch.zeros(2, 2, dtype=F64), name="p")
    free = nlls.Vector(tensor=torch.zeros(2, 1, dtype=F64), name="free")
    obj = nlls.Objective()
    obj.add(nlls.AutoDiffCostFunction((p, free), lambda o, a: o[0].tensor - 1.0 + 0 * o[1].tensor[:, :1], 2, name="c"))
    info = nlls.GaussNewton(obj).optimize()
    assert _codes(info) == [Termination.LINEAR_SOLVER_FAILURE] * 2


def test_converged_elements_of_hard_problems_are_stationary():
    # Rosenbrock from spread starts: whatever rule stops an element as converged, it is at the minimum
    # (abs_err_tolerance=1e-10, the default, stops a zero-residual problem at a cost of 1e-10, some
    # 1e-5 from its minimum: it is switched off here)
    starts = torch.tensor([[-1.2, 1.0], [2.0, 2.0], [-3.0, -4.0], [0.0, 5.0]], dtype=F64)
    p = nlls.Vector(tensor=starts, name="p")
    obj = nlls.Objective()
    obj.add(nlls.AutoDiffCostFunction((p,), rosenbrock_error, 2, name="rosenbrock"))
    info = nlls.LevenbergMarquardt(obj, abs_err_tolerance=0.0, max_iterations=500).optimize()
    assert info.converged.all(), info.message
    torch.testing.assert_close(p.tensor, torch.ones_like(starts), rtol=0, atol=1e-8)


# ---- the older name, fixed counts, compiled solves ----------------------------------------------
def test_rel_err_tolerance_is_the_older_name_of_function_tolerance():
    obj = _quad()
    assert nlls.LevenbergMarquardt(obj, rel_err_tolerance=1e-6).function_tolerance == 1e-6
    assert nlls.LevenbergMarquardt(obj, function_tolerance=1e-7).rel_err_tolerance == 1e-7
    with pytest.raises(ValueError, match="rel_err_tolerance is the older name of function_tolerance; give one"):
        nlls.LevenbergMarquardt(obj, rel_err_tolerance=1e-6, function_tolerance=1e-7)
    # exactly 0 kept its meaning: no relative test at all, a fixed count with abs_err_tolerance=0
    opt = nlls.GaussNewton(obj, rel_err_tolerance=0, abs_err_tolerance=0, max_iterations=7)
    assert opt.fixed_count
    info = opt.optimize()
    assert info.iterations.tolist() == [7, 7, 7] and not info.converged.any()


def test_gauss_newton_at_the_answer_of_a_residual_problem_stops():
    # the case: tight relative tolerance, cost rounding noise above it; the gradient or
    # parameter tolerance ends the run instead of max_iterations
    obj, _, _ = _exp(batch=4, seed=1)
    info = nlls.GaussNewton(obj, abs_err_tolerance=0.0, rel_err_tolerance=1e-15, max_iterations=300).optimize()
    assert info.converged.all() and (info.iterations < 100).all(), info.message


def test_compiled_solves_stop_by_the_same_rules():
    results = []
    for compile in (False, True):
        obj, _, _ = _exp(batch=6, seed=3)
        info = nlls.LevenbergMarquardt(obj, max_iterations=40, check_every=3).optimize(compile=compile)
        results.append(info)
    eager, compiled = results
    assert torch.equal(eager.termination, compiled.termination) and torch.equal(eager.iterations, compiled.iterations)
    assert eager.converged.all() and (eager.iterations < 40).all()


@pytest.mark.parametrize("cls", [nlls.GaussNewton, nlls.LevenbergMarquardt])
def test_an_exact_float32_fit_stops_on_the_parameter_tolerance_floor(cls):
    """Without the absolute rule (off by default) a float32 exact fit ends on the parameter
    tolerance, floored at 10 eps of float32 (1e-10 is below float32's rounding: a step at the
    rounding of the cost went on to max_iterations there)."""
    x, y, _ = quad_data(256, dtype=torch.float32, noise=0.0)  # without the floor: 40 of 256 (GN) run on
    ab = nlls.Vector(tensor=torch.zeros(256, 2, dtype=torch.float32), name="ab")
    obj = nlls.Objective()
    obj.add(QuadFit(ab, nlls.Variable(x, name="x"), nlls.Variable(10 * y, name="y")))
    info = cls(obj, max_iterations=50).optimize()
    assert bool(info.converged.all()) and int(info.iterations.max()) <= 15, info.iterations.tolist()
    assert float(info.final_error.max()) < 1e-6 * float(info.initial_error.min())
