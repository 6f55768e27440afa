"""nlls beside Optimistix (JAX) on CPU or GPU: batched fixed-iteration solves, forward and backward.

``--device cpu`` (the default) or ``--device cuda``.

Three problems (``problems_curve.py``), ``B`` independent fits solved together, each method
running a fixed number of iterations from the same start:

* ``quadratic``: y = a x^2 + b, 100 points, Gauss-Newton, 15 iterations, float32;
* ``exponential``: y = a exp(-b x) + c, 100 points, LM, 20 iterations, float64;
* ``rotation`` (tutorial 04): a rotation from 20 noisy point pairs ``q_k = R p_k + noise``, LM,
  20 iterations, float64, from the identity.

Methods: ``handwritten`` (a vectorized torch loop: the speed limit), ``nlls_analytic`` (eager
``optimize()``), ``nlls_analytic_compiled`` (``optimize(compile=True)``) and ``optimistix``
(``jax.jit(jax.vmap(solve))`` around ``optimistix.least_squares``). Optimistix runs in a child
process with the JAX venv's python (``optimistix_runner.py``, driven by ``methods_optimistix.py``),
so JAX and torch never share a process; the parent sends it one command per timed call, so its
calls are interleaved with the torch calls like the others. Forward + backward:
``nlls.OptimizationLayer`` (implicit) against ``jax.value_and_grad`` through
``optimistix.least_squares`` (implicit adjoint) on the quadratic fit. One JSON line per
measurement on stdout, a markdown table on stderr, the lines also in
``bench/results/optimistix_<device>.jsonl``. See bench/README.md.

On ``--device cuda`` the torch data and solves live on the GPU, every torch timing synchronizes,
and the methods are the CUDA ones: ``handwritten``, ``handwritten_cuda_graph`` (the loop captured
in one ``torch.cuda.CUDAGraph``), ``nlls_analytic``, ``nlls_analytic_cuda_graph``
(``optimize(cuda_graph=True)``), ``optimistix`` (JAX on its GPU backend, else skipped); forward +
backward: ``handwritten_unroll``, ``nlls_implicit``, ``nlls_implicit_cuda_graph``,
``optimistix_implicit``.

    python3 -m venv .venv-jax && .venv-jax/bin/pip install "jax[cpu]" optimistix numpy
    .venv/bin/python bench/bench_optimistix.py            # ~4-6 min (first run: + compilation)
    .venv/bin/python bench/bench_optimistix.py --quick    # smoke run
    python bench/bench_optimistix.py --device cuda --jax-python "$(which python)"   # on a GPU
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from typing import List, Optional

import harness
import torch
from measure_optimistix import bench_forward, bench_grad
from methods_optimistix import DEFAULT_JAX_PYTHON, OptimistixChild
from problems_curve import PROBLEMS
from report_optimistix import acceptance, acceptance_gpu, table

DEFAULT_OUTPUT = os.path.join(harness.RESULTS, "optimistix_{device}.jsonl")
FORWARD_METHODS = ("handwritten", "handwritten_cuda_graph", "nlls_analytic", "nlls_analytic_compiled",
                   "nlls_analytic_cuda_graph", "optimistix")
GRAD_METHODS = ("handwritten_unroll", "nlls_implicit", "nlls_implicit_compiled",
                "nlls_implicit_cuda_graph", "optimistix_implicit")
# what runs by default on each device: the compiled methods are the CPU way to cut overhead, the
# CUDA-graph ones the GPU way (on CUDA the compiled ones print a skipped line unless named)
DEFAULT_METHODS = {
    "cpu": (("handwritten", "nlls_analytic", "nlls_analytic_compiled", "optimistix"),
            ("handwritten_unroll", "nlls_implicit", "nlls_implicit_compiled", "optimistix_implicit")),
    "cuda": (FORWARD_METHODS, GRAD_METHODS),
}


class Interrupted(BaseException):
    """SIGTERM (``timeout``): stop measuring, print what was measured."""


def _on_sigterm(signum, frame):
    raise Interrupted(f"signal {signum}")


def parse_args(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default=None,
                        help="default 1,256,4096 (cuda: 1,256,4096,65536; --quick: 1,256)")
    parser.add_argument("--problems", default="quadratic,exponential,rotation")
    parser.add_argument("--methods", default=None,
                        help=f"forward methods, a subset of {','.join(FORWARD_METHODS)} (default: "
                             f"cpu {','.join(DEFAULT_METHODS['cpu'][0])}; cuda "
                             f"{','.join(DEFAULT_METHODS['cuda'][0])}, the compiled one skipped "
                             f"unless named here)")
    parser.add_argument("--grad-batch-sizes", default=None,
                        help="batch sizes of the forward+backward lines (quadratic), default "
                             "256,4096 (cuda: 1,256,4096; --quick: 256); '' for none")
    parser.add_argument("--grad-methods", default=None,
                        help=f"a subset of {','.join(GRAD_METHODS)} (default: as --methods, per device)")
    parser.add_argument("--num-points", type=int, default=100)
    harness.add_common_options(parser, threads=1, warmup=None, repeats=None, max_seconds=10.0, help={
        "device": "cpu (default) or cuda: torch data, solves and timings on the GPU, JAX on its "
                  "GPU backend",
        "warmup": "default 3 (--quick: 1)", "repeats": "default 15 (--quick: 3)",
        "max_seconds": "stop repeating a measurement after this many seconds (all methods)",
        "threads": "torch intra-op threads (default 1)"})
    parser.add_argument("--pin-cpu", type=int, default=None,
                        help="CPU both processes run the timed calls on (default on cpu: the last one "
                             "this process may use; on cuda: -1; -1: no pinning, JAX then uses every "
                             "core)")
    parser.add_argument("--jax-python", default=None,
                        help="python with jax and optimistix, run as the child process (default "
                             ".venv-jax/bin/python; on cuda: that if it exists, else this python, "
                             "for a machine where JAX with CUDA is installed beside torch: "
                             "--jax-python \"$(which python)\")")
    parser.add_argument("--output", default=None,
                        help="JSON lines file (default bench/results/optimistix_<cpu|cuda>.jsonl); "
                             "'' for none")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: B = 1 and 256, grad at 256, 3 repeats")
    args = parser.parse_args(argv)
    try:
        args.device, args.sync = harness.setup_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    args.cuda = args.device.type == "cuda"
    kind = "cuda" if args.cuda else "cpu"
    defaults = (("batch_sizes", "1,256,4096,65536" if args.cuda else "1,256,4096", "1,256"),
                ("grad_batch_sizes", "1,256,4096" if args.cuda else "256,4096", "256"),
                ("repeats", 15, 3), ("warmup", 3, 1))
    for key, full, quick in defaults:
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    args.methods_given, args.grad_methods_given = args.methods is not None, args.grad_methods is not None
    args.methods = harness.split(args.methods if args.methods_given else ",".join(DEFAULT_METHODS[kind][0]))
    args.grad_methods = harness.split(args.grad_methods if args.grad_methods_given
                                      else ",".join(DEFAULT_METHODS[kind][1]))
    harness.check_choices(parser, args.methods + args.grad_methods, FORWARD_METHODS + GRAD_METHODS,
                          "methods")
    args.problems = harness.split(args.problems)
    harness.check_choices(parser, args.problems, PROBLEMS, "problems")
    if args.jax_python is None:
        args.jax_python = (DEFAULT_JAX_PYTHON if not args.cuda or os.path.exists(DEFAULT_JAX_PYTHON)
                           else sys.executable)
    if args.output is None:
        args.output = DEFAULT_OUTPUT.format(device=kind)
    if args.pin_cpu is None:
        args.pin_cpu = -1 if args.cuda else max(os.sched_getaffinity(0))
    args.pin = None if args.pin_cpu < 0 else [args.pin_cpu]
    return args


def _setup_record(args, child) -> dict:
    """The ``setup`` line: the environment, the versions and CPUs of the child."""
    record = {"measure": "setup", **harness.environment(args.device), "pin_cpu": args.pin_cpu,
              **child.versions()}
    if args.cuda:
        record.update(jax_python=args.jax_python, jax_device=child.info.get("device"))
    if child.error:
        record["optimistix_skipped"] = child.error
    return record


def measure_all(args, emit) -> Optional[str]:
    """Every measurement, the child started and ended around them; returns why it stopped early
    (SIGTERM, Ctrl-C) or None."""
    previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    interrupted = None
    try:
        with tempfile.TemporaryDirectory(prefix="nlls_optimistix_") as workdir:
            child = OptimistixChild(args.jax_python, args.pin, workdir, cuda=args.cuda)
            emit(_setup_record(args, child))
            try:
                for name in args.problems:
                    for batch in harness.split(args.batch_sizes, int):
                        bench_forward(PROBLEMS[name], batch, args, child, emit)
                for batch in harness.split(args.grad_batch_sizes, int):
                    bench_grad(batch, args, child, emit)
            except (KeyboardInterrupt, Interrupted) as exc:
                signal_name = "SIGTERM" if isinstance(exc, Interrupted) else "Ctrl-C"
                interrupted = (f"interrupted ({signal_name}): the lines above are the measurements "
                               f"finished before")
            finally:
                child.close(kill=interrupted is not None)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    return interrupted


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(max(args.threads, 1))
    started = time.perf_counter()
    out = None
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        out = open(args.output, "w")
    emit = harness.Emitter("optimistix", out)
    try:
        interrupted = measure_all(args, emit)
    finally:
        if out is not None:
            out.close()
    rows = emit.rows
    title = "Acceptance (GPU, cuda_graph=True)" if args.cuda else "Acceptance (issue 9, CPU)"
    verdict = acceptance_gpu(rows) if args.cuda else acceptance(rows)
    text = table([r for r in rows if r.get("measure") != "setup"], cuda=args.cuda)
    if interrupted:
        text += f"\n\n{interrupted}"
    harness.report(text)
    harness.report(f"\n{title}:\n" + verdict)
    harness.report(f"\n{json.dumps(rows[0])}\ntotal {time.perf_counter() - started:.0f} s")
    if args.output:
        with open(os.path.splitext(args.output)[0] + ".md", "w") as f:
            f.write(text + f"\n\n{title}:\n" + verdict + "\n")
    if interrupted:
        sys.exit(128 + (signal.SIGTERM if "SIGTERM" in interrupted else signal.SIGINT))


if __name__ == "__main__":
    main()
