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
# finite differences of the whole solve (all perturbed problems solved as one batch),
#
# $$\frac{\partial b}{\partial y_i} \approx \frac{b(y + h e_i) - b(y - h e_i)}{2h},
#   \qquad h = 10^{-5}.$$


# %%
def decay_curve(abc: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """$a e^{-b x} + c$ for ``abc`` of shape ``(..., 3)`` and ``x`` of shape ``(..., N)``."""
    return abc[..., :1] * torch.exp(-abc[..., 1:2] * x) + abc[..., 2:]


def exp_residual(optim_vars, aux_vars):
    abc, = optim_vars
    x, y = aux_vars
    return decay_curve(abc.tensor, x.tensor) - y.tensor


# %% [markdown]
# ## A reference that can be trusted
#
# The difference quotient divides the error of each solution by $2h$: two solves that stop
# $10^{-10}$ short of their minimum, by different amounts, move the reference by up to
# $10^{-10} / (2 \cdot 10^{-5}) = 5 \cdot 10^{-6}$. A stopping rule on the error cannot do better
# than that: at a minimum the error is flat, a parameter off by $\delta$ raises it by only
# $O(\delta^2)$, so even the tightest relative change the optimizers accept,
# $100 \epsilon \approx 2 \cdot 10^{-14}$, stops with $b$ about $4 \cdot 10^{-10}$ short here.
# Whether a perturbed problem takes one iteration more than its partner then depends on the last
# bits of rounding, and the reference with it.
#
# So the exponential fits run a fixed number of Gauss-Newton iterations
# (`rel_err_tolerance=0.0` switches the error tests off; the layer then reports them as having
# reached `max_iterations`, not as converged), and we check convergence on the parameters
# instead: the step one more Gauss-Newton iteration would take must be below $10^{-14}$ of them
# (rounding leaves a few $10^{-16}$). What remains in the reference is the difference
# quotient's own error, truncation $O(h^2)$ and rounding $O(\epsilon / h)$: a few $10^{-11}$
# relative.


# %%
# Gauss-Newton gains 1-2 digits per iteration on these fits and reaches rounding in about 10
ITERATIONS = 40
STEP_TOLERANCE = 1e-14


def make_exp_layer(num_points: int, iterations: int = ITERATIONS) -> nlls.OptimizationLayer:
    abc = nlls.Vector(tensor=torch.zeros(1, 3, dtype=DTYPE), name="abc")
    x = nlls.Variable(torch.zeros(1, num_points, dtype=DTYPE), name="x")
    y = nlls.Variable(torch.zeros(1, num_points, dtype=DTYPE), name="y")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction((abc,), exp_residual, num_points, aux_vars=(x, y),
                                            name="decay"))
    # a fixed number of iterations: no error test stops a solve short of rounding level
    optimizer = nlls.GaussNewton(objective, max_iterations=iterations, abs_err_tolerance=0.0,
                                 rel_err_tolerance=0.0)
    return nlls.OptimizationLayer(optimizer)


def next_step(x: torch.Tensor, y: torch.Tensor, abc: torch.Tensor) -> torch.Tensor:
    """The step one more Gauss-Newton iteration would take from ``abc``, ``(B, 3)``: the least-
    squares solution of ``J delta = -r``, zero up to rounding at a minimum."""
    jacobian = torch.func.vmap(torch.func.jacrev(decay_curve))(abc, x)  # (B, N, 3)
    residual = decay_curve(abc, x) - y
    return torch.linalg.lstsq(jacobian, -residual[..., None]).solution[..., 0]


def largest_relative_step(x: torch.Tensor, y: torch.Tensor, abc: torch.Tensor) -> float:
    """``|next step| / max(|abc|, 1)``, largest over the batch; raises above STEP_TOLERANCE."""
    abc = abc.detach()
    largest = float((next_step(x, y, abc).abs() / abc.abs().clamp(min=1.0)).max())
    if not largest <= STEP_TOLERANCE:  # NaN fails too
        raise RuntimeError(f"the exponential fit did not converge: one more Gauss-Newton step "
                           f"would move the parameters by {largest:.1e} of their size "
                           f"(> {STEP_TOLERANCE:.0e}); raise the number of iterations")
    return largest


def decay_rate_sensitivity(x: torch.Tensor, y: torch.Tensor, step: float = 1e-5,
                           iterations: int = ITERATIONS):
    """``d b / d y_i`` by the implicit backward (both Hessians) and by finite differences, and
    ``largest_step``: the largest relative next Gauss-Newton step of all the solves."""
    layer = make_exp_layer(x.shape[1], iterations)
    start = torch.tensor([[1.0, 1.0, 0.0]], dtype=DTYPE)
    out, steps = {}, []
    for hessian in ("exact", "gauss_newton"):
        yg = y.clone().requires_grad_()
        solution, _ = layer({"x": x, "y": yg, "abc": start}, hessian=hessian)
        out["abc"] = solution["abc"].detach()
        steps.append(largest_relative_step(x, y, out["abc"]))
        out[hessian], = torch.autograd.grad(solution["abc"][0, 1], yg)
    n = x.shape[1]
    shifts = step * torch.eye(n, dtype=DTYPE)
    xs, ys = x.expand(2 * n, n), y + torch.cat([shifts, -shifts])
    with torch.no_grad():
        solution, _ = layer({"x": xs, "y": ys, "abc": start.expand(2 * n, 3)})
    steps.append(largest_relative_step(xs, ys, solution["abc"]))
    b = solution["abc"][:, 1]
    out["finite_differences"] = ((b[:n] - b[n:]) / (2 * step))[None]
    out["largest_step"] = max(steps)
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
        sensitivities and ``largest_step``, the convergence of its solves), ``exact_error`` and
        ``gauss_newton_error`` (relative to finite differences) and ``plots``.
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
        print(f"decay rate b = {float(decay['abc'][0, 1]):.4f} (solves converged: largest next "
              f"step {decay['largest_step']:.0e} of the parameters)")
        print(f"d b / d y against finite differences (relative): exact {relative['exact']:.1e}, "
              f"gauss_newton {relative['gauss_newton']:.1e}")
        print("plots saved to " + ", ".join(str(p) for p in plots))
    return {"slope": float(mc[0, 0]), "intercept": float(mc[0, 1]), "dm_dx": dm_dx[0],
            "dm_dy": dm_dy[0], "closed_form_error": errors, "decay": decay,
            "exact_error": relative["exact"], "gauss_newton_error": relative["gauss_newton"],
            "plots": plots}


if __name__ == "__main__":
    main()
