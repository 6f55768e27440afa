"""The batched small problems: two curve fits and a rotation fit, ``B`` independent problems.

* ``quadratic``:   y = a x^2 + b,         Gauss-Newton,        15 iterations, float32, from (0, 0);
* ``exponential``: y = a exp(-b x) + c,   Levenberg-Marquardt, 20 iterations, float64, from (1, 1, 0);
* ``rotation``:    q_k = R p_k + noise for 20 point pairs (tutorial 04's data), Levenberg-Marquardt,
  20 iterations, float64, from the identity; the step is applied as ``R exp(delta)``.

Each gives its data, its residual and its analytic Jacobian; the curve models are written once for
torch batches and for NumPy single problems (SciPy). ``bench_curve_fit.py``,
``bench_optimistix.py``, ``bench_check_every.py`` and ``bench_layer.py`` use them.
"""
from __future__ import annotations

import numpy as np
import torch

import nlls


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class CurveProblem:
    """A curve model fitted to ``y``: residual ``r = model(p, x) - y``.

    ``model`` and ``columns`` are written once for both array modules ``xp`` (torch for
    batches ``p (B, dof)``, ``x (B, N)``; numpy for SciPy's single problems ``p (dof,)``,
    ``x (N,)``): ``p[..., k:k + 1]`` is a column in the first case, a scalar-like in the second.
    """

    name, dof, optimizer, iterations, dtype = "", 0, "", 0, torch.float64

    def residual(self, p, x, y, xp=torch):
        """``(B, N)`` residual (``(N,)`` with ``xp=numpy``)."""
        return self.model(p, x, xp) - y

    def jacobian(self, p, x, xp=torch):
        """``(B, N, dof)`` Jacobian of the residual (``(N, dof)`` with ``xp=numpy``)."""
        columns = self.columns(p, x, xp)
        return torch.stack(columns, dim=-1) if xp is torch else np.stack(columns, axis=-1)


class Quadratic(CurveProblem):
    name, dof, optimizer, iterations, dtype = "quadratic", 2, "gauss_newton", 15, torch.float32

    def model(self, p, x, xp):
        return p[..., 0:1] * x * x + p[..., 1:2]

    def columns(self, p, x, xp):
        return [x * x, xp.ones_like(x)]

    def data(self, batch, num_points, generator):
        """``x``, the true parameters, the start and the noise, in float64."""
        x = torch.linspace(-2.0, 2.0, num_points, dtype=torch.float64).expand(batch, -1)
        truth = torch.randn(batch, 2, generator=generator, dtype=torch.float64)
        noise = 0.05 * torch.randn(batch, num_points, generator=generator, dtype=torch.float64)
        return x, truth, torch.zeros(batch, 2, dtype=torch.float64), noise


class Exponential(CurveProblem):
    name, dof, optimizer, iterations, dtype = "exponential", 3, "levenberg_marquardt", 20, torch.float64

    def model(self, p, x, xp):
        return p[..., 0:1] * xp.exp(-p[..., 1:2] * x) + p[..., 2:3]

    def columns(self, p, x, xp):
        decay = xp.exp(-p[..., 1:2] * x)
        return [decay, -p[..., 0:1] * x * decay, xp.ones_like(x)]

    def data(self, batch, num_points, generator):
        x = torch.linspace(0.0, 4.0, num_points, dtype=torch.float64).expand(batch, -1)
        truth = torch.stack([
            1.0 + torch.rand(batch, generator=generator, dtype=torch.float64),
            0.5 + torch.rand(batch, generator=generator, dtype=torch.float64),
            0.5 * torch.randn(batch, generator=generator, dtype=torch.float64),
        ], dim=1)
        noise = 0.02 * torch.randn(batch, num_points, generator=generator, dtype=torch.float64)
        start = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64).expand(batch, -1)
        return x, truth, start, noise


