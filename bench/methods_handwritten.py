"""The speed limit: hand-written, fully vectorized torch loops of the problems of
``problems_curve.py``, with nothing but the arithmetic (``bmm`` for J^T J and J^T r,
``cholesky_ex``, ``cholesky_solve``; no checks, no bookkeeping).

* :func:`gauss_newton`: plain batched Gauss-Newton;
* :func:`levenberg_marquardt`: batched LM with the rule of ``nlls.LevenbergMarquardt``'s
  defaults (identity damping 1e-3, gain ratio > 1e-3, Nielsen's update), for any unknown;
* :func:`handwritten_run`: the loop of a problem as a call ``() -> solution``;
* :class:`CUDAGraphed`, :func:`handwritten_graph_run`: the loop captured in one CUDA graph (its
  Cholesky solve as two triangular solves, which a graph can hold).
"""
from __future__ import annotations

from typing import Callable

import harness
import torch
from problems_curve import ROTATION, hat


def gauss_newton(problem, start, x, y, iterations, solve=torch.cholesky_solve):
    """Plain batched Gauss-Newton: bmm for J^T J, one Cholesky and one solve per iteration
    (``solve(rhs, factor)``, as ``torch.cholesky_solve``). Differentiable (the unrolled
    reference of the gradient benches)."""
    p = start
    for _ in range(iterations):
        jac, r = problem.jacobian(p, x), problem.residual(p, x, y)
        jt = jac.transpose(1, 2)
        factor, _ = torch.linalg.cholesky_ex(torch.bmm(jt, jac))
        p = p - solve(torch.bmm(jt, r[..., None]), factor)[..., 0]
    return p


def levenberg_marquardt(residual, jacobian, retract, start, dof, iterations,
                        solve=torch.cholesky_solve, damping=1e-3, min_relative_decrease=1e-3):
    """Batched LM with nlls' default rule (identity damping, gain ratio, Nielsen's update), so
    that both do the same work per iteration and reach the same iterates: one residual and
    Jacobian at the current point, one damped Cholesky solve (``solve(rhs, factor)``), one
    residual at the candidate. ``residual(x)`` ``(B, M)``, ``jacobian(x)`` ``(B, M, dof)``,
    ``retract(x, delta)`` the step."""
    x = start
    lam = torch.full(start.shape[:1], damping, dtype=start.dtype, device=start.device)
    growth = torch.full_like(lam, 2.0)
    eye = torch.eye(dof, dtype=start.dtype, device=start.device)
    keep_shape = (-1,) + (1,) * (start.dim() - 1)  # accept (B,) against x (B, ...)
    r = residual(x)
    err = 0.5 * (r * r).sum(1)
    for _ in range(iterations):
        jac, r = jacobian(x), residual(x)
        jt = jac.transpose(1, 2)
        A, g = torch.bmm(jt, jac), torch.bmm(jt, r[..., None])
        factor, info = torch.linalg.cholesky_ex(A + lam[:, None, None] * eye)
        delta = -solve(g, factor)
        candidate = retract(x, delta[..., 0])
        r_new = residual(candidate)
        err_new = 0.5 * (r_new * r_new).sum(1)
        predicted = -(g + 0.5 * torch.bmm(A, delta)).mul(delta).sum((1, 2))
        actual = err - err_new
        ratio = actual / torch.where(predicted > 0, predicted, torch.ones_like(predicted))
        accept = (info == 0) & torch.isfinite(err_new) & torch.where(
            predicted > 0, ratio > min_relative_decrease, actual >= 0)
        shrink = (1.0 - (2.0 * ratio - 1.0) ** 3).clamp_min(1.0 / 3.0)
        lam = torch.where(accept, lam * shrink, lam * growth)
        growth = torch.where(accept, torch.full_like(growth, 2.0), growth * 2.0)
        x = torch.where(accept.reshape(keep_shape), candidate, x)
        err = torch.where(accept, err_new, err)
    return x


