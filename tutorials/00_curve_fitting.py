# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 0: fitting many curves at once
#
# We fit the parabola $y = a x^2 + b$ to noisy samples, not once but for a whole **batch** of
# independent problems, each with its own true $(a, b)$, its own sample points and its own
# noise level. nlls solves them together: every tensor carries a leading batch dimension `B`,
# and one call to the optimizer runs all `B` problems side by side.
#
# Along the way we meet the five pieces every nlls program has:
#
# 1. **Variables**: named, batched tensors; the unknowns are `nlls.Vector`s;
# 2. a **cost function**: the residual $r(a, b) = a x^2 + b - y$ and its Jacobian;
# 3. the **objective**: the cost functions to minimize, $\tfrac12\sum_i \|r_i\|^2$ per problem;
# 4. an **optimizer**: here Gauss-Newton;
# 5. the **info** it returns: per problem, whether it converged, after how many iterations.
#
# The fit is linear in $(a, b)$, so the exact answer is also given by linear least squares;
# we use it to check nlls. Run this file as a script (`python tutorials/00_curve_fitting.py`)
# or open it as a notebook with jupytext.

# %%
from pathlib import Path
from typing import Optional, Union

import matplotlib

matplotlib.use("Agg")  # write PNG files; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import nlls  # noqa: E402

# %% [markdown]
# ## The data
#
# `B` problems of `N` points each, so `x` and `y` are `(B, N)` tensors and the true parameters
# `(B, 2)`. We work in float64 so the comparison with the closed form can be tight.


# %%
def make_data(batch_size: int, num_points: int, seed: int = 0):
    """Noisy samples of ``y = a x^2 + b`` for ``batch_size`` problems.

    Returns:
        ``x, y`` of shape ``(B, N)``, the true ``(a, b)`` of shape ``(B, 2)`` and the noise's
        standard deviation per problem, ``(B,)``.
    """
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64
    true_ab = torch.stack([
        torch.empty(batch_size, dtype=dtype).uniform_(-2.0, 2.0, generator=g),   # a
        torch.empty(batch_size, dtype=dtype).uniform_(-1.0, 1.0, generator=g),   # b
    ], dim=1)
    x = torch.empty(batch_size, num_points, dtype=dtype).uniform_(-2.0, 2.0, generator=g)
    noise_level = torch.empty(batch_size, 1, dtype=dtype).uniform_(0.05, 0.5, generator=g)
    y = true_ab[:, :1] * x ** 2 + true_ab[:, 1:] + noise_level * torch.randn(
        batch_size, num_points, dtype=dtype, generator=g)
    return x, y, true_ab, noise_level[:, 0]


# %% [markdown]
# ## Variables and a cost function with hand-written Jacobians
#
# The unknowns $(a, b)$ of all problems form one `nlls.Vector` of shape `(B, 2)`; the data are
# plain `nlls.Variable`s (the optimizer reads them but never changes them). Every variable has
# a name, by which the objective finds it later.
#
# A cost function turns variables into a residual of shape `(B, dim)`, here `dim = N`. Subclass
# `nlls.CostFunction`, register the variables with `super().__init__`, and define `dim()`,
# `error()` and `jacobians()`. The Jacobian of the residual with respect to $(a, b)$ has one
# row per residual and one column per unknown: $\partial r / \partial a = x^2$ and
# $\partial r / \partial b = 1$, stacked into `(B, N, 2)`.


# %%
class QuadFit(nlls.CostFunction):
    """Residual ``r = a x^2 + b - y`` with its analytic Jacobian."""

    def __init__(self, ab, x, y, cost_weight=None, name=None):
        super().__init__(optim_vars=(ab,), aux_vars=(x, y), cost_weight=cost_weight, name=name)
        self.ab, self.x, self.y = ab, x, y

    def dim(self):
        return self.x.shape[1]

    def error(self):
        a, b = self.ab.tensor[:, :1], self.ab.tensor[:, 1:]
        return a * self.x.tensor ** 2 + b - self.y.tensor               # (B, N)

    def jacobians(self):
        x2 = self.x.tensor ** 2
        return [torch.stack([x2, torch.ones_like(x2)], dim=-1)], self.error()   # [(B, N, 2)], (B, N)


# %% [markdown]
# ## Objective, optimizer, info
#
# The objective collects cost functions (one here) and registers their variables by name. Its
# value per problem is $\tfrac12\|r\|^2$ (`objective.error_metric()`, shape `(B,)`).
#
# `nlls.GaussNewton` linearizes the residual, $r(p + \delta) \approx r + J\delta$, and solves the
# normal equations $J^\top J\,\delta = -J^\top r$ for every problem of the batch at once. On a
# residual that is linear in the unknowns, like ours, the first step lands on the minimum; the
# second finds nothing left to gain and the problem is marked converged. `optimize()` writes
# the solution into the `Vector` and returns an `info` with per-problem tensors: `converged`,
# `iterations`, `final_error`, and a `message` in words.


# %%
def fit_analytic(x, y, verbose=False):
    """Fit every problem with QuadFit and Gauss-Newton; returns the ``(B, 2)`` solution and info."""
    ab = nlls.Vector(tensor=torch.zeros(x.shape[0], 2, dtype=x.dtype), name="ab")
    objective = nlls.Objective()
    objective.add(QuadFit(ab, nlls.Variable(x, name="x"), nlls.Variable(y, name="y"), name="quad_fit"))
    optimizer = nlls.GaussNewton(objective, max_iterations=10)
    info = optimizer.optimize(verbose=verbose)
    return ab.tensor, info


