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
# # Tutorial 1: how a fit moves with its data
#
# A least-squares fit is a function of its data: move one data point and the fitted parameters
# move. `nlls.OptimizationLayer` makes the solve a differentiable PyTorch operation, so one
# backward pass gives the **sensitivity** of a fitted parameter to every data point,
# $\partial m / \partial x_i$ and $\partial m / \partial y_i$.
#
# We fit a line $y = m x + c$, draw the two derivatives of the slope $m$ as an arrow on each
# data point (moving the point along its arrow increases the slope fastest) and check them
# against the closed form of the least-squares slope. Then we do the same for a curve,
# $y = a e^{-b x} + c$, where the residuals do not vanish at the fit, and see why the layer
# offers an exact Hessian beside Gauss-Newton for its implicit backward.

# %%
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import matplotlib

matplotlib.use("Agg")  # write PNG files; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import nlls  # noqa: E402

DTYPE = torch.float64
MODES = {  # the layer's backward modes, with their arguments
    "unroll": {"backward_mode": "unroll"},
    "truncated": {"backward_mode": "truncated", "backward_num_iterations": 1},
    "implicit": {"backward_mode": "implicit"},
}

# %% [markdown]
# ## A line fit as a layer
#
# The objective is the usual one: a `Vector` of unknowns `(m, c)`, the data as aux variables
# `x` and `y`, one residual per point. The tensors given to the objective now only fix shapes:
# the layer receives the data on every call, by name, like any PyTorch module receives its input.


# %%
def line_residual(optim_vars, aux_vars):
    mc, = optim_vars
    x, y = aux_vars
    return mc.tensor[:, :1] * x.tensor + mc.tensor[:, 1:] - y.tensor


def make_line_layer(num_points: int) -> nlls.OptimizationLayer:
    mc = nlls.Vector(tensor=torch.zeros(1, 2, dtype=DTYPE), name="mc")
    x = nlls.Variable(torch.zeros(1, num_points, dtype=DTYPE), name="x")
    y = nlls.Variable(torch.zeros(1, num_points, dtype=DTYPE), name="y")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction((mc,), line_residual, num_points, aux_vars=(x, y),
                                            name="line"))
    return nlls.OptimizationLayer(nlls.GaussNewton(objective, max_iterations=10))


# %% [markdown]
# ## Sensitivities by backpropagation
#
# Data tensors that require grad go in, the solution comes out, and `torch.autograd.grad` of
# the slope gives one derivative per data point. The three backward modes compute it
# differently: `unroll` differentiates every Gauss-Newton iteration, `truncated` only the last
# one, `implicit` the optimality condition $J^\top r = 0$ at the solution. For a line the fit is
# linear in $(m, c)$ and all three are exact.


# %%
def slope_sensitivity(layer: nlls.OptimizationLayer, x: torch.Tensor, y: torch.Tensor,
                      mode: str):
    """The fitted ``(m, c)`` and ``d m / d x``, ``d m / d y`` (each ``(1, N)``)."""
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    solution, info = layer({"x": x, "y": y}, **MODES[mode])
    if not bool(info.converged.all()):
        raise RuntimeError(f"the line fit did not converge: {info.message}")
    mc = solution["mc"]
    dm_dx, dm_dy = torch.autograd.grad(mc[:, 0].sum(), (x, y))
    return mc.detach(), dm_dx, dm_dy


# %% [markdown]
# ## The closed form
#
# With $\bar x, \bar y$ the means and $S_{xx} = \sum_j (x_j - \bar x)^2$, the least-squares slope
# is $m = \sum_j (x_j - \bar x)(y_j - \bar y) / S_{xx}$. Differentiating,
#
# $$\frac{\partial m}{\partial y_i} = \frac{x_i - \bar x}{S_{xx}}, \qquad
#   \frac{\partial m}{\partial x_i} = \frac{(y_i - \bar y) - 2 m (x_i - \bar x)}{S_{xx}}.$$
#
# Points far from the centre pull hardest on the slope; moving $x_i$ matters as much as the
# point's vertical distance from the line through the centroid.


# %%
def closed_form_sensitivity(x: torch.Tensor, y: torch.Tensor):
    dx, dy = x - x.mean(), y - y.mean()
    sxx = (dx * dx).sum()
    m = (dx * dy).sum() / sxx
    return m, (dy - 2 * m * dx) / sxx, dx / sxx