def hat(w: torch.Tensor) -> torch.Tensor:
    """``(..., 3, 3)`` skew matrices of ``w (..., 3)``."""
    x, y, z = w.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*w.shape, 3)


class Rotation:
    """``r_k = R p_k - q_k`` for ``N`` point pairs, ``R`` moved on the right: ``R <- R exp(d)``."""

    name, dof, optimizer, iterations, dtype = "rotation", 3, "levenberg_marquardt", 20, torch.float64
    num_pairs, noise = 20, 0.01

    @staticmethod
    def residual(R, p, q):
        """``(B, 3N)``: the rotated points minus their partners."""
        return (p @ R.transpose(1, 2) - q).reshape(p.shape[0], -1)

    @staticmethod
    def jacobian(R, p):
        """``(B, 3N, 3)``: ``d(R exp(d) p)/dd = -R hat(p)`` at ``d = 0``."""
        return -(R[:, None] @ hat(p)).reshape(p.shape[0], -1, 3)

    def data(self, batch, device, seed=0):
        """Points ``p``, noisy ``q`` ``(B, N, 3)``, the true rotations (uniform, angles up to
        pi) and the start (identity)."""
        generator = torch.Generator().manual_seed(seed)
        truth = nlls.SO3.rand(batch, generator, dtype=torch.float64).tensor
        p = torch.randn(batch, self.num_pairs, 3, generator=generator, dtype=torch.float64)
        q = p @ truth.transpose(1, 2)
        q = q + self.noise * torch.randn(q.shape, generator=generator, dtype=torch.float64)
        identity = torch.eye(3, dtype=torch.float64).expand(batch, 3, 3).contiguous()
        cast = lambda t: t.to(device=device, dtype=self.dtype).contiguous()  # noqa: E731
        return cast(p), cast(q), cast(truth), cast(identity)


QUADRATIC, EXPONENTIAL, ROTATION = Quadratic(), Exponential(), Rotation()
CURVE_PROBLEMS = {p.name: p for p in (QUADRATIC, EXPONENTIAL)}
PROBLEMS = {**CURVE_PROBLEMS, "rotation": ROTATION}


def make_data(problem: CurveProblem, batch: int, num_points: int, device, seed: int = 0):
    """Curve fits: ``x, y (B, N)``, the true and the starting parameters ``(B, dof)``, on
    ``device``."""
    generator = torch.Generator().manual_seed(seed)
    x, truth, start, noise = problem.data(batch, num_points, generator)
    y = problem.residual(truth, x, torch.zeros_like(x)) + noise
    cast = lambda t: t.to(device=device, dtype=problem.dtype).contiguous()  # noqa: E731
    return cast(x), cast(y), cast(truth), cast(start)


def problem_data(problem, batch: int, num_points: int, device, seed: int = 0):
    """``a, b, truth, start``: ``x, y`` of a curve fit or ``p, q`` of the rotation fit."""
    if problem is ROTATION:
        return ROTATION.data(batch, device, seed=seed)
    return make_data(problem, batch, num_points, device, seed=seed)


def angle_between(Ra: torch.Tensor, Rb: torch.Tensor) -> torch.Tensor:
    """``(B,)`` angle of ``Ra^T Rb`` in radians."""
    return nlls.SO3(Ra).between(nlls.SO3(Rb)).log_map().norm(dim=-1)


def param_diff(problem, reference: torch.Tensor, solution: torch.Tensor) -> torch.Tensor:
    """``(B,)`` distance of two solutions: the parameters' largest absolute difference, or the
    angle between the rotations (rad)."""
    if problem is ROTATION:
        return angle_between(reference, solution.to(reference.dtype))
    return (solution.to(reference.dtype) - reference).abs().amax(-1)


def tolerance(dtype: torch.dtype) -> float:
    """Two solutions farther apart than this differ (``elements_differing``)."""
    return 1e-4 if dtype == torch.float32 else 1e-7