# %% [markdown]
# ## The same fit without writing Jacobians
#
# `nlls.AutoDiffCostFunction` takes only the error function, `err_fn(optim_vars, aux_vars)`,
# and computes the Jacobians with `torch.func`, batched (forward mode here: 2 unknowns, `N`
# residuals). The error function receives the variables in the order they were given and
# returns `(B, dim)`.


# %%
def quad_error(optim_vars, aux_vars):
    (ab,), (x, y) = optim_vars, aux_vars
    return ab.tensor[:, :1] * x.tensor ** 2 + ab.tensor[:, 1:] - y.tensor


def fit_autodiff(x, y):
    ab = nlls.Vector(tensor=torch.zeros(x.shape[0], 2, dtype=x.dtype), name="ab")
    cost = nlls.AutoDiffCostFunction(
        (ab,), quad_error, dim=x.shape[1],
        aux_vars=(nlls.Variable(x, name="x"), nlls.Variable(y, name="y")), name="quad_fit")
    objective = nlls.Objective()
    objective.add(cost)
    info = nlls.GaussNewton(objective, max_iterations=10).optimize()
    return ab.tensor, info


# %% [markdown]
# ## The check: linear least squares
#
# With the design matrix $M = [x^2, 1]$ the fit is $\min \|M (a, b)^\top - y\|^2$, which
# `torch.linalg.lstsq` solves directly, batched.


# %%
def fit_closed_form(x, y):
    design = torch.stack([x ** 2, torch.ones_like(x)], dim=-1)      # (B, N, 2)
    return torch.linalg.lstsq(design, y[..., None]).solution[..., 0]  # (B, 2)


# %% [markdown]
# ## A picture
#
# The first few problems: samples, the true parabola and the fitted one.


# %%
def plot_fits(x, y, true_ab, fitted_ab, noise_level, path: Path, max_panels: int = 6) -> Path:
    panels = min(max_panels, x.shape[0])
    cols = min(3, panels)
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    grid = torch.linspace(-2.0, 2.0, 200, dtype=x.dtype)
    for i, ax in enumerate(axes.flat):
        if i >= panels:
            ax.axis("off")
            continue
        (a, b), (fa, fb) = true_ab[i].tolist(), fitted_ab[i].tolist()
        ax.plot(x[i], y[i], ".", color="0.6", markersize=4, label="data")
        ax.plot(grid, a * grid ** 2 + b, "k--", linewidth=1, label=f"true  a={a:.2f} b={b:.2f}")
        ax.plot(grid, fa * grid ** 2 + fb, "C3", linewidth=1.5, label=f"fit   a={fa:.2f} b={fb:.2f}")
        ax.set_title(f"problem {i} (noise sigma {noise_level[i]:.2f})")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("nlls: batched quadratic fits (Gauss-Newton)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# %% [markdown]
# ## Putting it together


# %%
def _default_output_dir() -> Path:
    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    return here / "output"


def main(batch_size: int = 8, num_points: int = 100,
         output_dir: Optional[Union[str, Path]] = None, verbose: bool = True) -> dict:
    """Fit ``batch_size`` parabolas three ways, compare them and save a plot.

    Returns:
        dict with the ``(B, 2)`` tensors ``truth``, ``analytic``, ``autodiff``, ``closed_form``,
        the two infos and the path of the plot.
    """
    output_dir = Path(output_dir) if output_dir is not None else _default_output_dir()
    x, y, true_ab, noise_level = make_data(batch_size, num_points)
    if verbose:
        print(f"Fitting y = a x^2 + b: {batch_size} problems of {num_points} points each\n")
        print("Gauss-Newton with the analytic QuadFit cost function:")
    analytic, info = fit_analytic(x, y, verbose=verbose)
    autodiff, autodiff_info = fit_autodiff(x, y)
    closed_form = fit_closed_form(x, y)
    plot = plot_fits(x, y, true_ab, analytic, noise_level, output_dir / "00_curve_fitting.png")
    if verbose:
        print(f"\niterations per problem: {info.iterations.tolist()}, "
              f"converged: {int(info.converged.sum())}/{batch_size}")
        print(f"\n{'problem':>7} {'noise':>6} | {'true a':>8} {'true b':>8} | "
              f"{'fitted a':>9} {'fitted b':>9}")
        for i in range(min(batch_size, 10)):
            (a, b), (fa, fb) = true_ab[i].tolist(), analytic[i].tolist()
            print(f"{i:>7} {noise_level[i]:6.3f} | {a:8.4f} {b:8.4f} | {fa:9.4f} {fb:9.4f}")
        if batch_size > 10:
            print(f"    ... ({batch_size - 10} more)")
        print("\nlargest difference to linear least squares (torch.linalg.lstsq):")
        print(f"  analytic CostFunction:  {(analytic - closed_form).abs().max().item():.2e}")
        print(f"  AutoDiffCostFunction:   {(autodiff - closed_form).abs().max().item():.2e}")
        print(f"\nplot saved to {plot}")
    return {"truth": true_ab, "analytic": analytic, "autodiff": autodiff,
            "closed_form": closed_form, "info": info, "autodiff_info": autodiff_info,
            "plot": plot}


if __name__ == "__main__":
    main()
