"""Batched curve fits: nlls beside a hand-written torch loop, SciPy and (when installed) Theseus.

Two problems, ``num_points`` samples each, ``B`` independent fits solved together:

* ``quadratic``:   y = a x^2 + b,          Gauss-Newton,         15 iterations, float32;
* ``exponential``: y = a exp(-b x) + c,    Levenberg-Marquardt,  20 iterations, float64.

Every method runs a fixed number of iterations (tolerances off) from the same start, is timed in
this process (warm-up runs, then the median of several repetitions) and is compared with the
hand-written, fully vectorized torch loop (``handwritten``), the speed limit for a framework. One
JSON line per measurement goes to stdout; a markdown table goes to stderr at the end.
See bench/README.md for the columns and for how each method is made comparable.

    python bench/bench_curve_fit.py --batch-sizes 1,256,4096 --device cpu
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional

# SciPy solves one small problem at a time, where BLAS threads only spin; spinning threads
# would also slow the torch calls timed next to it (set before numpy is first imported)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nlls  # noqa: E402


# ---- the problems: residuals and analytic Jacobians, batched (torch) and single (numpy) ----------
class Problem:
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


class Quadratic(Problem):
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


class Exponential(Problem):
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


PROBLEMS = {p.name: p for p in (Quadratic(), Exponential())}


def make_data(problem: Problem, batch: int, num_points: int, device, seed: int = 0):
    """``x, y (B, N)``, the true and the starting parameters ``(B, dof)``, on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    x, truth, start, noise = problem.data(batch, num_points, generator)
    y = problem.residual(truth, x, torch.zeros_like(x)) + noise
    cast = lambda t: t.to(device=device, dtype=problem.dtype).contiguous()  # noqa: E731
    return cast(x), cast(y), cast(truth), cast(start)


# ---- (b) the speed limit: hand-written vectorized Gauss-Newton and Levenberg-Marquardt ----------
def handwritten_gauss_newton(problem, start, x, y, iterations, solve=torch.cholesky_solve):
    """Plain batched Gauss-Newton: bmm for J^T J, one Cholesky and one solve per iteration
    (``solve(rhs, factor)``, as ``torch.cholesky_solve``)."""
    p = start
    for _ in range(iterations):
        jac, r = problem.jacobian(p, x), problem.residual(p, x, y)
        jt = jac.transpose(1, 2)
        factor, _ = torch.linalg.cholesky_ex(torch.bmm(jt, jac))
        p = p - solve(torch.bmm(jt, r[..., None]), factor)[..., 0]
    return p


def handwritten_levenberg_marquardt(problem, start, x, y, iterations, damping=1e-3,
                                    min_relative_decrease=1e-3):
    """Batched LM with nlls' default rule (identity damping, gain ratio, Nielsen's update), so
    both do the same work per iteration: one (r, J) at the current point, one damped Cholesky
    solve, one residual at the candidate, and reach the same iterates."""
    p = start
    lam = torch.full(start.shape[:1], damping, dtype=start.dtype, device=start.device)
    growth = torch.full_like(lam, 2.0)
    eye = torch.eye(start.shape[1], dtype=start.dtype, device=start.device)
    r = problem.residual(p, x, y)
    err = 0.5 * (r * r).sum(1)
    for _ in range(iterations):
        jac, r = problem.jacobian(p, x), problem.residual(p, x, y)
        jt = jac.transpose(1, 2)
        A, g = torch.bmm(jt, jac), torch.bmm(jt, r[..., None])
        factor, info = torch.linalg.cholesky_ex(A + lam[:, None, None] * eye)
        delta = -torch.cholesky_solve(g, factor)
        candidate = p + delta[..., 0]
        r_new = problem.residual(candidate, x, y)
        err_new = 0.5 * (r_new * r_new).sum(1)
        predicted = -(g + 0.5 * torch.bmm(A, delta)).mul(delta).sum((1, 2))
        actual = err - err_new
        ratio = actual / torch.where(predicted > 0, predicted, torch.ones_like(predicted))
        accept = (info == 0) & torch.isfinite(err_new) & torch.where(
            predicted > 0, ratio > min_relative_decrease, actual >= 0)
        shrink = (1.0 - (2.0 * ratio - 1.0) ** 3).clamp_min(1.0 / 3.0)
        lam = torch.where(accept, lam * shrink, lam * growth)
        growth = torch.where(accept, torch.full_like(growth, 2.0), growth * 2.0)
        p = torch.where(accept[:, None], candidate, p)
        err = torch.where(accept, err_new, err)
    return p


