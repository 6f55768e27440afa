"""hessian="exact" through the sparse and Schur solvers: the exact Hessian assembled into the
pattern of J^T J (nlls.backward.exact_hessian) gives the dense exact path's gradients, and on
pose graphs with learnable per-edge weights gradients equal to central differences of the whole
solve, where Gauss-Newton's are measurably off."""
import math
import warnings

import numpy as np
import pytest
import torch

import nlls
from nlls.backward.exact_hessian import exact_blocks
from nlls.core.evaluation import Evaluator
from nlls.solve.linearization import DenseLinearization, SparseLinearization

F64 = torch.float64


def pose_graph(num_poses, batch, seed=0, closure_fraction=0.1, sigma=(0.05, 0.05, 0.02)):
    """A 2-D pose graph: a walk with right-angle turns, odometry edges and loop closures, each
    measurement the true relative pose times exp(noise); one Between group 'edges' with a scale
    weight per edge (the aux 'edges_weights', (B, E, 1)) and a prior on pose 0 (the gauge).
    Returns the objective and per-element weights in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((num_poses, 3))
    for k in range(1, num_poses):
        theta = truth[k - 1, 2] + (math.pi / 2 if rng.random() < 0.2 else 0.0)
        truth[k] = (truth[k - 1, 0] + math.cos(theta), truth[k - 1, 1] + math.sin(theta), theta)
    pairs = [(k, k + 1) for k in range(num_poses - 1)]
    for _ in range(max(1, round(closure_fraction * num_poses))):
        j = int(rng.integers(10, num_poses))
        pairs.append((int(rng.integers(0, j - 5)), j))
    ij = torch.tensor(pairs)
    true_poses = torch.from_numpy(truth)
    relative = nlls.SE2(x_y_theta=true_poses[ij[:, 0]]).between(nlls.SE2(x_y_theta=true_poses[ij[:, 1]]))
    noise = torch.from_numpy(rng.normal(size=(len(pairs), 3)) * np.asarray(sigma))
    measurements = relative.compose(nlls.SE2.exp_map(noise)).tensor
    start = nlls.SE2(x_y_theta=true_poses + torch.from_numpy(rng.normal(size=truth.shape) * 0.05)).tensor
    poses = nlls.VariableBlock(nlls.SE2, start[None].expand(batch, -1, -1).clone(), "poses")
    objective = nlls.Objective(dtype=F64)
    objective.add(nlls.Between.many(poses, ij[:, 0], ij[:, 1], measurements[None],
                                    torch.ones(1, len(pairs), 1, dtype=F64), name="edges"))
    objective.add(nlls.Difference.many(poses, torch.tensor([0]), start[None, :1].clone(),
                                       torch.full((1, 1, 1), 10.0, dtype=F64), name="prior"))
    weights = torch.from_numpy(rng.uniform(0.5, 2.0, size=(batch, len(pairs), 1)))
    return objective, weights


def tight(objective, solver, **kwargs):
    return nlls.LevenbergMarquardt(objective, linear_solver=solver, max_iterations=200,
                                   abs_err_tolerance=0.0, function_tolerance=0.0, parameter_tolerance=1e-15,
                                   gradient_tolerance=1e-13, **kwargs)


def per_element_loss(objective, solver, probe, weights, hessian="exact"):
    """Solutions' ``sum(probe * poses)`` per batch element, (B,)."""
    layer = nlls.OptimizationLayer(tight(objective, solver), hessian=hessian)
    solution, info = layer({"edges_weights": weights})
    assert bool(info.converged.all()), info
    return (solution["poses"] * probe).sum(dim=(1, 2))


def gradients(objective, solver, probe, weights, hessian="exact"):
    w = weights.clone().requires_grad_(True)
    loss = per_element_loss(objective, solver, probe, w, hessian)
    return torch.autograd.grad(loss.sum(), w)[0]


def central_differences(objective, solver, probe, weights, direction, step=1e-4):
    with torch.no_grad():
        plus = per_element_loss(objective, solver, probe, weights + step * direction)
        minus = per_element_loss(objective, solver, probe, weights - step * direction)
    return (plus - minus) / (2 * step)


