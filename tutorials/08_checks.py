# %% [markdown]
# # 08 — Checking derivatives, and batches of different sizes
#
# Two things go wrong quietly in least squares: a hand-written Jacobian that is almost right
# (the solver still converges, only slower, to the right answer; the gradients through it are
# wrong), and a backward mode used outside its assumptions. nlls checks both against central
# differences:
#
# * `nlls.check_jacobians(cost_function)` compares `jacobians()` with differences of `error()`
#   along each tangent coordinate, moving each variable through its own retraction;
# * `nlls.check_gradients(layer, inputs)` compares the gradients of an `OptimizationLayer` in each
#   backward mode with differences of the whole solve.
#
# The last part batches problems of different sizes: line fits to 5 to 50 points each, padded to
# one tensor, with a residual mask saying which rows are real.

# %%
from pathlib import Path

import torch

import nlls

torch.set_default_dtype(torch.float64)


# %% [markdown]
# ## A hand-written factor with a bug
# A robot at pose `x` (an `SE2`) sees a landmark `l` (a `Point2`) at `z`, measured in its own
# frame: `r = R(x)^T (l - t(x)) - z`. With the tangent `(vx, vy, omega)` of a right perturbation
# `x ∘ exp(delta)`, the Jacobians are `dr/dx = [[-1, 0, p_y], [0, -1, -p_x]]` (with
# `p = R^T (l - t)`) and `dr/dl = R^T`. The first version below forgets the transpose: a test at
# the identity pose cannot see it, since there `R = R^T`.

# %%
class LandmarkObservation(nlls.CostFunction):
    def __init__(self, pose, landmark, measurement, transpose=True, name=None):
        super().__init__(optim_vars=(pose, landmark), aux_vars=(measurement,), name=name)
        self.pose, self.landmark, self.measurement = pose, landmark, measurement
        self.transpose = transpose  # False: the bug

    def dim(self):
        return 2

    def _local(self):
        x, y, c, s = self.pose.tensor.unbind(dim=1)
        dx, dy = self.landmark.tensor[:, 0] - x, self.landmark.tensor[:, 1] - y
        return torch.stack([c * dx + s * dy, -s * dx + c * dy], dim=1), c, s

    def error(self):
        return self._local()[0] - self.measurement.tensor

    def jacobians(self):
        p, c, s = self._local()
        one, zero = torch.ones_like(c), torch.zeros_like(c)
        d_pose = torch.stack([torch.stack([-one, zero, p[:, 1]], dim=1),
                              torch.stack([zero, -one, -p[:, 0]], dim=1)], dim=1)
        rotation = torch.stack([torch.stack([c, -s], dim=1), torch.stack([s, c], dim=1)], dim=1)
        d_landmark = rotation.mT if self.transpose else rotation
        return [d_pose, d_landmark], p - self.measurement.tensor


def observation(transpose, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    pose = nlls.SE2(tensor=nlls.SE2.rand(batch, generator=g).tensor, name="x")
    landmark = nlls.Point2(tensor=3.0 * torch.randn(batch, 2, generator=g), name="l")
    measurement = nlls.Variable(torch.randn(batch, 2, generator=g), name="z")
    return LandmarkObservation(pose, landmark, measurement, transpose=transpose, name="sighting")


# %% [markdown]
# ## check_jacobians finds it, and says where
# The report names the variable, the batch element, the residual row and the tangent coordinate
# of the worst entry. At the identity pose the wrong version passes: checking at random poses
# (the default here: the variables' current values; `at="random"` moves them randomly) is what
# finds such bugs.

# %%
def check_factor(verbose=True):
    buggy = observation(transpose=False)
    report = nlls.check_jacobians(buggy)
    at_identity = nlls.check_jacobians(buggy, at={"x": nlls.SE2.identity(4).tensor})
    fixed = nlls.check_jacobians(observation(transpose=True), at="random")
    if verbose:
        print(report, "\n")
        print(f"the buggy factor at the identity pose: ok={at_identity.ok}")
        print(fixed)
    return report, at_identity, fixed


# %% [markdown]
# ## check_gradients: which backward mode can this layer trust?
# An exponential decay fitted to noisy data keeps large residuals at its solution. The implicit
# backward with the default Gauss-Newton Hessian `J^T J` drops the second-order residual terms,
# and its gradients are off by a few percent there; `hessian="exact"` keeps them. Differences of
# a solve are only as good as the solve: the layer runs in float64 with a tight tolerance.

# %%
def decay(optim, aux):
    p = optim[0].tensor
    t, y = aux
    return p[:, :1] * torch.exp(-p[:, 1:] * t.tensor) - y.tensor


def decay_layer(batch=3, points=8, seed=0):
    t = torch.linspace(0.0, 3.0, points).expand(batch, points)
    g = torch.Generator().manual_seed(seed)
    y = 2.0 * torch.exp(-0.7 * t) + 0.3 * torch.randn(batch, points, generator=g)
    p = nlls.Vector(tensor=torch.tensor([[1.0, 0.5]]), name="p")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction((p,), decay, points, aux_vars=(
        nlls.Variable(t, name="t"), nlls.Variable(torch.zeros(batch, points), name="y"))))
    optimizer = nlls.GaussNewton(objective, max_iterations=50, abs_err_tolerance=0.0,
                                 rel_err_tolerance=1e-14, linear_solver="dense_lu")
    return nlls.OptimizationLayer(optimizer), y


