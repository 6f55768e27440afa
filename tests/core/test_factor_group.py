"""FactorGroup (Between.many, Difference.many): the same values, systems, solutions and gradients as
one cost-function object per factor (float64), and errors that name the group."""
import pytest
import torch

import nlls
from nlls.core.factor_group import FactorGroup
from nlls.geometry import Between, Difference
from nlls.solve.linearization import DenseLinearization, SparseLinearization

F64 = torch.float64


def _graph(group, n=7, e=15, batch=2, seed=0):
    """Poses, edge indices, measurements (1, E), square-root weights (B, E, d, d)."""
    gen = torch.Generator().manual_seed(seed)
    dof = group.DOF
    poses = group.exp_tensor(torch.randn(n, dof, dtype=F64, generator=gen))
    i = torch.randint(0, n, (e,), generator=gen)
    j = (i + 1 + torch.randint(0, n - 1, (e,), generator=gen)) % n
    measured = group.exp_tensor(0.3 * torch.randn(e, dof, dtype=F64, generator=gen))[None]
    root = torch.randn(batch, e, dof, dof, dtype=F64, generator=gen)
    weights = torch.linalg.cholesky(root @ root.mT + dof * torch.eye(dof, dtype=F64)).mT
    return poses, i, j, measured, weights


def _variables(group, poses):
    return [group(tensor=poses[k:k + 1].clone(), name=f"x{k}") for k in range(len(poses))]


def _columns_by_name(evaluator):
    """The step's columns of ``x0, x1, ...`` in that order (objectives order variables as met)."""
    where = {}
    for block in evaluator.blocks:
        for row, var in enumerate(block.variables):
            where[var.name] = block.offset + row * block.dof + torch.arange(block.dof)
    return torch.cat([where[f"x{k}"] for k in range(len(where))])


def _objectives(group, seed=0):
    poses, i, j, measured, weights = _graph(group, seed=seed)
    dof = weights.shape[-1]
    # the vectorized objective: one group of edges and one group of priors
    a = _variables(group, poses)
    grouped = nlls.Objective()
    grouped.add(Between.many(a, i, j, nlls.Variable(measured, "z"), nlls.Variable(weights, "S"), name="edges"))
    grouped.add(Difference.many(a, torch.tensor([0, 3]), group.identity_tensor(2, F64, None)[None],
                                torch.full((1, 2, dof), 10.0, dtype=F64), name="priors"))
    # the same factors as objects
    b = _variables(group, poses)
    single = nlls.Objective()
    for k in range(len(i)):
        single.add(Between(b[i[k]], b[j[k]], group.from_tensor(measured[:, k], f"z{k}"),
                           nlls.MatrixCostWeight(weights[:, k], name=f"S{k}"), name=f"e{k}"))
    for k, v in enumerate((0, 3)):
        single.add(Difference(b[v], group.identity(dtype=F64, name=f"t{k}"),
                              nlls.DiagonalCostWeight(torch.full((1, dof), 10.0, dtype=F64)), name=f"p{k}"))
    return grouped, single


