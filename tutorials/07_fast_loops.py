# %% [markdown]
# # 07 — Fast loops: no host round-trips, compiled iterations, CUDA graphs
#
# Small batched solves are dominated by overhead, not arithmetic: an iteration is a few dozen
# tiny tensor operations, and eager PyTorch pays Python dispatch (CPU) or a kernel launch (GPU)
# for each. nlls's loop is built so that the overhead can be removed:
#
# * per-element convergence is a mask, and the loop reads one boolean back to the host ("has
#   every element stopped?") every `check_every` iterations — nothing else;
# * `optimize(compile=True)` runs the iterations through `torch.compile` (CPU and GPU);
# * `optimize(cuda_graph=True)` captures the whole solve in one CUDA graph and replays it with new
#   data (GPU).
#
# A graph can only be captured if nothing in the solve needs the host. nlls's own code is
# checked for that; your cost functions are yours. `check_capturable` finds the offending line on
# the CPU, before you get near a GPU.
#
# The example: 512 noisy circles, each fitted with centre and radius by the geometric residual
# `|p_i - c| - r`.

# %%
import math

import torch

import nlls
from nlls.solve.drivers.cuda_graph import HostSyncError, check_capturable


def make_data(batch: int, points: int = 40, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(batch, 2, generator=g, dtype=dtype)
    radius = 1.0 + torch.rand(batch, 1, generator=g, dtype=dtype)
    angle = 2 * math.pi * torch.rand(batch, points, generator=g, dtype=dtype)
    xy = centre[:, None, :] + radius[..., None] * torch.stack([angle.cos(), angle.sin()], dim=-1)
    return xy + 0.02 * torch.randn(batch, points, 2, generator=g, dtype=dtype), centre, radius


# %% [markdown]
# ## A cost function that stops a CUDA graph
# A habit from eager code: guard against a degenerate case with a Python `if` on a tensor. The
# `if` reads a value on the host — on CUDA a synchronization per evaluation, and inside a graph
# capture an error.

# %%
class CircleWithGuard(nlls.CostFunction):
    """r_i = |p_i - c| - r, with a host-side guard."""

    def __init__(self, params, points, name=None):
        super().__init__(optim_vars=(params,), aux_vars=(points,), name=name)
        self.params, self.points = params, points

    def dim(self):
        return self.points.shape[1]

    def _distance(self):
        offset = self.points.tensor - self.params.tensor[:, None, :2]
        distance = offset.norm(dim=-1)
        if bool((distance < 1e-12).any()):  # a host read: breaks CUDA graphs
            raise ValueError("a point sits on the centre")
        return offset, distance

    def error(self):
        return self._distance()[1] - self.params.tensor[:, 2:]

    def jacobians(self):
        offset, distance = self._distance()
        unit = offset / distance[..., None]
        jac = torch.cat([-unit, -torch.ones_like(distance)[..., None]], dim=-1)
        return [jac], distance - self.params.tensor[:, 2:]


# %% [markdown]
# The capturable version keeps the arithmetic and replaces the `if` by a `torch.where`: a point
# on the centre gets a zero direction instead of a division by zero, decided per element on the
# device.

# %%
class Circle(CircleWithGuard):
    def _distance(self):
        offset = self.points.tensor - self.params.tensor[:, None, :2]
        distance = offset.norm(dim=-1)
        safe = torch.where(distance < 1e-12, torch.ones_like(distance), distance)
        return offset * (distance / safe)[..., None], safe


def build(cost_class, points, max_iterations=20):
    batch = points.shape[0]
    start = torch.cat([points.mean(dim=1), torch.ones(batch, 1, dtype=points.dtype)], dim=1)
    params = nlls.Vector(tensor=start, name="params")
    objective = nlls.Objective()
    objective.add(cost_class(params, nlls.Variable(points, name="points"), name="circle"))
    return nlls.LevenbergMarquardt(objective, max_iterations=max_iterations), params


# %% [markdown]
# ## Run it
# `check_capturable` runs one solve eagerly under a guard that stops at the first operation a
# graph cannot contain, and says which and where. Then the solves: eager, compiled (optional, a
# one-off compilation of ~10-30 s on CPU) and, with a GPU, replayed from a CUDA graph — the
# same numbers every time.

# %%
def main(batch_size: int = 512, compile: bool = False, verbose: bool = True):
    points, centre, radius = make_data(batch_size)
    result = {}

    guarded, _ = build(CircleWithGuard, points)
    try:
        check_capturable(guarded)
    except HostSyncError as exc:
        result["guard_error"] = str(exc)
        if verbose:
            print(f"CircleWithGuard is not capturable:\n  {exc}")
    optimizer, params = build(Circle, points)
    check_capturable(optimizer)  # passes: nothing in the solve reads back to the host
    if verbose:
        print("Circle is capturable")

    info = optimizer.optimize()
    eager = params.tensor.clone()
    result["eager"] = eager
    result["iterations"] = info.iterations
    result["centre_error"] = float((eager[:, :2] - centre).norm(dim=-1).max())
    result["radius_error"] = float((eager[:, 2:] - radius).abs().max())
    if verbose:
        print(f"eager: {info.message}; worst centre error {result['centre_error']:.3f}, "
              f"radius error {result['radius_error']:.3f}")

    if compile:
        optimizer, params = build(Circle, points)
        optimizer.optimize(compile=True)
        result["compiled_difference"] = float((params.tensor - eager).abs().max())
        if verbose:
            print(f"compile=True: max difference to eager {result['compiled_difference']:.1e}")

    if torch.cuda.is_available():
        optimizer, params = build(Circle, points.cuda())
        optimizer.optimize(cuda_graph=True)  # captured once ...
        optimizer.objective.update({"params": eager.new_ones(batch_size, 3).cuda()})
        optimizer.optimize(cuda_graph=True)  # ... replayed with new start values
        result["graph_difference"] = float((params.tensor.cpu() - eager).abs().max())
        if verbose:
            print(f"cuda_graph=True: max difference to eager {result['graph_difference']:.1e}")
    elif verbose:
        print("no CUDA device: the cuda_graph=True solve is skipped")
    return result


if __name__ == "__main__":
    main(compile=True)
