"""``nlls solve``: solve a pose graph or bundle-adjustment file from the shell.

    nlls solve [FILE] [--config CONFIG.yaml] [--output OUT] [--plot OUT.png]
               [--device cpu|cuda] [--dtype float64|float32] [--max-iterations N] [--quiet] [--json]
               [--covariance [--gauge auto|first|pseudo_inverse]] [--no-anchor]

``FILE`` is a g2o (``VERTEX_SE2``/``EDGE_SE2``, ``VERTEX_SE3:QUAT``/``EDGE_SE3:QUAT``), TORO
(``VERTEX2``/``EDGE2``, ``VERTEX3``/``EDGE3``) or BAL file, detected from its records; with no
``FILE`` the 2-D pose graph bundled with the package (GTSAM's ``w100.graph``) is solved. Without
``--config`` the solver is chosen by the kind of problem: pose graphs :data:`DEFAULT_CONFIG`
(Levenberg-Marquardt with GTSAM's damping schedule, sparse Cholesky; the first pose anchored by a
prior unless ``--no-anchor``, see :meth:`nlls.io.PoseGraph.objective`), BAL files :data:`BAL_CONFIG` (the settings of
``configs/bundle_adjustment.yaml``: Levenberg-Marquardt with Ceres's scaling and tolerances, the
points eliminated by the Schur complement). ``--output`` writes a pose graph in g2o format, a BAL
problem in BAL format; ``--plot`` draws trajectories or the cameras and points (:mod:`nlls.cli_plot`).

Progress goes to stderr, driven by the optimizer's callback (``optimize(callback=...)``): a
tqdm bar when tqdm is installed (``pip install "nlls[cli]"``) and stderr is a terminal, else
plain lines, every iteration for the first ten, then at most one every half second. The summary
goes to stdout; ``--json`` prints one JSON object there instead, ``--quiet`` neither progress
nor summary. User errors (unreadable or malformed files, bad configurations, a device or
linear-solver backend this machine lacks, ``--plot`` without matplotlib) are found before
anything is solved where they can be, print one line naming the file and line or the key, and
exit with status 2. ``--output`` and ``--plot`` are written whole or not at all (a temporary
file beside the destination, renamed on success), and only when the solve succeeded: after a
failed solve (a batch element failed, or the final cost is not finite) an existing file is left
as it was. ``--covariance`` adds the marginal standard deviations of the first and last poses;
a solve that fails on singular normal equations prints :func:`nlls.diagnose`'s report
(:mod:`nlls.cli_report`).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, TextIO

import torch

from . import cli_plot, cli_report
from .cli_report import UserError
from .solve.checks import short_repr
from .solve.linear.sparse import available_backends
from .solve.state import Failure, IterationInfo, Status

MAX_MESSAGE = 500  # characters of an error line
EVERY_ITERATION = 10  # plain progress: a line for each of the first iterations...
LINE_INTERVAL = 0.5  # ...then at most one per this many seconds

DEFAULT_CONFIG = {
    "optimizer": {
        "name": "levenberg_marquardt",
        "max_iterations": 100,
        "abs_err_tolerance": 0.0,
        # a relative cost change below 1e-8 ends the solve: the final cost is then as accurate (GTSAM's
        # reference runs stop on an absolute change of 1e-5, 7e-8 of w10000's cost)
        "function_tolerance": 1e-8,
        # GTSAM's schedule: from 1e-5, divided by 10 after an accepted step, multiplied after a
        # rejected one (with the first pose anchored: GTSAM's iteration counts on shared/data)
        "damping": 1e-5,
        "damping_factor": 10.0,
    },
    "linear_solver": {"name": "sparse_cholesky"},
}
#: BAL files without --config: configs/bundle_adjustment.yaml (tests/test_cli_bal.py keeps them equal)
BAL_CONFIG = {
    "optimizer": {
        "name": "levenberg_marquardt",
        "max_iterations": 200,
        "abs_err_tolerance": 1e-10,
        "function_tolerance": 1e-6,
        "gradient_tolerance": 1e-10,
        "parameter_tolerance": 1e-8,
        "damping": 1e-6,
        "diagonal_scaling": True,
        "jacobi_scaling": True,
    },
    "linear_solver": {"name": "schur", "eliminate": "Point3"},
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        raise UserError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nlls",
        description="Differentiable nonlinear least squares: solve problems from files.",
        epilog=("Exit status: 0 solved and converged, 1 solved without converging (after a failed solve "
                "nothing is written), 2 bad input."),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    solve = commands.add_parser(
        "solve",
        help="solve a pose graph (g2o, TORO) or bundle-adjustment (BAL) file",
        description=(
            "Solve a pose graph (g2o VERTEX_SE2/EDGE_SE2, VERTEX_SE3:QUAT/EDGE_SE3:QUAT; TORO "
            "VERTEX2/EDGE2, VERTEX3/EDGE3) or a bundle-adjustment problem (BAL). Shows progress on "
            "stderr (a progress bar when tqdm is installed and stderr is a terminal, else a line per "
            "iteration for the first ten, then at most one every 0.5 s) and a summary on stdout; the "
            "cost is 0.5 * sum e^T Omega e, as GTSAM and g2o report."
        ),
        epilog=("Exit status: 0 solved and converged, 1 solved without converging (after a failed solve "
                "nothing is written), 2 bad input (checked before solving where possible)."),
    )
    solve.add_argument("file", nargs="?", help="problem file; default: the bundled 2-D pose graph w100.graph")
    solve.add_argument("--config", help="YAML solver configuration (see configs/); default: LM + sparse Cholesky "
                                        "for pose graphs, configs/bundle_adjustment.yaml's settings for BAL files")
    solve.add_argument("--output", help="write the optimized problem here: a pose graph in g2o format, a BAL "
                                        "problem in BAL format")
    solve.add_argument("--plot", help="save a before/after plot here, format from the extension (needs "
                                      "matplotlib: pip install \"nlls[plot]\"; checked before solving)")
    solve.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    solve.add_argument("--dtype", default="float64", choices=("float64", "float32"), help="default: float64")
    solve.add_argument("--max-iterations", type=int, help="override optimizer.max_iterations")
    solve.add_argument("--quiet", action="store_true",
                       help="print no progress and no summary (errors still go to stderr; same exit status)")
    solve.add_argument("--json", action="store_true",
                       help="print one JSON object on stdout and nothing else there: problem, format, sizes, "
                            "initial_cost, final_cost (null if not finite), iterations, converged, "
                            "status_counts, elapsed_s, config, optimizer, linear_solver, device, dtype, output, plot "
                            "(null unless written), covariance (with --covariance), diagnosis (when singular); "
                            "no progress")
    solve.add_argument("--initialization", choices=("spanning_tree", "chain"),
                       help="pose graphs without VERTEX records: initial poses from a spanning tree of the "
                            "edges (default) or by chaining consecutive edges as GTSAM does")
    solve.add_argument("--information-order", choices=("auto", "toro", "g2o"),
                       help="2-D pose graphs: the order of the information fields (default auto: the "
                            "format's own, the other one when only it is positive definite)")
    solve.add_argument("--no-anchor", action="store_true",
                       help="pose graphs: add no prior on the first pose (by default one holds it, or the "
                            "first vertex a FIX record names, where it is: same cost, no gauge freedom)")
    cli_report.add_options(solve)
    return parser


def _without_anchor(problem, objective, dtype, device):
    """``problem``'s objective without the anchor, at ``objective``'s values."""
    free = problem.objective(dtype=dtype, device=device)
    free.update({name: block.tensor for name, block in objective.blocks.items()} if objective.blocks else
                {name: var.tensor for name, var in objective.optim_vars.items() if name in free.optim_vars})
    return free


class Progress:
    """The progress of a solve on ``stream``, as an ``optimize(callback=...)`` callback: a tqdm
    bar when ``bar`` (tqdm installed, a terminal), else plain lines (each of the first
    ``EVERY_ITERATION`` iterations, then at most one per ``LINE_INTERVAL`` seconds). It never
    stops the solve. :meth:`finish` shows the final state from the solve's report."""

    def __init__(self, stream: TextIO, total: int, bar: Optional[bool] = None,
                 clock: Optional[Callable[[], float]] = None):
        self.stream, self.clock = stream, clock or time.perf_counter
        self.printed_at = -math.inf
        self.last: Optional[tuple] = None  # (iteration, error) of the last line printed
        self.bar: Any = None
        if bar is None:
            bar = _isatty(stream)
        if bar:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, file=stream, unit="it", desc="nlls", dynamic_ncols=True, leave=True)

    def __call__(self, info: IterationInfo) -> None:
        if self.bar is not None:
            self.bar.update(info.iteration - self.bar.n)
            self.bar.set_postfix_str(f"error {_mean(info.error):.6g}, active {_active(info.active)}", refresh=False)
            return
        now = self.clock()
        if info.iteration <= EVERY_ITERATION or now - self.printed_at >= LINE_INTERVAL:
            damping = None if info.damping is None else float(info.damping.double().mean())
            step = float(info.step_norm.double().max()) if info.step_norm.numel() else 0.0
            self._line(info.iteration, _mean(info.error), _active(info.active), damping, step, info.elapsed)
            self.printed_at = now

    def finish(self, iterations: int, error: float, active: str, elapsed: float) -> None:
        """Show the end of the solve (the error the summary reports) and close the bar."""
        if self.bar is not None:
            self.bar.update(iterations - self.bar.n)
            self.bar.set_postfix_str(f"error {error:.6g}, active {active}", refresh=False)
            self.close()
            return
        if self.last != (iterations, f"{error:.10g}"):
            self._line(iterations, error, active, None, None, elapsed)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _line(self, iteration, error, active, damping, step, elapsed) -> None:
        self.last = (iteration, f"{error:.10g}")
        print(_progress_line(iteration, error, active, damping, step, elapsed), file=self.stream, flush=True)