def test_sparse_exact_hessian_equals_the_dense_one():
    objective, weights = pose_graph(12, batch=2, seed=3)
    objective.update({"edges_weights": weights})
    evaluator = Evaluator(objective)
    state, aux = evaluator.gather(), evaluator.aux()
    sparse = SparseLinearization(evaluator)
    exact = sparse.assemble_blocks(exact_blocks(evaluator, state, aux)).to_dense()
    # the dense exact Hessian: forward-mode columns of the whole gradient
    dof, linearization = evaluator.dof, DenseLinearization(evaluator)
    zeros = torch.zeros(2, dof, dtype=F64)
    columns = [torch.func.jvp(lambda eta: linearization.gradient(evaluator.retract(state, eta), aux),
                              (zeros,), (torch.eye(dof, dtype=F64)[k].expand(2, dof),))[1]
               for k in range(dof)]
    dense = torch.stack(columns, dim=-1)
    gauss_newton = sparse.linearize(state, aux).A.to_dense()
    assert (dense - gauss_newton).abs().max() > 1e-3  # the second-order terms are there
    torch.testing.assert_close(exact, 0.5 * (dense + dense.mT), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("solver", ["sparse_cholesky"])  # (a pose graph has nothing to eliminate)
def test_sparse_exact_gradients_equal_the_dense_ones(solver):
    objective, weights = pose_graph(15, batch=2, seed=1)
    probe = torch.randn(2, 15, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    dense = gradients(objective, "dense_cholesky", probe, weights)
    other = gradients(objective, solver, probe, weights)
    assert dense.abs().max() > 1e-3
    torch.testing.assert_close(other, dense, rtol=1e-9, atol=1e-11)


def ba_with_priors():
    from tests.solve.linear.test_schur import bal_problem

    objective = bal_problem(cameras=3, points=12, seed=4).objective()
    for i in range(3):  # priors on the cameras fix the gauge: a strict minimum
        camera = objective.optim_vars[f"c{i}"]
        objective.add(nlls.Difference(camera, nlls.Variable(camera.tensor.clone(), name=f"c{i}_prior"),
                                      cost_weight=10.0, name=f"prior{i}"))
    return objective


def test_schur_exact_equals_dense_exact_on_a_small_bundle_adjustment():
    grads = {}
    for solver in ("dense_cholesky", "sparse_cholesky", "schur"):
        for hessian in ("exact", "gauss_newton"):
            objective = ba_with_priors()
            layer = nlls.OptimizationLayer(nlls.LevenbergMarquardt(objective, linear_solver=solver, max_iterations=50),
                                           hessian=hessian)
            uv = objective.aux_vars["uv"].tensor.clone().requires_grad_(True)
            solution, _ = layer({"uv": uv})
            loss = solution["c1"].sum() + (solution["p3"] ** 2).sum()
            grads[solver, hessian] = torch.autograd.grad(loss, uv)[0]
    reference = grads["dense_cholesky", "exact"]
    assert (reference - grads["dense_cholesky", "gauss_newton"]).abs().max() > 1e-6 * reference.abs().max()
    for solver in ("sparse_cholesky", "schur"):
        torch.testing.assert_close(grads[solver, "exact"], reference, rtol=1e-9, atol=1e-12)


def check_against_central_differences(num_poses, solver="sparse_cholesky"):
    objective, weights = pose_graph(num_poses, batch=2, seed=0)
    probe = torch.randn(2, num_poses, 4, dtype=F64, generator=torch.Generator().manual_seed(5))
    direction = torch.randn(weights.shape, dtype=F64, generator=torch.Generator().manual_seed(6))
    reference = central_differences(objective, solver, probe, weights, direction)
    errors = {}
    for hessian in ("exact", "gauss_newton"):
        g = gradients(objective, solver, probe, weights, hessian)
        directional = (g * direction).sum(dim=(1, 2))
        errors[hessian] = ((directional - reference).abs() / reference.abs()).max().item()
    print(f"{num_poses} poses, relative error against central differences: {errors}")
    assert errors["exact"] < 1e-5
    assert errors["gauss_newton"] > 1e-3  # Gauss-Newton's gradient is off: the test can fail
    return errors


def test_exact_sparse_gradients_equal_central_differences_100_poses():
    check_against_central_differences(100)


def test_exact_sparse_gradients_equal_central_differences_500_poses():  # about 8 s
    check_against_central_differences(500)


def test_robust_losses_and_a_variable_used_twice_match_the_dense_path():
    """Per-edge robust Between cost functions (Cauchy), and a cost function whose two
    variables are one: sparse exact equals dense exact."""
    grads = []
    for solver in ("dense_cholesky", "sparse_cholesky"):
        x = [nlls.Vector(tensor=torch.tensor([[0.3 * k, 1.0 - 0.1 * k]], dtype=F64), name=f"x{k}")
             for k in range(5)]
        data = nlls.Variable(torch.tensor([[0.5, -0.2, 1.5, 0.1, -0.7]], dtype=F64), name="data")
        objective = nlls.Objective(dtype=F64)

        def sine(optim_vars, aux_vars, k=0):
            a, b = optim_vars
            return torch.sin(a.tensor * b.tensor) + a.tensor ** 2 - aux_vars[0].tensor[:, k:k + 1]

        for k in range(5):
            cf = nlls.AutoDiffCostFunction([x[k], x[(k + 1) % 5]], lambda o, a, k=k: sine(o, a, k), 2,
                                           aux_vars=[data], name=f"f{k}")
            objective.add(nlls.RobustCostFunction(cf, nlls.CauchyLoss(0.5)))
        objective.add(nlls.AutoDiffCostFunction([x[2], x[2]], lambda o, a: sine(o, a, 2), 2,
                                                aux_vars=[data], name="twice"))
        layer = nlls.OptimizationLayer(nlls.LevenbergMarquardt(objective, linear_solver=solver, max_iterations=50),
                                       hessian="exact")
        d = data.tensor.clone().requires_grad_(True)
        solution, info = layer({"data": d})
        loss = sum((solution[f"x{k}"] * (k + 1)).sum() for k in range(5))
        grads.append(torch.autograd.grad(loss, d)[0])
    assert grads[0].abs().max() > 1e-3
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-11)


def test_second_derivatives_are_refused_with_a_clear_message():
    objective, weights = pose_graph(12, batch=1, seed=2)
    layer = nlls.OptimizationLayer(tight(objective, "sparse_cholesky"), hessian="exact")
    w = weights.clone().requires_grad_(True)
    solution, _ = layer({"edges_weights": w})
    with pytest.raises(RuntimeError, match="hessian='exact' with the sparse linear solver.*first derivatives"):
        torch.autograd.grad(solution["poses"].sum(), w, create_graph=True)


def test_an_indefinite_exact_hessian_is_reported_per_element_never_nan():
    """r = sin(x) - y: element 0 starts at its minimum (H = cos^2 x > 0), element 1 at
    x = pi/2 with y = -1, where H = cos^2 x - (sin x - y) sin x = -2: no factorization there, a
    warning naming element 1 and a zero gradient; element 0 keeps the dense path's gradient."""
    grads = []
    for solver in ("dense_lu", "sparse_cholesky"):
        start = torch.tensor([[math.asin(0.5)], [math.pi / 2]], dtype=F64)
        x = [nlls.Vector(tensor=start.clone(), name=f"x{k}") for k in range(2)]
        y = nlls.Variable(torch.tensor([[0.5], [-1.0]], dtype=F64), name="y")
        objective = nlls.Objective(dtype=F64)
        for k in range(2):
            objective.add(nlls.AutoDiffCostFunction(
                [x[k]], lambda o, a: torch.sin(o[0].tensor) - a[0].tensor, 1, aux_vars=[y], name=f"f{k}"))
        layer = nlls.OptimizationLayer(nlls.GaussNewton(objective, linear_solver=solver, max_iterations=0),
                                       hessian="exact")
        target = y.tensor.clone().requires_grad_(True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            solution, _ = layer({"y": target})
            grads.append(torch.autograd.grad(solution["x0"].sum() + solution["x1"].sum(), target)[0])
        if solver == "sparse_cholesky":
            assert any("could not be factored for batch elements [1]" in str(w.message) for w in caught)
    assert torch.isfinite(grads[1]).all()
    assert grads[1][1].abs().max() == 0
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-12, atol=1e-14)
    assert grads[0][0].abs().max() > 0.1
