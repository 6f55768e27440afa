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
# # Tutorial 3: a function known only through an equation
#
# Sometimes a quantity is defined implicitly: $y(x)$ is whatever solves $F(x, y) = 0$. The unit
# circle is the simplest case, $F(x, y) = x^2 + y^2 - 1$; its upper half is the function
# $y(x) = \sqrt{1 - x^2}$, but pretend we only know $F$.
#
# Solving $F(x, y) = 0$ for $y$ is a least-squares problem with one residual, $r(y) = F(x, y)$,
# whose minimum is zero. As an `nlls.OptimizationLayer` it becomes a differentiable function
# $x \mapsto y(x)$ usable inside any PyTorch model. Its derivative comes from the **implicit
# function theorem**: differentiating $F(x, y(x)) = 0$ gives
#
# $$\frac{dy}{dx} = -\frac{\partial F / \partial x}{\partial F / \partial y} = -\frac{x}{y},$$
#
# which is what the layer's `implicit` backward computes, without differentiating the
# iterations of the solver. Its backward is itself differentiable, so second derivatives work
# too: $\frac{d^2 y}{dx^2} = -\frac{1}{y^3}$ on the circle.
#
# Which branch? The solver finds the root nearest its start: we start at $y = 1$, the upper
# half. Since the residual vanishes at the solution, the default Gauss-Newton Hessian of the
# implicit backward is exact here, for first and second derivatives alike.

# %%
from pathlib import Path
from typing import Dict, Optional, Union

import matplotlib

matplotlib.use("Agg")  # write PNG files; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import nlls  # noqa: E402

DTYPE = torch.float64


# %% [markdown]
# ## The layer
#
# One optim variable `y`, one aux variable `x`, one residual. Every batch element is one value
# of $x$: a whole curve is one batched solve.


# %%
def circle(optim_vars, aux_vars):
    y, = optim_vars
    x, = aux_vars
    return x.tensor ** 2 + y.tensor ** 2 - 1.0


def make_circle_layer() -> nlls.OptimizationLayer:
    y = nlls.Vector(tensor=torch.ones(1, 1, dtype=DTYPE), name="y")
    x = nlls.Variable(torch.zeros(1, 1, dtype=DTYPE), name="x")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction((y,), circle, 1, aux_vars=(x,), name="circle"))
    # stop once 0.5 F^2 <= 1e-30, i.e. |F| <= 1.4e-15: y to machine precision
    optimizer = nlls.GaussNewton(objective, max_iterations=30, abs_err_tolerance=1e-30,
                                 rel_err_tolerance=0.0)
    return nlls.OptimizationLayer(optimizer)


def implicit_y(layer: nlls.OptimizationLayer, x: torch.Tensor) -> torch.Tensor:
    """``y(x)`` on the upper half circle, differentiable; ``x`` of shape ``(B, 1)``."""
    solution, info = layer({"x": x, "y": torch.ones_like(x)}, backward_mode="implicit")
    if not bool(info.converged.all()):
        raise RuntimeError(f"F(x, y) = 0 was not solved: {info.message}")
    return solution["y"]


# %% [markdown]
# ## Derivatives, checked
#
# `torch.autograd.gradcheck` compares the layer's backward with finite differences of the
# whole solve, and `gradgradcheck` does the same for the backward of the backward. For the
# curve we compute $dy/dx$ with `create_graph=True` and differentiate once more.


# %%
def derivatives(layer, x: torch.Tensor):
    x = x.clone().requires_grad_()
    y = implicit_y(layer, x)
    dy_dx, = torch.autograd.grad(y.sum(), x, create_graph=True)
    d2y_dx2, = torch.autograd.grad(dy_dx.sum(), x)
    return y.detach(), dy_dx.detach(), d2y_dx2


def check_gradients(layer) -> Dict[str, bool]:
    x = torch.tensor([[-0.6], [0.1], [0.5], [0.8]], dtype=DTYPE, requires_grad=True)
    fn = lambda x: implicit_y(layer, x)  # noqa: E731
    return {"gradcheck": torch.autograd.gradcheck(fn, (x,)),
            "gradgradcheck": torch.autograd.gradgradcheck(fn, (x,))}


# %% [markdown]
# ## Plot


# %%
def plot_curve(x, y, dy_dx, d2y_dx2, path: Path) -> Path:
    x = x[:, 0]
    exact = torch.sqrt(1 - x ** 2)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, value, truth, label in (
        (axes[0], y, exact, "y(x)"),
        (axes[1], dy_dx, -x / exact, "dy/dx"),
        (axes[2], d2y_dx2, -1 / exact ** 3, "d²y/dx²"),
    ):
        ax.plot(x, truth, color="lightgray", linewidth=5, label="closed form")
        ax.plot(x, value[:, 0], color="tab:blue", label="nlls layer")
        ax.set_xlabel("x")
        ax.set_title(label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# %% [markdown]
# ## Putting it together


# %%
def _default_output_dir() -> Path:
    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    return here / "output"


def main(num_points: int = 81, output_dir: Optional[Union[str, Path]] = None,
         verbose: bool = True) -> Dict:
    """Solve the circle for ``num_points`` values of x in [-0.95, 0.95], check the derivatives
    and save a plot.

    Returns:
        dict with ``x``, ``y``, ``dy_dx``, ``d2y_dx2`` (``(N, 1)`` each), the largest errors
        against the closed forms (``y_error``, ``dy_dx_error``, ``d2y_dx2_error``), the
        ``gradcheck`` and ``gradgradcheck`` results and ``plot``.
    """
    output_dir = Path(output_dir) if output_dir is not None else _default_output_dir()
    output_dir.mkdir(parents=True, exist_ok=True)
    layer = make_circle_layer()
    x = torch.linspace(-0.95, 0.95, num_points, dtype=DTYPE)[:, None]
    y, dy_dx, d2y_dx2 = derivatives(layer, x)
    exact = torch.sqrt(1 - x ** 2)
    errors = {
        "y_error": float((y - exact).abs().max()),
        "dy_dx_error": float((dy_dx + x / exact).abs().max()),
        "d2y_dx2_error": float((d2y_dx2 + 1 / exact ** 3).abs().max()),
    }
    checks = check_gradients(layer)
    plot = plot_curve(x, y, dy_dx, d2y_dx2, output_dir / "03_implicit_function.png")
    if verbose:
        print(f"y(x) from x^2 + y^2 = 1 at {num_points} points in [-0.95, 0.95]")
        for name, error in errors.items():
            print(f"  largest error of {name[:-6]:>7} against the closed form: {error:.1e}")
        print(f"gradcheck: {checks['gradcheck']}, gradgradcheck: {checks['gradgradcheck']}")
        print(f"plot saved to {plot}")
    return {"x": x, "y": y, "dy_dx": dy_dx, "d2y_dx2": d2y_dx2, **errors, **checks,
            "plot": plot}


if __name__ == "__main__":
    main()