@pytest.mark.parametrize("group", [nlls.SE2, nlls.SE3])
def test_values_and_systems_equal_the_objects(group):
    grouped, single = _objectives(group)
    assert grouped.size() == single.size() == 17 and grouped.dim() == single.dim()
    torch.testing.assert_close(grouped.error(), single.error(), rtol=0, atol=1e-12)
    torch.testing.assert_close(grouped.error_metric(), single.error_metric(), rtol=1e-14, atol=0)
    edges = grouped.cost_functions["edges"]
    torch.testing.assert_close(edges.error(), grouped.error()[:, :edges.dim()], rtol=0, atol=0)
    for linearization in (DenseLinearization, SparseLinearization):
        systems = []
        for objective in (grouped, single):
            evaluator = objective.evaluator()
            system = linearization(evaluator).linearize(evaluator.gather(), evaluator.aux())
            A = system.A if isinstance(system.A, torch.Tensor) else system.A.to_dense()
            order = _columns_by_name(evaluator)
            systems.append((A[:, order][:, :, order], system.g[:, order]))
        torch.testing.assert_close(systems[0][0], systems[1][0], rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(systems[0][1], systems[1][1], rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("solver", ["dense_cholesky", "sparse_cholesky", "cg"])
def test_solutions_equal_the_objects(solver):
    grouped, single = _objectives(nlls.SE2, seed=1)
    infos = [nlls.LevenbergMarquardt(o, linear_solver=solver, max_iterations=50).optimize()
             for o in (grouped, single)]
    assert all(bool(info.converged.all()) for info in infos)
    for k in range(7):
        torch.testing.assert_close(grouped.optim_vars[f"x{k}"].tensor, single.optim_vars[f"x{k}"].tensor,
                                   rtol=0, atol=1e-8)


def test_update_by_name_replaces_every_factors_data():
    grouped, single = _objectives(nlls.SE2)
    weights = grouped.aux_vars["S"].tensor * 2.0
    grouped.update({"S": weights})
    single.update({f"S{k}": weights[:, k] for k in range(15)})
    torch.testing.assert_close(grouped.error(), single.error(), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="'S'"):
        grouped.update({"S": weights[:, :3]})


@pytest.mark.parametrize("mode,kwargs", [("implicit", {"hessian": "gauss_newton"}), ("unroll", {})])
def test_layer_gradients_of_per_edge_weights_as_one_tensor(mode, kwargs):
    """One input ``S`` (B, E, 3, 3) that requires grad gives the values and gradients of one input
    per edge (``S0`` ... ``S14``) in the per-object formulation."""
    grouped, single = _objectives(nlls.SE2, seed=2)
    settings = dict(max_iterations=100, abs_err_tolerance=0.0, rel_err_tolerance=1e-15)
    weights = grouped.aux_vars["S"].tensor.clone()
    mix = torch.randn(2, 7, 4, dtype=F64, generator=torch.Generator().manual_seed(3))
    results = []
    for objective, split in ((grouped, False), (single, True)):
        layer = nlls.OptimizationLayer(nlls.GaussNewton(objective, **settings))
        w = weights.clone().requires_grad_()
        inputs = {f"S{k}": w[:, k] for k in range(15)} if split else {"S": w}
        solution, info = layer(inputs, backward_mode=mode, **kwargs)
        assert bool(info.converged.all()), info.message
        poses = torch.stack([solution[f"x{k}"] for k in range(7)], dim=1)
        (grad,) = torch.autograd.grad((mix * poses).sum(), w)
        results.append((poses.detach(), grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-9)
    assert results[1][1].abs().max() > 1e-6
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-7, atol=1e-9)


def test_a_generic_template_with_a_robust_loss():
    """Any cost function is a template: an autodiff residual wrapped in a robust loss, on points."""
    gen = torch.Generator().manual_seed(4)
    points = torch.randn(5, 2, dtype=F64, generator=gen)
    i, j = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([1, 2, 3, 4, 0, 2])
    targets = torch.rand(1, 6, 1, dtype=F64, generator=gen) + 0.5

    def distance(optim, aux):
        a, b = optim
        return (b.tensor - a.tensor).norm(dim=1, keepdim=True) - aux[0].tensor

    def template():
        a, b = nlls.Point2(tensor=points[:1]), nlls.Point2(tensor=points[:1])
        inner = nlls.AutoDiffCostFunction((a, b), distance, 1, aux_vars=(nlls.Variable(targets[:, 0]),))
        return nlls.RobustCostFunction(inner, nlls.HuberLoss(0.1))

    a = [nlls.Point2(tensor=points[k:k + 1].clone(), name=f"p{k}") for k in range(5)]
    grouped = nlls.Objective().add(FactorGroup(template(), [(a, i), (a, j)], [targets], name="d"))
    single = nlls.Objective()
    for k in range(6):
        inner = nlls.AutoDiffCostFunction((a[int(i[k])], a[int(j[k])]), distance, 1,
                                          aux_vars=(nlls.Variable(targets[:, k], name=f"t{k}"),))
        single.add(nlls.RobustCostFunction(inner, nlls.HuberLoss(0.1), name=f"r{k}"))
    torch.testing.assert_close(grouped.error(), single.error(), rtol=0, atol=1e-14)
    evaluators = [o.evaluator() for o in (grouped, single)]
    systems = [DenseLinearization(e).linearize(e.gather(), e.aux()) for e in evaluators]
    torch.testing.assert_close(systems[0].A, systems[1].A, rtol=1e-12, atol=1e-12)  # p0.. in order in both
    assert "d_data0" in grouped.aux_vars  # a tensor given as data is named after the group


def test_errors_name_the_group():
    poses, i, j, measured, weights = _graph(nlls.SE2)
    a = _variables(nlls.SE2, poses)
    with pytest.raises(ValueError, match=r"Between.many 'g'.*weights"):
        Between.many(a, i, j, measured, weights[:, :4], name="g")
    with pytest.raises(ValueError, match=r"FactorGroup 'g': index 1 has entries outside \[0, 7\)"):
        Between.many(a, i, j + 10, measured, name="g")
    with pytest.raises(ValueError, match=r"FactorGroup 'g': data 0 .* expected \(B or 1, 15, 4\)"):
        Between.many(a, i, j, measured[:, :3], name="g")
    with pytest.raises(ValueError, match=r"index 1 has 3 entries, index 0 has 15"):
        Between.many(a, i, j[:3], measured, name="g")
    with pytest.raises(TypeError, match=r"variables\[0\] holds .*SE3"):
        Between.many(a + [nlls.SE3.identity(dtype=F64, name="y")], i, j, measured, name="g")
    with pytest.raises(ValueError, match="1-D integer tensor"):
        Between.many(a, i.double(), j, measured, name="g")
    edges = Between.many(a, i, j, measured, name="g")
    with pytest.raises(NotImplementedError, match="check the template"):
        edges.jacobians()