# ---- nlls: analytic CostFunction and AutoDiffCostFunction ----------------------------------------
class _AnalyticFit(nlls.CostFunction):
    """r = f(p, x) - y with the problem's hand-written Jacobian."""

    def __init__(self, problem, p, x, y, name=None):
        super().__init__(optim_vars=(p,), aux_vars=(x, y), name=name)
        self.problem, self.p, self.x, self.y = problem, p, x, y

    def dim(self):
        return self.x.shape[1]

    def error(self):
        return self.problem.residual(self.p.tensor, self.x.tensor, self.y.tensor)

    def jacobians(self):
        return [self.problem.jacobian(self.p.tensor, self.x.tensor)], self.error()


def _autodiff_error(problem):
    def err_fn(optim_vars, aux_vars):
        (p,), (x, y) = optim_vars, aux_vars
        return problem.residual(p.tensor, x.tensor, y.tensor)
    return err_fn


def nlls_solver(problem, start, x, y, iterations, autodiff):
    """Builds the objective and optimizer once; the returned ``run()`` sets the start and solves."""
    p = nlls.Vector(tensor=start.clone(), name="p")
    xv, yv = nlls.Variable(x, name="x"), nlls.Variable(y, name="y")
    if autodiff:
        cost = nlls.AutoDiffCostFunction((p,), _autodiff_error(problem), x.shape[1],
                                         aux_vars=(xv, yv), name="fit")
    else:
        cost = _AnalyticFit(problem, p, xv, yv, name="fit")
    objective = nlls.Objective()
    objective.add(cost)
    # tolerances 0 (0 switches the relative tests off) and one "all done?" check at the end:
    # exactly `iterations` iterations for every element
    kwargs = dict(max_iterations=iterations, abs_err_tolerance=0.0, rel_err_tolerance=0.0,
                  check_every=max(iterations, 1))
    if problem.optimizer == "gauss_newton":
        optimizer = nlls.GaussNewton(objective, **kwargs)
    else:
        optimizer = nlls.LevenbergMarquardt(objective, damping=1e-3, **kwargs)

    def run():
        objective.update({"p": start})
        optimizer.optimize()
        return p.tensor
    return run


# ---- (a) SciPy, one problem at a time --------------------------------------------------------
def scipy_solver(problem, start, x, y, iterations, stats):
    """MINPACK LM with the analytic Jacobian; tolerances at machine epsilon (the least MINPACK
    accepts) and max_nfev = iterations + 1, so it runs at most ``iterations`` iterations and
    stops earlier only once converged to machine precision."""
    from scipy.optimize import least_squares

    eps = float(np.finfo(np.float64).eps)

    def run():
        xs, ys, p0 = (t.detach().cpu().double().numpy() for t in (x, y, start))
        out, nfev, njev = np.empty_like(p0), 0, 0
        for i in range(p0.shape[0]):
            xi, yi = xs[i], ys[i]
            sol = least_squares(
                lambda q: problem.residual(q, xi, yi, xp=np), p0[i],
                jac=lambda q: problem.jacobian(q, xi, xp=np), method="lm",
                ftol=eps, xtol=eps, gtol=eps, max_nfev=iterations + 1,
            )
            out[i], nfev, njev = sol.x, nfev + sol.nfev, njev + (sol.njev or 0)
        stats.update(scipy_mean_nfev=nfev / len(p0), scipy_mean_njev=njev / len(p0))
        return torch.as_tensor(out, dtype=start.dtype, device=start.device)
    return run