# %% [markdown]
# ## A curve whose residuals do not vanish
#
# For $y = a e^{-b x} + c$ fitted to noisy data, the implicit backward needs the Hessian of
# the objective at the solution. Gauss-Newton's $J^\top J$ drops $\sum_i r_i \nabla^2 r_i$,
# harmless when the residuals $r_i$ vanish (a curve through the data) but not here;
# `hessian="exact"` adds those terms with Hessian-vector products. We compare both with central
# finite differences of the whole solve (all perturbed problems solved as one batch).


# %%
def exp_residual(optim_vars, aux_vars):
    abc, = optim_vars
    x, y = aux_vars
    a, b, c = abc.tensor[:, :1], abc.tensor[:, 1:2], abc.tensor[:, 2:]
    return a * torch.exp(-b * x.tensor) + c - y.tensor


def make_exp_layer(num_points: int) -> nlls.OptimizationLayer:
    abc = nlls.Vector(tensor=torch.zeros(1, 3, dtype=DTYPE), name="abc")
    x = nlls.Variable(torch.zeros(1, num_points, dtype=DTYPE), name="x")
    y = nlls.Variable(torch.zeros(1, num_points, dtype=DTYPE), name="y")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction((abc,), exp_residual, num_points, aux_vars=(x, y),
                                            name="decay"))
    # converge as far as float64 allows: stop once a step changes the error by < 1e-14 of it
    optimizer = nlls.GaussNewton(objective, max_iterations=50, abs_err_tolerance=0.0,
                                 rel_err_tolerance=1e-14)
    return nlls.OptimizationLayer(optimizer)


def decay_rate_sensitivity(x: torch.Tensor, y: torch.Tensor, step: float = 1e-5):
    """``d b / d y_i`` by the implicit backward (both Hessians) and by finite differences."""
    layer = make_exp_layer(x.shape[1])
    start = torch.tensor([[1.0, 1.0, 0.0]], dtype=DTYPE)
    out = {}
    for hessian in ("exact", "gauss_newton"):
        yg = y.clone().requires_grad_()
        solution, info = layer({"x": x, "y": yg, "abc": start}, hessian=hessian)
        if not bool(info.converged.all()):
            raise RuntimeError(f"the exponential fit did not converge: {info.message}")
        out["abc"] = solution["abc"].detach()
        out[hessian], = torch.autograd.grad(solution["abc"][0, 1], yg)
    n = x.shape[1]
    shifts = step * torch.eye(n, dtype=DTYPE)
    with torch.no_grad():
        solution, info = layer({"x": x.expand(2 * n, n), "y": y + torch.cat([shifts, -shifts]),
                                "abc": start.expand(2 * n, 3)})
    b = solution["abc"][:, 1]
    out["finite_differences"] = ((b[:n] - b[n:]) / (2 * step))[None]
    return out


# %% [markdown]
# ## Plots


# %%
def plot_line(x, y, mc, dm_dx, dm_dy, path: Path) -> Path:
    x, y, dm_dx, dm_dy = (t[0].detach() for t in (x, y, dm_dx, dm_dy))
    fig, ax = plt.subplots(figsize=(6, 4.5))
    grid = torch.linspace(float(x.min()) - 0.5, float(x.max()) + 0.5, 2, dtype=DTYPE)
    ax.plot(grid, mc[0, 0] * grid + mc[0, 1], color="tab:blue", label=f"fit: m = {mc[0, 0]:.3f}")
    ax.scatter(x, y, color="black", zorder=3, label="data")
    ax.quiver(x, y, dm_dx, dm_dy, color="tab:red", angles="xy", scale_units="xy",
              scale=float(torch.stack([dm_dx, dm_dy]).abs().max()) / 0.6, width=0.006,
              label=r"$(\partial m/\partial x_i,\ \partial m/\partial y_i)$")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("how the slope moves with each data point")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_decay(x, y, sensitivity, path: Path) -> Path:
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(6, 8), sharex=True)
    a, b, c = sensitivity["abc"][0].tolist()
    top.scatter(x[0], y[0], color="black", s=12, label="data")
    top.plot(x[0], a * torch.exp(-b * x[0]) + c, color="tab:blue", label=f"fit: b = {b:.3f}")
    top.set_ylabel("y")
    top.legend()
    reference = sensitivity["finite_differences"][0]
    middle.plot(x[0], reference, "k.", label="finite differences")
    for hessian, color in (("exact", "tab:green"), ("gauss_newton", "tab:orange")):
        middle.plot(x[0], sensitivity[hessian][0], color=color,
                    label=f"implicit, hessian={hessian!r}")
        bottom.semilogy(x[0], (sensitivity[hessian][0] - reference).abs(), color=color,
                        label=f"hessian={hessian!r}")
    middle.set_ylabel(r"$\partial b / \partial y_i$")
    middle.legend()
    bottom.set_ylabel("|implicit - finite differences|")
    bottom.set_xlabel("x")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# %% [markdown]
