# %% [markdown]
# # 4. Fitting rotations: a batch of 3-D rotations from noisy point pairs
#
# A sensor sees points `p_k` that reappear, rotated and with noise, as `q_k ≈ R p_k`. We want
# `R`. Rotations are not vectors: a 3x3 matrix has 9 entries but a rotation only 3 degrees of
# freedom, and three angles have singularities. nlls optimizes an `nlls.SO3` directly: the
# solver computes a 3-vector step on the rotation's tangent space and applies it as
# `R ← R exp(δ)`, so the estimate is a rotation at every iteration.
#
# We solve **256 independent problems at once** (one batch), each from the identity, and compare
# with SciPy fitting the same rotation as an axis-angle vector, one problem at a time.
#
# Run it: `python tutorials/04_rotation_fit.py` (writes `tutorials/output/04_rotation_fit.png`).

# %%
from __future__ import annotations

import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import least_squares  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

import nlls  # noqa: E402

# %% [markdown]
# ## The data
# Random true rotations (uniform over all rotations, angles up to π), standard-normal points,
# and Gaussian noise on the rotated points. Every tensor has the batch first: `(B, ...)`.


# %%
def make_problems(batch_size: int, num_pairs: int, noise: float, seed: int = 0):
    """True rotations ``(B, 3, 3)``, points ``p`` and noisy rotated points ``q``, ``(B, N, 3)``."""
    generator = torch.Generator().manual_seed(seed)
    truth = nlls.SO3.rand(batch_size, generator, dtype=torch.float64)
    p = torch.randn(batch_size, num_pairs, 3, generator=generator, dtype=torch.float64)
    q = p @ truth.tensor.transpose(1, 2)  # R p for every point
    q = q + noise * torch.randn(q.shape, generator=generator, dtype=torch.float64)
    return truth, p, q


# %% [markdown]
# ## The cost function, with analytic Jacobians
# One cost function per point pair, `r = R p - q` (3 residuals). `rotate` appends its Jacobian
# w.r.t. the rotation's tangent (`-R hat(p)`) and w.r.t. the point to the list we hand it, so the
# cost function's `jacobians()` is one line. All `N` pair cost functions have the same type, so
# the solver stacks them and evaluates them as **one** call per iteration.
#
# (The same residual as `nlls.AutoDiffCostFunction((R,), lambda o, a: o[0].rotate(a[0].tensor) -
# a[1].tensor, 3, aux_vars=(p, q))` gives the same Jacobians by `torch.func`, a little slower.)


# %%
class RotatedPoint(nlls.CostFunction):
    """``r = R p - q`` for one pair of points ``p, q`` ``(B, 3)``."""

    def __init__(self, rotation, p, q, name=None):
        super().__init__(optim_vars=(rotation,), aux_vars=(p, q), name=name)
        self.rotation, self.p, self.q = rotation, p, q

    def dim(self):
        return 3

    def error(self):
        return self.rotation.rotate(self.p.tensor) - self.q.tensor

    def jacobians(self):
        jacobians = []  # rotate appends d/dR (B, 3, 3) and d/dp (B, 3, 3)
        rotated = self.rotation.rotate(self.p.tensor, jacobians=jacobians)
        return [jacobians[0]], rotated - self.q.tensor


def fit_nlls(p: torch.Tensor, q: torch.Tensor, max_iterations: int = 50):
    """Fit every problem of the batch at once, from the identity; returns the rotations and info."""
    batch_size, num_pairs, _ = p.shape
    rotation = nlls.SO3.identity(batch_size, dtype=p.dtype, name="R")
    objective = nlls.Objective()
    for k in range(num_pairs):
        objective.add(RotatedPoint(rotation, nlls.Variable(p[:, k], name=f"p{k}"),
                                   nlls.Variable(q[:, k], name=f"q{k}"), name=f"pair{k}"))
    optimizer = nlls.LevenbergMarquardt(objective, max_iterations=max_iterations)
    info = optimizer.optimize(track_err_history=True)
    return rotation, info


# %% [markdown]
# ## SciPy: an axis-angle vector per problem
# The classical way: parametrize `R = exp(ω)` by a 3-vector and call `least_squares` on each
# problem. It works well for these well-posed problems, one at a time.


# %%
def fit_scipy(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Axis-angle fits, one problem after another; returns ``(B, 3, 3)`` rotation matrices."""
    out = []
    for p_i, q_i in zip(p.numpy(), q.numpy()):
        def residual(omega):
            return (Rotation.from_rotvec(omega).apply(p_i) - q_i).ravel()
        solution = least_squares(residual, np.zeros(3), method="lm", xtol=1e-15, ftol=1e-15)
        out.append(Rotation.from_rotvec(solution.x).as_matrix())
    return torch.as_tensor(np.stack(out), dtype=p.dtype)


# %% [markdown]
# ## Run, compare, plot
# The angle between two rotations is the norm of `local`: `a.local(b)` is the axis-angle step
# from `a` to `b`.


# %%
def main(batch_size: int = 256, num_pairs: int = 20, noise: float = 0.01,
         output_dir: str = "tutorials/output", seed: int = 0) -> dict:
    truth, p, q = make_problems(batch_size, num_pairs, noise, seed)

    start = time.perf_counter()
    rotation, info = fit_nlls(p, q)
    nlls_seconds = time.perf_counter() - start

    start = time.perf_counter()
    scipy_rotation = nlls.SO3(fit_scipy(p, q), name="scipy")
    scipy_seconds = time.perf_counter() - start

    nlls_error = truth.local(rotation).norm(dim=1)  # radians, per problem
    scipy_error = truth.local(scipy_rotation).norm(dim=1)
    disagreement = scipy_rotation.local(rotation).norm(dim=1)
    result = {
        "batch_size": batch_size,
        "converged": int(info.converged.sum()),
        "iterations_max": int(info.iterations.max()),
        "max_angle_error_nlls": float(nlls_error.max()),
        "max_angle_error_scipy": float(scipy_error.max()),
        "max_angle_nlls_vs_scipy": float(disagreement.max()),
        "nlls_seconds": nlls_seconds,
        "scipy_seconds": scipy_seconds,
    }

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.loglog(scipy_error, nlls_error, ".", alpha=0.6)
    limits = [float(min(scipy_error.min(), nlls_error.min())), float(max(scipy_error.max(), nlls_error.max()))]
    left.plot(limits, limits, "k--", linewidth=0.8)
    left.set(xlabel="SciPy: angle to truth [rad]", ylabel="nlls: angle to truth [rad]",
             title=f"{batch_size} rotations: nlls and SciPy agree")
    history = info.err_history.clamp_min(1e-12)
    right.semilogy(history.T, color="tab:blue", alpha=0.1)
    right.semilogy(history.median(dim=0).values, color="black", label="median")
    right.set(xlabel="iteration", ylabel="0.5 Σ |R p - q|²", title="Levenberg-Marquardt, whole batch")
    right.legend()
    figure.tight_layout()
    os.makedirs(output_dir, exist_ok=True)
    result["figure"] = os.path.join(output_dir, "04_rotation_fit.png")
    figure.savefig(result["figure"], dpi=100)
    plt.close(figure)
    return result


# %%
if __name__ == "__main__":
    for key, value in main().items():
        print(f"{key:>26}: {value}")