# ---- (c) Theseus 0.2.3, optional ---------------------------------------------------------------
def theseus_solver(problem, start, x, y, iterations, autodiff):
    import theseus as th

    class TheseusFit(th.CostFunction):
        def __init__(self, p, xv, yv, cost_weight, name=None):
            super().__init__(cost_weight, name=name)
            self.p, self.xv, self.yv = p, xv, yv
            self.register_optim_vars(["p"])
            self.register_aux_vars(["xv", "yv"])

        def error(self):
            return problem.residual(self.p.tensor, self.xv.tensor, self.yv.tensor)

        def jacobians(self):
            return [problem.jacobian(self.p.tensor, self.xv.tensor)], self.error()

        def dim(self):
            return self.xv.tensor.shape[1]

        def _copy_impl(self, new_name=None):
            return TheseusFit(self.p.copy(), self.xv.copy(), self.yv.copy(), self.weight.copy(),
                              name=new_name)

    p = th.Vector(tensor=start.clone(), name="p")
    xv, yv = th.Variable(x, name="x"), th.Variable(y, name="y")
    weight = th.ScaleCostWeight(torch.ones(1, 1, dtype=x.dtype, device=x.device))
    if autodiff:
        def err_fn(optim_vars, aux_vars):
            return problem.residual(optim_vars[0].tensor, aux_vars[0].tensor, aux_vars[1].tensor)
        cost = th.AutoDiffCostFunction([p], err_fn, x.shape[1], cost_weight=weight,
                                       aux_vars=[xv, yv], name="fit")
    else:
        cost = TheseusFit(p, xv, yv, weight, name="fit")
    objective = th.Objective(dtype=x.dtype)
    objective.add(cost)
    kwargs = dict(max_iterations=iterations, abs_err_tolerance=0.0, rel_err_tolerance=0.0)
    if problem.optimizer == "gauss_newton":
        optimizer, options = th.GaussNewton(objective, **kwargs), {}
    else:
        optimizer = th.LevenbergMarquardt(objective, **kwargs)
        options = {"damping": 1e-3, "adaptive_damping": True}
    layer = th.TheseusLayer(optimizer).to(x.device)

    def run():
        with torch.no_grad():
            solution, _ = layer.forward({"p": start, "x": x, "y": y}, optimizer_kwargs=options)
        return solution["p"]
    return run


# ---- timing ----------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(runs: Dict[str, Callable[[], torch.Tensor]], device, warmup: int, repeats: int,
            max_seconds: float):
    """Wall times in ms of each of ``runs``, interleaved, and each one's last result.

    One call of each per repetition, so a slow spell of a shared machine hits neighbouring
    calls alike and per-repetition ratios stay meaningful. After ``warmup`` calls of each (a
    warm-up call over a second is warm-up enough), repetitions stop at ``repeats`` or once
    ``max_seconds`` are spent, with at least one timed call.

    Returns:
        name -> (list of times in ms, last result).
    """
    results: Dict[str, torch.Tensor] = {}
    for name, run in runs.items():
        for _ in range(warmup):
            begin = time.perf_counter()
            results[name] = run()
            _sync(device)
            if time.perf_counter() - begin > 1.0:
                break
    times: Dict[str, List[float]] = {name: [] for name in runs}
    spent = 0.0
    for _ in range(repeats):
        for name, run in runs.items():
            _sync(device)
            begin = time.perf_counter()
            results[name] = run()
            _sync(device)
            times[name].append(time.perf_counter() - begin)
            spent += times[name][-1]
        if spent >= max_seconds:
            break
    return {name: ([1e3 * v for v in t], results[name]) for name, t in times.items()}


def _paired_median(numerators: List[float], denominators: List[float]) -> float:
    """Median of the per-repetition ratios: robust to drifts slower than one repetition."""
    return statistics.median(n / d for n, d in zip(numerators, denominators))


