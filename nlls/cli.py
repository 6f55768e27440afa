"""``nlls solve``: solve a pose graph or bundle-adjustment file from the shell.

    nlls solve [FILE] [--config CONFIG.yaml] [--output OUT] [--plot OUT.png]
               [--device cpu|cuda] [--dtype float64|float32] [--max-iterations N] [--quiet]

``FILE`` is a g2o (``VERTEX_SE2``/``EDGE_SE2``, ``VERTEX_SE3:QUAT``/``EDGE_SE3:QUAT``), TORO
(``VERTEX2``/``EDGE2``, ``VERTEX3``/``EDGE3``) or BAL file, detected from its records; with no
``FILE`` the 2-D pose graph bundled with the package (GTSAM's ``w100.graph``) is solved. The
solver is Levenberg-Marquardt with the sparse Cholesky solver unless ``--config`` says otherwise.
User errors (unreadable or malformed files, bad configurations, a device or linear-solver
backend this machine lacks) print one line naming the file and line or the key, and exit with
status 2. ``--output`` and ``--plot`` are written whole or not at all (a temporary file beside
the destination, renamed on success), and only when the solve succeeded: after a failed solve
(a batch element failed, or the final cost is not finite) an existing file is left as it was.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

from .io.files import atomic_path
from .solve.checks import short_repr
from .solve.linear.sparse import available_backends

MAX_MESSAGE = 500  # characters of an error line

DEFAULT_CONFIG = {
    "optimizer": {
        "name": "levenberg_marquardt",
        "max_iterations": 100,
        "abs_err_tolerance": 0.0,
        "rel_err_tolerance": 1e-10,
    },
    "linear_solver": {"name": "sparse_cholesky"},
}


class UserError(Exception):
    """A problem with the user's input: reported in one line, no traceback."""


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
            "VERTEX2/EDGE2, VERTEX3/EDGE3) or a bundle-adjustment problem (BAL). Shows progress "
            "per iteration and a summary; the cost is 0.5 * sum e^T Omega e, as GTSAM and g2o report."
        ),
    )
    solve.add_argument("file", nargs="?", help="problem file; default: the bundled 2-D pose graph w100.graph")
    solve.add_argument("--config", help="YAML solver configuration (see configs/); default: LM + sparse Cholesky")
    solve.add_argument("--output", help="write the optimized pose graph here, in g2o format")
    solve.add_argument("--plot", help="save a before/after plot to this PNG (needs matplotlib)")
    solve.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    solve.add_argument("--dtype", default="float64", choices=("float64", "float32"), help="default: float64")
    solve.add_argument("--max-iterations", type=int, help="override optimizer.max_iterations")
    solve.add_argument("--quiet", action="store_true", help="print the summary only")
    return parser


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


def _translations(problem_objective) -> torch.Tensor:
    """``(N, 2|3)`` positions of the pose variables (first batch element)."""
    points = []
    for var in problem_objective.optim_vars.values():
        if hasattr(var, "translation"):
            points.append(var.translation()[0].detach().cpu())
        elif var.dof() == 3:
            points.append(var.tensor[0].detach().cpu())
    return torch.stack(points) if points else torch.zeros(0, 2)


def _plot(path: str, before: torch.Tensor, after: torch.Tensor, title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'nlls[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, points, label in ((axes[0], before, "initial"), (axes[1], after, "optimized")):
        style = "-" if points.shape[0] < 5000 else ","
        ax.plot(points[:, 0].numpy(), points[:, 1].numpy(), style, lw=0.8, ms=2)
        ax.set_title(f"{label}")
        ax.set_aspect("equal", adjustable="datalim")
    fig.suptitle(title)
    image_format = Path(path).suffix[1:].lower() or "png"
    try:
        if image_format not in fig.canvas.get_supported_filetypes():
            raise UserError(f"--plot {short_repr(path)}: unknown image format {image_format!r}; one of "
                            f"{', '.join(sorted(fig.canvas.get_supported_filetypes()))}")
        with atomic_path(path) as temporary:
            fig.savefig(temporary, format=image_format, dpi=110, bbox_inches="tight")
    except OSError as exc:
        raise UserError(f"--plot: cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def solve(args) -> int:
    import nlls
    from nlls import io

    device = _device(args.device)
    dtype = getattr(torch, args.dtype)
    path = Path(args.file) if args.file else io.bundled_dataset()
    config = nlls.load_config(args.config) if args.config else nlls.load_config(DEFAULT_CONFIG)
    if args.max_iterations is not None:
        if args.max_iterations < 0:
            raise UserError(f"--max-iterations must be >= 0, got {args.max_iterations}")
        config.optimizer.max_iterations = args.max_iterations
    started = time.perf_counter()
    problem = io.read(path)
    writer = None
    if args.output:
        writer = getattr(problem, "write_g2o", None)
        if writer is None:
            raise UserError(f"--output: writing is supported for pose graphs (g2o), not for {path.name}")
    objective = problem.objective(dtype=dtype, device=device)
    build_time = time.perf_counter() - started
    before = _translations(objective)
    optimizer = nlls.build_optimizer(objective, config)
    _check_backend(optimizer.linear_solver, device)
    if not args.quiet:
        print(f"{path}: {len(objective.optim_vars)} variables, {len(objective.cost_functions)} "
              f"cost functions, {optimizer.prepare().dof} unknowns (read in {1e3 * build_time:.0f} ms)")
    info = optimizer.optimize(verbose=not args.quiet)
    converged = bool(info.converged.all())
    finite = bool(torch.isfinite(info.final_error).all())
    failed = not finite or bool((info.status == nlls.Status.FAILED).any())
    print("summary:")
    print(f"  problem          {path}")
    print(f"  initial cost     {info.initial_error[0].item():.10g}")
    print(f"  final cost       {info.final_error[0].item():.10g}")
    print(f"  iterations       {int(info.iterations.max())}")
    print(f"  time             {1e3 * info.elapsed:.1f} ms")
    print(f"  converged        {'yes' if converged else 'no'} ({info.message})")
    print(f"  optimizer        {type(optimizer).__name__}")
    print(f"  linear solver    {optimizer.linear_solver!r}")
    print(f"  device, dtype    {device}, {args.dtype}")
    targets = [name for name in (args.output, args.plot) if name]
    if failed and targets:
        why = "the final cost is not finite" if not finite else "a batch element failed"
        print(f"nlls: the solve failed ({why}): nothing written to {', '.join(targets)}", file=sys.stderr)
        return 1
    if writer is not None:
        try:
            writer(args.output, objective)
        except OSError as exc:
            raise UserError(f"--output: cannot write {args.output}: {exc.strerror or exc}") from None
        print(f"  written to       {args.output}")
    if args.plot:
        _plot(args.plot, before, _translations(objective), f"{path.name}: cost {info.initial_error[0].item():.4g}"
              f" -> {info.final_error[0].item():.4g}")
        print(f"  plot             {args.plot}")
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
