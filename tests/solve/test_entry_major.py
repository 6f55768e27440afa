"""The entry-major fast path of large pose graphs (SE2 ``Between`` in closed form, matrix weights
formed entry-major, ``J^T J`` as upper-triangle rows mirrored into the sparse ``A``): the same
values and gradients as the per-matrix products, for a batch of two and with ``B * K`` rows enough
to take the path."""
import pytest
import torch

import nlls
from nlls.core.cost_weight import ENTRY_MAJOR_ROWS
from nlls.core.evaluation import Evaluator
from nlls.geometry import SE2, Between, Difference
from nlls.geometry.lie_group import LieGroup
from nlls.solve.linearization import DenseJacobianLinearization, DenseLinearization, SparseLinearization
from nlls.solve.normal_equations import normal_outer, normal_rule, upper_rows
from tests.geometry.conftest import tangents

F64 = torch.float64


def _generic_between(x1, x2, measurement):
    relative = LieGroup.between_tensor.__func__(SE2, x1, x2)
    error = LieGroup.local_tensor.__func__(SE2, measurement, relative)
    jr_inv = SE2.jr_inv_tensor(error)
    return error, -jr_inv @ SE2.adjoint_tensor(SE2.inverse_tensor(relative)), jr_inv


def test_se2_between_in_closed_form_equals_the_group_maps():
    generator = torch.Generator().manual_seed(0)
    x1, x2 = (SE2.exp_tensor(tangents(SE2, 64, generator)) for _ in range(2))
    # measurements near the relative motion too: errors of tiny and of near-pi angles
    measurement = SE2.exp_tensor(tangents(SE2, 64, generator))
    near = SE2.retract_tensor(SE2.between_tensor(x1, x2), tangents(SE2, 64, generator) * 1e-7)
    for m in (measurement, near):
        error, jac1, jac2 = SE2.between_error_tensor(x1, x2, m, True)
        expected = _generic_between(x1, x2, m)
        torch.testing.assert_close(error, expected[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(jac1, expected[1], rtol=0, atol=1e-11)
        torch.testing.assert_close(jac2, expected[2], rtol=0, atol=1e-11)
        assert jac1.permute(1, 2, 0).is_contiguous() and jac2.permute(1, 2, 0).is_contiguous()
        assert torch.equal(SE2.between_error_tensor(x1, x2, m, False)[0], error)
        assert SE2.between_error_tensor(x1, x2, m, False)[1:] == (None, None)


@pytest.mark.parametrize("rows,shared", [(ENTRY_MAJOR_ROWS + 7, False), (ENTRY_MAJOR_ROWS + 7, True), (9, False)])
def test_matrix_weight_joined_equals_one_product_per_jacobian(rows, shared):
    generator = torch.Generator().manual_seed(1)
    S = torch.randn(1 if shared else rows, 3, 3, dtype=F64, generator=generator, requires_grad=True)
    weight = nlls.MatrixCostWeight(S)
    jacobians = [torch.randn(rows, 3, d, dtype=F64, generator=generator, requires_grad=True) for d in (3, 2)]
    error = torch.randn(rows, 3, dtype=F64, generator=generator, requires_grad=True)
    joined, weighted = weight.weight_joined_jacobians(list(jacobians), error)
    each, expected_error = weight.weight_jacobians(list(jacobians), error)
    expected = torch.cat(each, dim=-1)
    assert joined.shape == (rows, 3, 5) and weighted.shape == (rows, 3)
    torch.testing.assert_close(joined, expected, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(weighted, expected_error, rtol=1e-14, atol=1e-14)
    probe = torch.randn(rows, 3, 5, dtype=F64, generator=generator)
    inputs = [S, error, *jacobians]
    got = torch.autograd.grad((joined * probe).sum() + weighted.square().sum(), inputs)
    want = torch.autograd.grad((expected * probe).sum() + expected_error.square().sum(), inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_upper_rows_are_the_upper_triangle_of_the_outer_products():
    generator = torch.Generator().manual_seed(2)
    jac = torch.randn(50, 2, 3, 6, dtype=F64, generator=generator)
    r = torch.randn(50, 2, 3, dtype=F64, generator=generator)
    rows, g = upper_rows(jac, r)
    A, g_ref = normal_outer(jac, r)
    for i, row in enumerate(rows):
        assert row.shape == (6 - i, 50, 2)
        torch.testing.assert_close(row.movedim(0, -1), A[..., i, i:], rtol=0, atol=0)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=0)


def _pose_graph(edges=600, poses=300, batch=2, seed=3):
    """A batch of SE2 graphs: ``B * edges`` rows of 3 x 3 square-root weights (learnable)."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(0, poses, (edges,), generator=generator)
    end = (start + 1 + torch.randint(0, poses - 1, (edges,), generator=generator)) % poses
    truth = SE2.exp_tensor(3 * torch.randn(poses, 3, dtype=F64, generator=generator))
    measured = SE2.exp_tensor(torch.randn(edges, 3, dtype=F64, generator=generator))[None]
    root = torch.randn(batch, edges, 3, 3, dtype=F64, generator=generator)
    weights = torch.linalg.cholesky(root @ root.mT + 3 * torch.eye(3, dtype=F64)).mT.requires_grad_()
    noise = torch.randn(batch, poses, 3, dtype=F64, generator=generator)
    variables = [SE2(tensor=SE2.retract_tensor(truth[k:k + 1].expand(batch, 4), noise[:, k]), name=f"x{k}")
                 for k in range(poses)]
    objective = nlls.Objective()
    objective.add(Between.many(variables, start, end, nlls.Variable(measured, "z"), nlls.Variable(weights, "S"),
                               name="edges"))
    objective.add(Difference.many(variables, torch.tensor([0]), truth[None, :1], torch.full((1, 1), 10.0, dtype=F64),
                                  name="anchor"))
    return objective, weights


@pytest.mark.parametrize("linearization", [SparseLinearization, DenseLinearization])
def test_linearized_system_and_gradients_equal_the_dense_jacobian(linearization):
    objective, weights = _pose_graph()
    evaluator = Evaluator(objective)
    state, aux = evaluator.gather(), evaluator.aux()
    lin = linearization(evaluator)
    lin.linearize(state, aux)  # the first evaluation checks shapes (and takes the plain path)
    jac, _ = evaluator.jacobians(state, aux)[0]
    assert jac.shape[:2] == (600, 2) and normal_rule(jac) == "outer"
    assert jac.movedim((0, 1), (-2, -1)).is_contiguous()  # entry-major from the weight
    system = lin.linearize(state, aux)
    A = system.A if isinstance(system.A, torch.Tensor) else system.A.to_dense()
    reference = DenseJacobianLinearization(Evaluator(objective)).linearize(state, aux)
    J, r = reference.A.jacobian, reference.A.residual
    A_ref, g_ref = J.mT @ J, (J.mT @ r[..., None])[..., 0]
    torch.testing.assert_close(A, A_ref, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(system.g, g_ref, rtol=1e-12, atol=1e-9)
    probe = torch.randn(A.shape, dtype=F64, generator=torch.Generator().manual_seed(4))
    got, = torch.autograd.grad((A * probe).sum() + system.g.square().sum(), weights)
    want, = torch.autograd.grad((A_ref * probe).sum() + g_ref.square().sum(), weights)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-8)
