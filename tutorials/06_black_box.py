# %% [markdown]
# # 06 — Black-box residuals: solve and differentiate through code autograd cannot see
#
# A residual often comes from code PyTorch cannot differentiate: a numpy routine, a scipy ODE
# solver, a simulator. `nlls.NumericDiffCostFunction` takes such a function as it is. Its
# Jacobians are finite differences on the variables' tangent, and in `OptimizationLayer`'s
# implicit backward the gradients with respect to the data are finite differences too, so the
# solution is still differentiable end to end.
#
# The example: a quantity decays as `dy/dt = -k y`, `y(0) = y0`. We observe it at times `t_i`
# and fit `(y0, k)`. The model is integrated by a numpy Runge-Kutta loop (no torch derivative).
# We then ask how the fitted rate `k` moves with each observation time `t_i` and value `y_i`,
# and check the answer against an autodiff twin that uses the closed form `y0 * exp(-k t)`.

# %%
from pathlib import Path

import numpy as np
import torch

import nlls

# %% [markdown]
# ## The black box
# A small numpy integrator stands in for a simulator: classic Runge-Kutta (RK4) with a fixed
# number of steps from 0 to each observation time. `err_fn` receives the variables of a whole
# stacked batch (all perturbed copies at once), and the integrator advances every row and
# every observation time together, as array code. A fixed step count makes the result a smooth
# function of the inputs, which finite differences need (an adaptive integrator's step choices
# would add noise to them). Data reaches it as `aux_vars`, stacked with the copies; an `err_fn`
# that closes over batched data instead still works (`stacked="auto"` then calls it once per
# copy, at the batch size of the data), only more slowly.

# %%
def simulate(y0: np.ndarray, k: np.ndarray, times: np.ndarray, steps: int = 400) -> np.ndarray:
    """RK4 for dy/dt = -k y from y(0) = y0 up to every entry of ``times`` (rows, n)."""
    def rate(y):
        return -k[:, None] * y

    h = times / steps
    y = np.repeat(y0[:, None], times.shape[1], axis=1)
    for _ in range(steps):
        k1 = rate(y)
        k2 = rate(y + 0.5 * h * k1)
        k3 = rate(y + 0.5 * h * k2)
        k4 = rate(y + h * k3)
        y = y + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


def decay_residual_numpy(optim_vars, aux_vars):
    params = optim_vars[0].tensor.numpy()
    times, values = aux_vars[0].tensor.numpy(), aux_vars[1].tensor.numpy()
    return simulate(params[:, 0], params[:, 1], times) - values


def decay_residual_torch(optim_vars, aux_vars):  # the autodiff twin: the closed form
    params = optim_vars[0].tensor
    times, values = aux_vars[0].tensor, aux_vars[1].tensor
    return params[:, :1] * torch.exp(-params[:, 1:] * times) - values


# %% [markdown]
# ## The layer
# The same objective is built twice, once with the black box and once with the twin.

# %%
def make_layer(numeric: bool, num_points: int):
    params = nlls.Vector(tensor=torch.tensor([[1.0, 0.5]], dtype=torch.float64), name="params")
    times = nlls.Variable(torch.zeros(1, num_points, dtype=torch.float64), name="t")
    values = nlls.Variable(torch.zeros(1, num_points, dtype=torch.float64), name="y")
    if numeric:
        cost = nlls.NumericDiffCostFunction((params,), decay_residual_numpy, num_points, aux_vars=(times, values))
    else:
        cost = nlls.AutoDiffCostFunction((params,), decay_residual_torch, num_points, aux_vars=(times, values))
    objective = nlls.Objective()
    objective.add(cost)
    optimizer = nlls.LevenbergMarquardt(objective, max_iterations=50, abs_err_tolerance=0.0, rel_err_tolerance=1e-14)
    return nlls.OptimizationLayer(optimizer)


def make_data(batch_size: int, num_points: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t = torch.sort(0.2 + 3.0 * torch.rand(batch_size, num_points, generator=g, dtype=torch.float64), dim=1).values
    y0 = 1.0 + torch.rand(batch_size, 1, generator=g, dtype=torch.float64)
    k = 0.5 + torch.rand(batch_size, 1, generator=g, dtype=torch.float64)
    y = y0 * torch.exp(-k * t) + 0.02 * torch.randn(batch_size, num_points, generator=g, dtype=torch.float64)
    return t, y


# %%
def main(batch_size: int = 4, num_points: int = 12, output_dir="tutorials/output", verbose: bool = True):
    t, y = make_data(batch_size, num_points)
    results = {}
    for name, numeric in (("black box", True), ("autodiff twin", False)):
        layer = make_layer(numeric, num_points)
        t_in, y_in = t.clone().requires_grad_(True), y.clone().requires_grad_(True)
        init = torch.tensor([[1.0, 0.5]], dtype=torch.float64).expand(batch_size, 2)
        solution, info = layer({"t": t_in, "y": y_in, "params": init}, backward_mode="implicit")
        rate = solution["params"][:, 1]
        grad_t, grad_y = torch.autograd.grad(rate.sum(), (t_in, y_in))
        results[name] = (solution["params"].detach(), grad_t, grad_y, info)
        if verbose:
            print(f"{name:14s} converged: {info.converged.tolist()}  fitted (y0, k) of problem 0: "
                  f"{solution['params'][0].detach().numpy().round(6)}")
    params_bb, gt_bb, gy_bb, _ = results["black box"]
    params_tw, gt_tw, gy_tw, _ = results["autodiff twin"]
    differences = {
        "params": float((params_bb - params_tw).abs().max()),
        "d k / d t": float((gt_bb - gt_tw).abs().max()),
        "d k / d y": float((gy_bb - gy_tw).abs().max()),
    }
    if verbose:
        for key, value in differences.items():
            print(f"max |black box - twin| of {key}: {value:.2e}")

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ts, ys = t[0].numpy(), y[0].numpy()
    dense = np.linspace(0, ts.max(), 200)
    y0, k = params_bb[0].numpy()
    ax.plot(dense, y0 * np.exp(-k * dense), label="fit (ODE black box)")
    ax.scatter(ts, ys, color="k", zorder=3, label="observations")
    arrows = gy_bb[0].numpy()
    scale = np.abs(arrows).max() / (0.25 * (ys.max() - ys.min()))  # longest arrow: a quarter of the range
    ax.quiver(ts, ys, np.zeros_like(ts), arrows, angles="xy", scale_units="xy", scale=scale, color="C3",
              width=0.006, label="d k / d y_i (scaled)")
    ax.set_xlabel("t")
    ax.set_ylabel("y")
    ax.legend()
    ax.set_title("Sensitivity of the fitted decay rate to each observation")
    path = output_dir / "06_black_box.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    if verbose:
        print(f"plot saved to {path}")
    return {"differences": differences, "plot": path, "params": params_bb, "grad_t": gt_bb, "grad_y": gy_bb}


if __name__ == "__main__":
    main()