def rodrigues(w: torch.Tensor) -> torch.Tensor:
    """``exp(hat(w))`` for ``w (B, 3)``; Taylor coefficients below a tiny angle."""
    theta2 = (w * w).sum(-1)
    small = theta2 < 1e-8
    theta = torch.where(small, torch.ones_like(theta2), theta2).sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)[:, None, None]
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / (theta * theta))[:, None, None]
    W = hat(w)
    return torch.eye(3, dtype=w.dtype, device=w.device) + a * W + b * (W @ W)


def curve_lm(problem, start, x, y, iterations, solve=torch.cholesky_solve):
    """LM on a curve fit, the step added to the parameters."""
    return levenberg_marquardt(lambda P: problem.residual(P, x, y), lambda P: problem.jacobian(P, x),
                               lambda P, delta: P + delta, start, problem.dof, iterations, solve)


def rotation_lm(R, p, q, iterations, solve=torch.cholesky_solve):
    """LM on rotations, the step applied as ``R exp(delta)``."""
    return levenberg_marquardt(lambda X: ROTATION.residual(X, p, q), lambda X: ROTATION.jacobian(X, p),
                               lambda X, delta: X @ rodrigues(delta), R, 3, iterations, solve)


def loop_of(problem, iterations=None, solve=torch.cholesky_solve) -> Callable:
    """The hand-written loop of ``problem`` as ``f(start, a, b)`` (``a, b``: ``x, y`` or
    ``p, q``)."""
    iterations = problem.iterations if iterations is None else iterations
    if problem is ROTATION:
        return lambda R, p, q: rotation_lm(R, p, q, iterations, solve)
    if problem.optimizer == "gauss_newton":
        return lambda start, x, y: gauss_newton(problem, start, x, y, iterations, solve)
    return lambda start, x, y: curve_lm(problem, start, x, y, iterations, solve)


def handwritten_run(problem, start, a, b, iterations=None) -> Callable[[], torch.Tensor]:
    """``handwritten``: one call solves the batch from ``start``."""
    loop = loop_of(problem, iterations)
    return lambda: loop(start, a, b)


def triangular_cholesky_solve(rhs: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``torch.cholesky_solve(rhs, factor)`` (lower ``factor``) as two triangular solves:
    ``cholesky_solve`` cannot be captured in a CUDA graph, ``solve_triangular`` can."""
    z = torch.linalg.solve_triangular(factor, rhs, upper=False)
    return torch.linalg.solve_triangular(factor.mT, z, upper=True)


class CUDAGraphed:
    """``function(*inputs)`` captured in one ``torch.cuda.CUDAGraph``; a call copies new inputs
    into the static input buffers, replays the graph and clones the output (as nlls's
    ``cuda_graph=True`` does with its buffers). Warm-up runs go on a side stream before the
    capture (cuBLAS/cuSOLVER handles and workspaces are made there, outside the graph)."""

    def __init__(self, function: Callable, inputs, warmup: int = 3):
        self.device = inputs[0].device
        with torch.cuda.device(self.device), torch.no_grad():
            self.inputs = [t.detach().clone() for t in inputs]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(max(warmup, 1)):
                    function(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.output = function(*self.inputs)

    def __call__(self, *inputs):
        with torch.no_grad():
            for static, new in zip(self.inputs, inputs, strict=True):
                static.copy_(new)
            self.graph.replay()
            return self.output.clone()


def handwritten_graph_run(problem, start, a, b, warmup: int):
    """``handwritten_cuda_graph``: the capturable hand-written loop captured once; returns the
    call and the capture's seconds (warm-up runs included)."""
    capture, graphed = harness.seconds(
        lambda: CUDAGraphed(loop_of(problem, solve=triangular_cholesky_solve), (start, a, b), warmup),
        lambda: torch.cuda.synchronize(start.device))
    return (lambda: graphed(start, a, b)), capture