def check_layer(verbose=True):
    layer, y = decay_layer()
    report = nlls.check_gradients(layer, {"y": y.requires_grad_(True)})
    exact = nlls.check_gradients(layer, {"y": y}, modes=["implicit"], hessian="exact")
    if verbose:
        print(report, "\n")
        print(exact)
    return report, exact


# %% [markdown]
# ## A ragged batch
# Six line fits with 5 to 50 points each. `nlls.pad_ragged` pads the data to one `(6, 50)`
# tensor and returns the mask of the real entries; the cost function takes it as
# `residual_mask`. The padded rows are dropped: whatever they hold (NaN here) reaches neither the
# fits nor their gradients, and each element's fit is the one of its own points alone.

# %%
def line(optim, aux):
    ab = optim[0].tensor
    x, y = aux
    return ab[:, :1] * x.tensor + ab[:, 1:] - y.tensor


def line_layer(points, batch, mask=None):
    ab = nlls.Vector(tensor=torch.zeros(1, 2), name="ab")
    x, y = nlls.Variable(torch.zeros(batch, points), name="x"), nlls.Variable(torch.zeros(batch, points), name="y")
    objective = nlls.Objective()
    objective.add(nlls.AutoDiffCostFunction((ab,), line, points, aux_vars=(x, y), residual_mask=mask))
    return nlls.OptimizationLayer(nlls.GaussNewton(objective, max_iterations=5))


def fit(layer, x, y):
    y = y.clone().requires_grad_(True)
    solution, info = layer({"x": x, "y": y})
    slope_gradient, = torch.autograd.grad(solution["ab"][:, 0].sum(), y)  # how each point moves the slope
    return solution["ab"].detach(), slope_gradient


def ragged_fits(lengths=(5, 12, 50, 7, 31, 20), seed=0, verbose=True):
    g = torch.Generator().manual_seed(seed)
    xs = [4.0 * torch.rand(n, generator=g) for n in lengths]
    ys = [1.5 * x - 0.3 + 0.2 * torch.randn(n, generator=g) for x, n in zip(xs, lengths)]
    x, mask = nlls.pad_ragged(xs, value=float("nan"))
    y, _ = nlls.pad_ragged(ys, value=float("nan"))
    lines, gradients = fit(line_layer(x.shape[1], len(lengths), mask), x, y)
    value_gap = gradient_gap = 0.0
    for b, n in enumerate(lengths):
        alone, alone_gradient = fit(line_layer(n, 1), xs[b][None], ys[b][None])
        value_gap = max(value_gap, float((lines[b] - alone[0]).abs().max()))
        gradient_gap = max(gradient_gap, float((gradients[b, :n] - alone_gradient[0]).abs().max()))
    if verbose:
        print(f"max |batched - separate| of the lines: {value_gap:.1e}, of d slope / d y: {gradient_gap:.1e}")
        print(f"gradient on the padding: {float(gradients[~mask].abs().max()):.1e}")
    return dict(xs=xs, ys=ys, lines=lines, value_gap=value_gap, gradient_gap=gradient_gap,
                padding_gradient=float(gradients[~mask].abs().max()))


# %%
def main(output_dir="tutorials/output", verbose=True):
    report, at_identity, fixed = check_factor(verbose)
    gradients, exact = check_layer(verbose)
    ragged = ragged_fits(verbose=verbose)

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for b, (x, y, (a, c)) in enumerate(zip(ragged["xs"], ragged["ys"], ragged["lines"])):
        ax.scatter(x, y + 2.0 * b, s=10, color=f"C{b}")
        ends = torch.tensor([0.0, 4.0])
        ax.plot(ends, a * ends + c + 2.0 * b, color=f"C{b}", label=f"{len(x)} points")
    ax.set_xlabel("x")
    ax.set_ylabel("y (shifted by 2 per problem)")
    ax.set_title("One batched solve, six problems of different sizes")
    ax.legend(fontsize=8)
    path = output_dir / "08_checks.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    if verbose:
        print(f"plot saved to {path}")
    return dict(jacobians=report, at_identity=at_identity, fixed=fixed, gradients=gradients, exact=exact,
                plot=path, **{k: v for k, v in ragged.items() if k.endswith("gap") or k == "padding_gradient"})


if __name__ == "__main__":
    main()
