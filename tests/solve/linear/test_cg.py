"""ConjugateGradient: matrix-free solves equal dense ones; stopping, failure and arguments."""
import pytest
import torch

import nlls
from nlls.solve.linearization import DenseLinearization, JacobianLinearization
from tests.solve.test_cuda_graph import _pose_graph_se2

F64 = torch.float64


def _systems(damping=1e-2):
    obj, _ = _pose_graph_se2(batch=3, poses=6)
    opt = nlls.GaussNewton(obj)
    evaluator = opt.prepare()
    values, aux = evaluator.gather(), evaluator.aux()
    dense = DenseLinearization(evaluator).linearize(values, aux)
    operator = JacobianLinearization(evaluator).linearize(values, aux)
    lam = torch.full((3,), damping, dtype=F64)
    return dense.damped(lam), operator.damped(lam), dense.g


@pytest.mark.parametrize("preconditioner", [None, "jacobi", "block_jacobi"])
def test_cg_solves_like_cholesky(preconditioner):
    matrix, operator, g = _systems()
    expected = torch.linalg.solve(matrix, -g)
    x, ok = nlls.ConjugateGradient(max_iterations=200, preconditioner=preconditioner).factor(operator).solve(-g)
    assert ok.all()
    torch.testing.assert_close(x, expected, rtol=1e-7, atol=1e-9)


def test_the_operator_is_the_matrix():
    matrix, operator, _ = _systems()
    v = torch.randn(3, matrix.shape[-1], dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(operator.matvec(v), (matrix @ v[..., None])[..., 0])
    torch.testing.assert_close(operator.diagonal(), matrix.diagonal(dim1=-2, dim2=-1))


def test_few_iterations_give_an_inexact_step_and_preconditioning_helps():
    matrix, operator, g = _systems(damping=1e-4)
    expected = torch.linalg.solve(matrix, -g)
    errors = {}
    for preconditioner in (None, "block_jacobi"):
        x, _ = nlls.ConjugateGradient(max_iterations=3, preconditioner=preconditioner).factor(operator).solve(-g)
        errors[preconditioner] = float((x - expected).norm() / expected.norm())
    assert errors[None] > 1e-3  # three iterations are not enough unpreconditioned
    assert errors["block_jacobi"] < errors[None]


def test_non_finite_input_fails_only_its_element():
    matrix, operator, g = _systems()
    rhs = -g.clone()
    rhs[1, 0] = float("nan")
    x, ok = nlls.ConjugateGradient(preconditioner="jacobi").factor(operator).solve(rhs)
    assert ok.tolist() == [True, False, True]
    assert (x[1] == 0).all() and torch.isfinite(x).all()
    torch.testing.assert_close(x[[0, 2]], torch.linalg.solve(matrix, -g)[[0, 2]], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("kwargs, match", [
    ({"max_iterations": 0}, "max_iterations"), ({"tolerance": -1.0}, "tolerance"),
    ({"preconditioner": "ilu"}, "preconditioner"),
])
def test_bad_arguments_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nlls.ConjugateGradient(**kwargs)


def test_capturable_unless_block_jacobi():
    assert nlls.ConjugateGradient(preconditioner="jacobi").capturable
    assert not nlls.ConjugateGradient().capturable


def _unseen_problem():
    """'ab': r = a x - 1 (b unseen); 'cd': r = (c + d) x (only the sum is seen)."""
    x = torch.linspace(0.5, 1.5, 5, dtype=F64).repeat(2, 1)
    ab = nlls.Vector(tensor=torch.ones(2, 2, dtype=F64), name="ab")
    cd = nlls.Vector(tensor=torch.ones(2, 2, dtype=F64), name="cd")
    objective = nlls.Objective()
    data = nlls.Variable(x, name="x")
    objective.add(nlls.AutoDiffCostFunction([ab], lambda v, a: v[0].tensor[:, :1] * a[0].tensor - 1.0, 5,
                                            aux_vars=[data], name="fit"))
    objective.add(nlls.AutoDiffCostFunction([cd], lambda v, a: (v[0].tensor[:, :1] + v[0].tensor[:, 1:]) * a[0].tensor
                                            - 2.0, 5, aux_vars=[data], name="sum"))
    return objective


@pytest.mark.parametrize("preconditioner", [None, "jacobi", "block_jacobi"])
def test_gauss_newton_with_cg_fails_on_an_unconstrained_coordinate_and_names_it(preconditioner):
    objective = _unseen_problem()
    info = nlls.GaussNewton(objective, linear_solver=nlls.ConjugateGradient(preconditioner=preconditioner)).optimize()
    assert (info.status == nlls.Status.FAILED).all()
    assert "conjugate gradient met a singular system" in info.message
    assert "no residual depends on 'ab'[1]" in info.message
    damped = _unseen_problem()  # Levenberg-Marquardt's damping makes the same systems solvable
    info = nlls.LevenbergMarquardt(damped, linear_solver=nlls.ConjugateGradient(preconditioner=preconditioner)).optimize()
    assert info.converged.all(), info.message


def test_a_direction_without_curvature_fails_its_element_only():
    objective = _unseen_problem()
    objective.update({"ab": torch.ones(2, 2, dtype=F64)})
    evaluator = nlls.GaussNewton(objective).prepare()
    operator = JacobianLinearization(evaluator).linearize(evaluator.gather(), evaluator.aux()).A
    columns = {var.name: 2 * k for k, var in enumerate(evaluator.blocks[0].variables)}
    shift = torch.zeros(2, 4, dtype=F64)
    shift[:, columns["ab"]: columns["ab"] + 2] = 1.0  # 'ab' damped: only 'cd' is singular
    damped = operator.add_diagonal(shift)
    rhs = torch.zeros(2, 4, dtype=F64)
    rhs[:, columns["cd"]: columns["cd"] + 2] = 1.0  # in the range of the (c + d) block
    rhs[1, columns["cd"] + 1] = -1.0  # element 1: along the null direction (1, -1) of that block
    factorization = nlls.ConjugateGradient(preconditioner=None, max_iterations=20).factor(damped)
    x, ok = factorization.solve(rhs)
    assert ok.tolist() == [True, False] and (x[1] == 0).all()
    assert factorization.converged[0]


def test_an_inexact_solve_stays_ok_and_says_it_did_not_converge():
    matrix, operator, g = _systems(damping=1e-4)
    factorization = nlls.ConjugateGradient(max_iterations=2, preconditioner=None).factor(operator)
    x, ok = factorization.solve(-g)
    assert ok.all() and not factorization.converged.any()
    factorization = nlls.ConjugateGradient(max_iterations=200).factor(operator)
    factorization.solve(-g)
    assert factorization.converged.all()