# ## Putting it together


# %%
def make_data(num_points: int, seed: int = 0):
    """Noisy samples of a line and of an exponential decay, ``(1, N)`` each."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.sort(4 * torch.rand(1, num_points, generator=generator, dtype=DTYPE)).values
    y = 0.8 * x - 0.5 + 0.4 * torch.randn(1, num_points, generator=generator, dtype=DTYPE)
    xe = torch.linspace(0, 4, 2 * num_points, dtype=DTYPE)[None]
    ye = 1.5 * torch.exp(-0.9 * xe) + 0.2 + 0.03 * torch.randn(xe.shape, generator=generator,
                                                               dtype=DTYPE)
    return x, y, xe, ye


def _default_output_dir() -> Path:
    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    return here / "output"


def main(num_points: int = 12, x: Optional[Sequence[float]] = None,
         y: Optional[Sequence[float]] = None, seed: int = 0,
         output_dir: Optional[Union[str, Path]] = None, verbose: bool = True) -> Dict:
    """Sensitivities of a line fit (checked against the closed form, in every backward mode)
    and of an exponential fit (checked against finite differences).

    Args:
        num_points: data points of the line (the exponential gets twice as many).
        x, y: the line's data; random when omitted.

    Returns:
        dict with ``slope``, ``dm_dx``, ``dm_dy`` (implicit mode, ``(N,)``), ``closed_form_error``
        (mode -> largest difference to the closed form), ``decay`` (the exponential's
        sensitivities), ``exact_error`` and ``gauss_newton_error`` (relative to finite
        differences) and ``plots``.
    """
    output_dir = Path(output_dir) if output_dir is not None else _default_output_dir()
    output_dir.mkdir(parents=True, exist_ok=True)
    line_x, line_y, xe, ye = make_data(num_points, seed)
    if x is not None:
        line_x, line_y = (torch.tensor([list(v)], dtype=DTYPE) for v in (x, y))
    layer = make_line_layer(line_x.shape[1])
    m, dm_dx_true, dm_dy_true = closed_form_sensitivity(line_x[0], line_y[0])
    errors, results = {}, {}
    for mode in MODES:
        mc, dm_dx, dm_dy = slope_sensitivity(layer, line_x, line_y, mode)
        results[mode] = (mc, dm_dx, dm_dy)
        errors[mode] = max(float((mc[0, 0] - m).abs()), float((dm_dx[0] - dm_dx_true).abs().max()),
                           float((dm_dy[0] - dm_dy_true).abs().max()))
    mc, dm_dx, dm_dy = results["implicit"]
    decay = decay_rate_sensitivity(xe, ye)
    reference = decay["finite_differences"]
    relative = {h: float((decay[h] - reference).norm() / reference.norm())
                for h in ("exact", "gauss_newton")}
    plots = [plot_line(line_x, line_y, mc, dm_dx, dm_dy, output_dir / "01_sensitivity_line.png"),
             plot_decay(xe, ye, decay, output_dir / "01_sensitivity_decay.png")]
    if verbose:
        print(f"line fit: m = {float(mc[0, 0]):.6f}, c = {float(mc[0, 1]):.6f}")
        print(f"{'point':>5} {'x':>8} {'y':>8} {'dm/dx':>9} {'dm/dy':>9}")
        for i in range(line_x.shape[1]):
            print(f"{i:>5} {float(line_x[0, i]):8.3f} {float(line_y[0, i]):8.3f} "
                  f"{float(dm_dx[0, i]):9.4f} {float(dm_dy[0, i]):9.4f}")
        for mode, error in errors.items():
            print(f"largest difference to the closed form, {mode:>9}: {error:.2e}")
        print(f"decay rate b = {float(decay['abc'][0, 1]):.4f}; d b / d y against finite "
              f"differences (relative): exact {relative['exact']:.1e}, "
              f"gauss_newton {relative['gauss_newton']:.1e}")
        print("plots saved to " + ", ".join(str(p) for p in plots))
    return {"slope": float(mc[0, 0]), "intercept": float(mc[0, 1]), "dm_dx": dm_dx[0],
            "dm_dy": dm_dy[0], "closed_form_error": errors, "decay": decay,
            "exact_error": relative["exact"], "gauss_newton_error": relative["gauss_newton"],
            "plots": plots}


if __name__ == "__main__":
    main()
