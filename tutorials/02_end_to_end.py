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
# # Tutorial 2: a least-squares solve inside a trained model
#
# A **bi-level** model has an optimization problem inside its forward pass. Here we forecast
# many short time series. For each series:
#
# 1. a small neural network turns every window of the last `L` values into `K` features
#    $\phi_t$ (the same network for all series);
# 2. an **argmin layer** fits the weights of a linear forecaster on the series' first part, a
#    ridge regression
#    $$w^\star = \arg\min_w \tfrac12 \sum_{t \in \text{fit}} (\phi_t^\top w - y_t)^2
#      + \tfrac12 \lambda \|w\|^2;$$
# 3. the forecast $\phi_t^\top w^\star$ on the series' held-out second part gives the outer loss.
#
# The outer loss trains the network *and* the regularization strength $\lambda$, through the
# solve: `nlls.OptimizationLayer` differentiates $w^\star$ with respect to the features and to
# $\lambda$. The regularizer is a second residual, $\sqrt\lambda\, w$, whose weight
# $\sqrt\lambda$ is an `nlls.ScaleCostWeight` fed from a learnable parameter on every call.
# Every series is one element of the batch: all ridge regressions are solved at once.

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
# ## Synthetic time series
#
# Each series is a sum of two sines with its own frequencies, phases and amplitudes, plus
# noise. We cut it into windows: the values $y_{t-L}, \dots, y_{t-1}$ are the input, $y_t$ the
# target. The first `num_fit` windows are fitted by the inner problem, the next `num_held_out`
# are predicted.


# %%
def make_series(num_series: int, window: int, num_fit: int, num_held_out: int, seed: int = 0):
    """Windows ``(S, T, L)`` and targets ``(S, T)`` with ``T = num_fit + num_held_out``."""
    generator = torch.Generator().manual_seed(seed)
    length = window + num_fit + num_held_out
    t = torch.arange(length, dtype=DTYPE)
    rand = lambda *shape: torch.rand(*shape, generator=generator, dtype=DTYPE)  # noqa: E731
    frequency = 0.15 + 0.5 * rand(num_series, 2, 1)
    phase = 6.3 * rand(num_series, 2, 1)
    amplitude = torch.tensor([1.0, 0.5], dtype=DTYPE)[:, None] * (0.5 + rand(num_series, 2, 1))
    series = (amplitude * torch.sin(frequency * t + phase)).sum(1)
    series = series + 0.05 * torch.randn(series.shape, generator=generator, dtype=DTYPE)
    windows = series.unfold(1, window, 1)[:, :-1]  # (S, T, L): the L values before each target
    targets = series[:, window:]
    return windows, targets


# %% [markdown]
# ## The inner problem in nlls
#
# The data residual $\phi_t^\top w - y_t$ is linear in $w$, so we write it as a `CostFunction`
# with its Jacobian $\Phi$ by hand. Its aux variables hold the features `(B, num_fit, K)` and
# the targets `(B, num_fit)`. The ridge residual is $w$ itself, weighted by
# $\sqrt\lambda$. Gauss-Newton solves a linear least-squares problem in one step.


# %%
class LinearForecast(nlls.CostFunction):
    """r_t = phi_t . w - y_t for every fitted time step t."""

    def __init__(self, w, features, targets, name=None):
        super().__init__(optim_vars=(w,), aux_vars=(features, targets), name=name)
        self.w, self.features, self.targets = w, features, targets

    def dim(self):
        return self.targets.shape[1]

    def error(self):
        return (self.features.tensor @ self.w.tensor[..., None])[..., 0] - self.targets.tensor

    def jacobians(self):
        return [self.features.tensor], self.error()


def _identity(optim_vars, aux_vars):
    return optim_vars[0].tensor


def make_ridge_layer(num_features: int, num_fit: int) -> nlls.OptimizationLayer:
    w = nlls.Vector(tensor=torch.zeros(1, num_features, dtype=DTYPE), name="w")
    features = nlls.Variable(torch.zeros(1, num_fit, num_features, dtype=DTYPE), name="features")
    targets = nlls.Variable(torch.zeros(1, num_fit, dtype=DTYPE), name="targets")
    objective = nlls.Objective()
    objective.add(LinearForecast(w, features, targets, name="fit"))
    sqrt_lambda = nlls.ScaleCostWeight(torch.ones(1, 1, dtype=DTYPE), name="sqrt_lambda")
    objective.add(nlls.AutoDiffCostFunction((w,), _identity, num_features, cost_weight=sqrt_lambda,
                                            name="ridge"))
    return nlls.OptimizationLayer(nlls.GaussNewton(objective, max_iterations=3))


# %% [markdown]
# ## The model
#
# The network, the learnable $\log\lambda$ and the layer form one `torch.nn.Module`. The layer
# receives the features, the targets and $\sqrt\lambda$ by name. We use the `implicit` backward:
# it differentiates the optimality condition at $w^\star$, so its cost does not depend on how
# many iterations the solve took. (The residuals do not vanish at $w^\star$, but the residual
# is linear in $w$: Gauss-Newton's $J^\top J$ is the exact Hessian, the default is right.)


# %%
class Forecaster(torch.nn.Module):
    def __init__(self, window: int, num_features: int, num_fit: int, hidden: int = 32,
                 seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(window, hidden, dtype=DTYPE), torch.nn.Tanh(),
            torch.nn.Linear(hidden, num_features, dtype=DTYPE),
        )
        self.log_lambda = torch.nn.Parameter(torch.tensor(1.0, dtype=DTYPE))
        self.num_fit = num_fit
        self.ridge = make_ridge_layer(num_features, num_fit)

    def forward(self, windows: torch.Tensor, targets: torch.Tensor):
        """Predictions ``(S, T)`` (fitted part, then forecasts), the weights and features."""
        features = self.net(windows)  # (S, T, K)
        fit = slice(0, self.num_fit)
        solution, _ = self.ridge({
            "features": features[:, fit], "targets": targets[:, fit],
            "sqrt_lambda": torch.exp(0.5 * self.log_lambda).reshape(1, 1),
            "w": torch.zeros(windows.shape[0], features.shape[-1], dtype=DTYPE),
        }, backward_mode="implicit")
        w = solution["w"]
        return (features @ w[..., None])[..., 0], w, features