def _theseus_missing() -> Optional[str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import theseus  # noqa: F401
    except Exception as exc:  # any import failure (missing, broken build) skips it
        return f"theseus not importable: {type(exc).__name__}: {exc}"
    return None


METHODS = ("handwritten", "nlls_analytic", "nlls_autodiff", "scipy_lm", "theseus_analytic",
           "theseus_autodiff")


def _solver(method, problem, start, x, y, iterations, stats):
    if method == "handwritten":
        loop = (handwritten_gauss_newton if problem.optimizer == "gauss_newton"
                else handwritten_levenberg_marquardt)
        return lambda: loop(problem, start, x, y, iterations)
    if method.startswith("nlls_"):
        return nlls_solver(problem, start, x, y, iterations, autodiff=method.endswith("autodiff"))
    if method == "scipy_lm":
        return scipy_solver(problem, start, x, y, iterations, stats)
    return theseus_solver(problem, start, x, y, iterations, autodiff=method.endswith("autodiff"))


def emit(record: Dict) -> None:
    print(json.dumps({"bench": "curve_fit", **record}), flush=True)


def bench_problem(problem, batch, args, device, rows):
    """Every method on one problem and batch size, each timed interleaved with ``handwritten``."""
    x, y, _, start = make_data(problem, batch, args.num_points, device, seed=args.seed)
    base = {"problem": problem.name, "batch_size": batch, "iterations": problem.iterations,
            "dtype": str(problem.dtype).replace("torch.", ""), "device": str(device),
            "threads": torch.get_num_threads()}
    theseus_missing = _theseus_missing()
    handwritten = _solver("handwritten", problem, start, x, y, problem.iterations, {})
    reference = handwritten()
    for method in ["handwritten"] + [m for m in args.methods if m != "handwritten"]:
        if method.startswith("theseus") and theseus_missing:
            emit({**base, "method": method, "skipped": theseus_missing})
            continue
        stats: Dict = {}
        runs = {"handwritten": handwritten}
        if method != "handwritten":
            runs[method] = _solver(method, problem, start, x, y, problem.iterations, stats)
        timed = time_ms(runs, device, args.warmup, args.repeats, args.max_seconds)
        (times, solution), reference_times = timed[method], timed["handwritten"][0]
        record = {**base, "method": method, "median_ms": round(statistics.median(times), 3),
                  "handwritten_ms": round(statistics.median(reference_times), 3),
                  "ratio_to_handwritten": round(_paired_median(times, reference_times), 3),
                  "max_param_diff_to_handwritten": float((solution - reference).abs().max()),
                  "repeats": len(times), **stats}
        emit(record)
        rows.append(record)


def bench_per_iteration(args, device, rows):
    """B = 1 quadratic Gauss-Newton: ms per iteration = slope of the time over the iteration
    count (5 and 25 iterations, interleaved; median of the per-repetition slopes), and the
    fixed cost per solve left over."""
    problem = PROBLEMS["quadratic"]
    x, y, _, start = make_data(problem, 1, args.num_points, device, seed=args.seed)
    few, many = 5, 25
    for method in ("handwritten", "nlls_analytic", "nlls_autodiff"):
        runs = {n: _solver(method, problem, start, x, y, n, {}) for n in (few, many)}
        timed = time_ms(runs, device, args.warmup + 3, 5 * args.repeats, args.max_seconds)
        t_few, t_many = timed[few][0], timed[many][0]
        per_iteration = statistics.median((b - a) / (many - few) for a, b in zip(t_few, t_many))
        record = {"problem": problem.name, "method": method, "measure": "per_iteration",
                  "batch_size": 1, "dtype": "float32", "device": str(device),
                  "threads": torch.get_num_threads(),
                  "ms_per_iteration": round(per_iteration, 4),
                  "ms_fixed": round(statistics.median(t_few) - few * per_iteration, 4),
                  "repeats": len(t_few)}
        emit(record)
        rows.append(record)


def markdown_table(rows: List[Dict]) -> str:
    lines = ["| problem | B | method | median ms | hand-written ms | × hand-written | max Δp |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        if "median_ms" in r:
            lines.append(f"| {r['problem']} | {r['batch_size']} | {r['method']} | "
                         f"{r['median_ms']:.2f} | {r['handwritten_ms']:.2f} | "
                         f"{r['ratio_to_handwritten']:.2f} | "
                         f"{r['max_param_diff_to_handwritten']:.1e} |")
    per_iteration = [r for r in rows if r.get("measure") == "per_iteration"]
    if per_iteration:
        lines += ["", "| B=1 quadratic GN | ms per iteration | fixed ms per solve |", "|---|---:|---:|"]
        lines += [f"| {r['method']} | {r['ms_per_iteration']:.3f} | {r['ms_fixed']:.3f} |"
                  for r in per_iteration]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default="1,256,4096",
                        help="comma-separated batch sizes (default 1,256,4096)")
    parser.add_argument("--problems", default="quadratic,exponential")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--num-points", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--max-seconds", type=float, default=15.0,
                        help="stop repeating a measurement after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--no-per-iteration", action="store_true",
                        help="skip the B=1 per-iteration overhead measurement")
    args = parser.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    problems = [p for p in args.problems.split(",") if p]
    if set(problems) - set(PROBLEMS):
        parser.error(f"unknown problems {sorted(set(problems) - set(PROBLEMS))}; "
                     f"choose from {sorted(PROBLEMS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rows: List[Dict] = []
    for name in problems:
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            bench_problem(PROBLEMS[name], batch, args, device, rows)
    if not args.no_per_iteration:
        bench_per_iteration(args, device, rows)
    print(markdown_table(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