def _progress_line(iteration: int, error: float, active: str, damping: Optional[float], step: Optional[float],
                   elapsed: float) -> str:
    return (f"iteration {iteration:3d}  error {error:.10g}  active {active}"
            + (f"  damping {damping:.2e}" if damping is not None else "")
            + (f"  step {step:.2e}" if step is not None else "") + f"  {elapsed:.2f} s")


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _mean(error: torch.Tensor) -> float:
    """The error shown: the mean over the batch (the value itself for one element)."""
    return float(error.detach().double().mean())


def _active(active: torch.Tensor) -> str:
    return f"{int(active.sum())}/{active.numel()}"


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device: unknown device {short_repr(name)}") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {short_repr(name)}: nlls solve runs on cpu or cuda")
    if device.type == "cpu" and device.index not in (None, 0):
        raise UserError(f"--device {name}: the CPU has no index (use cpu)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _check_backend(solver, device: torch.device) -> None:
    """Refuse a sparse backend that does not run on ``device`` before anything is solved."""
    backend = getattr(solver, "backend", None) if getattr(solver, "name", "") == "sparse_cholesky" else None
    if backend is not None and backend not in available_backends(device):
        raise UserError(f"linear_solver.backend {backend!r} does not run with --device {device.type}; "
                        f"on {device.type}: {', '.join(available_backends(device))}")


def _number(value: torch.Tensor) -> Optional[float]:
    """A JSON number, or ``None`` (null) for NaN and inf: JSON has none."""
    number = float(value)
    return number if math.isfinite(number) else None


def solve(args) -> int:
    import nlls
    from nlls import io

    device = _device(args.device)
    dtype = getattr(torch, args.dtype)
    path = Path(args.file) if args.file else io.bundled_dataset()
    if args.plot:
        cli_plot.check_plot(args.plot)
    if args.max_iterations is not None and args.max_iterations < 0:
        raise UserError(f"--max-iterations must be >= 0, got {args.max_iterations}")
    config = nlls.load_config(args.config) if args.config else None  # a bad file refused before reading
    started = time.perf_counter()
    options = {"initialization": args.initialization, "information_order": args.information_order}
    try:
        problem = io.read(path, **options)
    except ValueError as error:  # a pose-graph option for a BAL file (a malformed file is a FormatError)
        if isinstance(error, io.FormatError):
            raise
        raise UserError(str(error).removeprefix("read: ")) from None
    bal = isinstance(problem, io.BALProblem)
    if config is None:
        config = nlls.load_config(BAL_CONFIG if bal else DEFAULT_CONFIG)
    if args.max_iterations is not None:
        config.optimizer.max_iterations = args.max_iterations
    writer = problem.write_bal if isinstance(problem, io.BALProblem) else problem.write_g2o
    anchored = not bal and not args.no_anchor
    objective = problem.objective(dtype=dtype, device=device, **({"anchor": True} if anchored else {}))
    build_time = time.perf_counter() - started
    before = cli_plot.snapshot(problem, objective) if args.plot else None
    optimizer = nlls.build_optimizer(objective, config)
    _check_backend(optimizer.linear_solver, device)
    unknowns = optimizer.prepare().dof
    text = not (args.quiet or args.json)  # the summary (stdout) and progress (stderr)
    if text:
        print(f"{path}: {len(objective.optim_vars)} variables, {objective.size()} "
              f"cost functions, {unknowns} unknowns (read in {1e3 * build_time:.0f} ms)")
        for note in getattr(problem, "notes", ()):  # what the reader decided where the file left a choice
            print(f"{path}: {note}")
    progress = Progress(sys.stderr, optimizer.max_iterations) if text else None
    try:
        info = optimizer.optimize(callback=progress) if progress is not None else optimizer.optimize()
    except BaseException:
        if progress is not None:
            progress.close()  # no bar left open
        raise
    if progress is not None:
        progress.finish(int(info.iterations.max()), _mean(info.final_error),
                        _active(info.status == Status.RUNNING), info.elapsed)
    converged = bool(info.converged.all())
    finite = bool(torch.isfinite(info.final_error).all())
    failed = not finite or bool((info.status == nlls.Status.FAILED).any())
    report: Dict[str, Any] = {
        "problem": str(path), **cli_report.sizes(problem), "variables": len(objective.optim_vars),
        "cost_functions": objective.size(), "unknowns": unknowns,
        "initial_cost": _number(info.initial_error[0]), "final_cost": _number(info.final_error[0]),
        "iterations": int(info.iterations.max()), "converged": converged,
        "status_counts": {status.name.lower(): int((info.status == status).sum())
                          for status in Status if status != Status.RUNNING},
        "message": info.message, "elapsed_s": info.elapsed,
        "config": args.config or ("default: bundle adjustment" if bal else "default: pose graph"),
        "optimizer": type(optimizer).__name__,
        "linear_solver": repr(optimizer.linear_solver), "device": str(device), "dtype": args.dtype,
        "output": None, "plot": None,
    }
    say = print if text else (lambda *_: None)
    say("summary:")
    say(f"  problem          {path}")
    say(f"  initial cost     {info.initial_error[0].item():.10g}")
    say(f"  final cost       {info.final_error[0].item():.10g}")
    say(f"  iterations       {report['iterations']}")
    say(f"  time             {1e3 * info.elapsed:.1f} ms")
    say(f"  converged        {'yes' if converged else 'no'} ({info.message})")
    say(f"  configuration    {report['config']}")
    say(f"  optimizer        {report['optimizer']}")
    say(f"  linear solver    {report['linear_solver']}")
    say(f"  device, dtype    {device}, {args.dtype}")
    if info.failure is not None and bool((info.failure == Failure.LINEAR_SOLVE).any()):
        report["diagnosis"] = cli_report.diagnosis(objective, say)  # which variables leave it singular
    if args.covariance and not failed:  # of the graph as the file states it: without the anchor's prior
        free = _without_anchor(problem, objective, dtype, device) if anchored else objective
        report["covariance"] = cli_report.covariance(free, problem, args.gauge, say)
    targets = [name for name in (args.output, args.plot) if name]
    if failed and targets:
        why = "the final cost is not finite" if not finite else "a batch element failed"
        print(f"nlls: the solve failed ({why}): nothing written to {', '.join(targets)}", file=sys.stderr)
        if args.json:
            print(json.dumps(report))
        return 1
    if args.output:
        try:
            writer(args.output, objective)
        except OSError as exc:
            raise UserError(f"--output: cannot write {args.output}: {exc.strerror or exc}") from None
        report["output"] = args.output
        say(f"  written to       {args.output}")
    if args.plot:
        title = f"{path.name}: cost {info.initial_error[0].item():.4g} -> {info.final_error[0].item():.4g}"
        cli_plot.plot(args.plot, problem, before, cli_plot.snapshot(problem, objective), title)
        report["plot"] = args.plot
        say(f"  plot             {args.plot}")
    if args.json:
        print(json.dumps(report))
    return 0 if converged else 1


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``nlls`` command; returns the exit status."""
    import nlls

    parser = _parser()
    try:
        args = parser.parse_args(argv)
        if args.command != "solve":
            parser.print_help()
            return 2
        return solve(args)
    except (UserError, nlls.ConfigError, nlls.io.FormatError, OSError) as exc:
        print(f"nlls: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = " ".join(str(exc).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."