def ridge_closed_form(features, targets, lam):
    """``(Phi^T Phi + lambda I)^{-1} Phi^T y`` per series: the check of the layer's solve."""
    eye = torch.eye(features.shape[-1], dtype=DTYPE)
    return torch.linalg.solve(features.mT @ features + lam * eye,
                              features.mT @ targets[..., None])[..., 0]


# %% [markdown]
# ## Training
#
# Adam on the network and $\log\lambda$; the loss is the mean squared error of the held-out
# forecasts. Nothing in the loop knows there is a solver inside the model.


# %%
def train(model: Forecaster, windows, targets, steps: int, lr: float):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    held_out = targets[:, model.num_fit:]
    losses, lambdas = [], []
    for _ in range(steps):
        prediction, _, _ = model(windows, targets)
        loss = ((prediction[:, model.num_fit:] - held_out) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        lambdas.append(float(model.log_lambda.detach().exp()))
    return losses, lambdas


# %% [markdown]
# ## Plots


# %%
def plot_training(losses, lambdas, targets, prediction, num_fit, path: Path) -> Path:
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.8))
    left.semilogy(losses, color="tab:blue")
    left.set_xlabel("training step")
    left.set_ylabel("held-out mean squared error")
    middle.plot(lambdas, color="tab:purple")
    middle.set_xlabel("training step")
    middle.set_ylabel(r"ridge strength $\lambda$")
    t = torch.arange(targets.shape[1])
    right.plot(t, targets[0], "k.", label="series")
    right.plot(t[:num_fit], prediction[0, :num_fit], color="tab:blue", label="ridge fit")
    right.plot(t[num_fit:], prediction[0, num_fit:], color="tab:red", label="forecast (held out)")
    right.axvline(num_fit - 0.5, color="gray", linestyle=":")
    right.set_xlabel("time step")
    right.legend()
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


def main(num_series: int = 64, window: int = 8, num_features: int = 6, num_fit: int = 24,
         num_held_out: int = 12, steps: int = 150, lr: float = 1e-2, seed: int = 0,
         output_dir: Optional[Union[str, Path]] = None, verbose: bool = True) -> Dict:
    """Train the forecaster and save a plot.

    Returns:
        dict with ``losses`` and ``lambdas`` (one per step), ``initial_loss`` and ``final_loss``
        (held-out MSE before and after training), ``ridge_error`` (largest difference of the
        layer's weights to the closed-form ridge solution), ``gradient_error`` (largest relative
        difference of the gradients to those through the closed form), ``grad_log_lambda`` (the
        gradient reaching lambda at the start) and ``plot``.
    """
    output_dir = Path(output_dir) if output_dir is not None else _default_output_dir()
    output_dir.mkdir(parents=True, exist_ok=True)
    windows, targets = make_series(num_series, window, num_fit, num_held_out, seed)
    model = Forecaster(window, num_features, num_fit, seed=seed)

    # before training: the layer's solve is the ridge regression, and its gradients (to the
    # network's weights and to lambda) are those of the closed form
    held_out = targets[:, num_fit:]
    prediction, w, features = model(windows, targets)
    loss = ((prediction[:, num_fit:] - held_out) ** 2).mean()
    names, parameters = zip(*model.named_parameters())
    grads = dict(zip(names, torch.autograd.grad(loss, parameters)))
    features = model.net(windows)
    closed_form = ridge_closed_form(features[:, :num_fit], targets[:, :num_fit],
                                    model.log_lambda.exp())
    closed_form_loss = (((features[:, num_fit:] @ closed_form[..., None])[..., 0] - held_out)
                        ** 2).mean()
    closed_form_grads = torch.autograd.grad(closed_form_loss, parameters)
    ridge_error = float((w.detach() - closed_form.detach()).abs().max())
    gradient_error = max(float((grads[name] - b).abs().max() / b.abs().max())
                         for name, b in zip(names, closed_form_grads))
    initial_loss = float(loss.detach())

    losses, lambdas = train(model, windows, targets, steps, lr)
    with torch.no_grad():
        prediction, _, _ = model(windows, targets)
    final_loss = float(((prediction[:, num_fit:] - held_out) ** 2).mean())
    plot = plot_training(losses, lambdas, targets, prediction, num_fit,
                         output_dir / "02_end_to_end.png")
    if verbose:
        print(f"{num_series} series, windows of {window}, {num_features} learned features, "
              f"ridge fit on {num_fit} steps, forecast of {num_held_out}")
        print(f"layer vs closed-form ridge: weights differ by {ridge_error:.1e}, gradients by "
              f"{gradient_error:.1e} (relative)")
        print(f"held-out MSE: {initial_loss:.4f} before training, {final_loss:.4f} after "
              f"{steps} steps")
        print(f"lambda: {lambdas[0]:.3f} after the first step, {lambdas[-1]:.3f} at the end")
        print(f"plot saved to {plot}")
    return {"losses": losses, "lambdas": lambdas, "initial_loss": initial_loss,
            "final_loss": final_loss, "ridge_error": ridge_error, "gradient_error": gradient_error,
            "grad_log_lambda": float(grads["log_lambda"]), "plot": plot}


if __name__ == "__main__":
    main()
