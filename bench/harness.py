"""What every benchmark here shares: timing, JSON lines, markdown tables, options, environment.

* **Timing.** :class:`Timed` wraps a call as a timer (wall clock, ms per call, ``inner`` calls
  per sample, a device synchronization before the clock starts and before it stops on CUDA);
  :func:`warm_up` makes the warm-up calls; :func:`interleaved` calls several timers in turns,
  one call of each per repetition, up to a number of repetitions or a time budget, so a slow
  spell of a shared machine hits neighbouring calls alike; :func:`paired_median` is the median of
  the per-repetition ratios of two methods, which such a spell leaves standing.
* **Output.** :class:`Emitter` prints one JSON line per measurement on stdout (optionally also
  into a file) and keeps the records; :func:`markdown_table` formats the summary that each script
  prints on stderr.
* **Options.** :func:`add_common_options` adds ``--device``, ``--threads``, ``--warmup``,
  ``--repeats``, ``--max-seconds`` and ``--seed`` with each script's defaults.
* **Environment.** :func:`environment`: torch's version, threads, the device and the CPU (and
  the GPU), emitted by every script as its first line (``"measure": "environment"``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import IO, Callable, Dict, Iterable, List, Optional, Sequence

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")


# ---- devices and threads ---------------------------------------------------------------------
def setup_device(name: str):
    """``(device, sync)`` for ``--device``: the torch device and the function every timing calls
    before starting and before stopping its clock (``torch.cuda.synchronize``; None on the CPU).

    Raises:
        ValueError: the device cannot be used, with the reason.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"--device {name!r}: {exc}") from None
    if device.type == "cpu":
        return device, None
    if device.type != "cuda":
        raise ValueError(f"--device {name!r}: cpu or cuda")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available (torch {torch.__version__}, "
                         f"built with CUDA {torch.version.cuda})")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: no CUDA device {device.index} "
                         f"({torch.cuda.device_count()} visible)")
    return device, lambda: torch.cuda.synchronize(device)


def set_threads(threads: Optional[int]) -> None:
    """torch's intra-op threads; ``None`` or ``<= 0`` leaves torch's choice."""
    if threads is not None and threads > 0:
        torch.set_num_threads(threads)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: Optional[torch.device] = None) -> Dict:
    """What a number depends on: versions, threads, the device, the CPU (and the GPU)."""
    device = torch.device(device or "cpu")
    record = {"torch": torch.__version__, "python": platform.python_version(),
              "threads": torch.get_num_threads(), "device": str(device), "cpu": _cpu_name(),
              "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        record.update(gpu=torch.cuda.get_device_name(device), torch_cuda=torch.version.cuda)
    return record


# ---- timing ------------------------------------------------------------------------------
class Timed:
    """A timer of ``function``: each call times ``inner`` calls of it and returns ms per call.

    ``sync`` (CUDA: ``torch.cuda.synchronize``) runs before the clock starts and before it stops,
    so the GPU work queued by the calls is inside the time. ``result`` is the last return value.
    """

    def __init__(self, function: Callable, sync: Optional[Callable[[], None]] = None,
                 inner: int = 1):
        self.function, self.sync, self.inner, self.result = function, sync, inner, None

    def __call__(self) -> float:
        if self.sync is not None:
            self.sync()
        begin = time.perf_counter()
        for _ in range(self.inner):
            self.result = self.function()
        if self.sync is not None:
            self.sync()
        return 1e3 * (time.perf_counter() - begin) / self.inner


def warm_up(timer: Callable[[], float], calls: int, enough_ms: float = float("inf")) -> List[float]:
    """``calls`` warm-up calls of ``timer`` (fewer once one call took ``enough_ms``: a call
    that long is warm-up enough); their times in ms."""
    times = []
    for _ in range(calls):
        times.append(timer())
        if times[-1] >= enough_ms:
            break
    return times


def interleaved(timers: Dict[str, Callable[[], float]], repeats: int,
                max_seconds: float = float("inf"),
                allowed: Optional[Dict[str, int]] = None) -> Dict[str, List[float]]:
    """Times in ms of each timer, called in turns: one call of each per repetition, up to
    ``repeats`` repetitions or until ``max_seconds`` of timed calls are spent (at least one).
    ``allowed[name]``: at most that many calls of ``name`` (a slow method repeated less)."""
    times: Dict[str, List[float]] = {name: [] for name in timers}
    spent = 0.0
    for repetition in range(repeats):
        for name, timer in timers.items():
            if allowed is not None and repetition >= allowed.get(name, repeats):
                continue
            times[name].append(timer())
            spent += times[name][-1] / 1e3
        if spent >= max_seconds:
            break
    return times


def inner_calls(function: Callable, sync: Optional[Callable[[], None]] = None,
                target_ms: float = 2.0, most: int = 1000) -> int:
    """Calls per sample so that a sample of back-to-back calls lasts about ``target_ms``."""
    warm_up(Timed(function, sync), 3)
    once = Timed(function, sync)()
    return max(1, min(most, int(target_ms / max(once, 1e-6))))


def seconds(function: Callable, sync: Optional[Callable[[], None]] = None):
    """``(seconds, result)`` of one call of ``function``."""
    timer = Timed(function, sync)
    ms = timer()
    return ms / 1e3, timer.result


def clock(function: Callable, times: Dict[str, float], phase: str):
    """``function()``, its wall-clock seconds stored in ``times[phase]`` (one phase of a run)."""
    begin = time.perf_counter()
    result = function()
    times[phase] = time.perf_counter() - begin
    return result


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def paired_median(numerators: Sequence[float], denominators: Sequence[float]) -> Optional[float]:
    """Median of the per-repetition ratios (robust to drifts slower than one repetition);
    None without pairs."""
    pairs = list(zip(numerators, denominators))
    return statistics.median(n / d for n, d in pairs) if pairs else None


class Pinned:
    """Pins this process to ``cpus`` inside the block (no pinning when ``cpus`` is empty)."""

    def __init__(self, cpus: Optional[List[int]]):
        self.cpus, self.saved = cpus, None

    def __enter__(self):
        if self.cpus:
            self.saved = os.sched_getaffinity(0)
            os.sched_setaffinity(0, set(self.cpus))
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            os.sched_setaffinity(0, self.saved)


# ---- output ------------------------------------------------------------------------------
class Emitter:
    """One JSON line per measurement, ``{"bench": bench, **record}``, on stdout (and into
    ``output`` when given); ``rows`` keeps the records for the table."""

    def __init__(self, bench: str, output: Optional[IO[str]] = None):
        self.bench, self.output, self.rows = bench, output, []

    def __call__(self, record: Dict, keep: bool = True) -> Dict:
        line = json.dumps({"bench": self.bench, **record})
        print(line, flush=True)
        if self.output is not None:
            self.output.write(line + "\n")
            self.output.flush()
        if keep:
            self.rows.append(record)
        return record

    def environment(self, device=None, **extra) -> Dict:
        """The environment line (not kept for the table)."""
        return self({"measure": "environment", **environment(device), **extra}, keep=False)


def fmt(value, spec: str = "", missing: str = "–") -> str:
    """``format(value, spec)``, ``missing`` for None."""
    return missing if value is None else format(value, spec)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], align: str = "") -> str:
    """A markdown table; ``align`` one letter per column, ``l`` or ``r`` (default ``l``)."""
    align = align.ljust(len(header), "l")
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(text: str) -> None:
    """The summary on stderr."""
    print(text, file=sys.stderr, flush=True)


# ---- options ------------------------------------------------------------------------------
_UNSET = object()


def add_common_options(parser: argparse.ArgumentParser, *, device="cpu", threads=0, warmup=2,
                       repeats=7, max_seconds=_UNSET, seed=0,
                       help: Optional[Dict[str, str]] = None) -> None:
    """The options every script shares, with its defaults; an option whose default is ``False``
    (or, for ``max_seconds``, not given) is left out. ``help`` overrides the help of an option
    by its dest name (``{"threads": "..."}``)."""
    help_texts = help or {}
    options = (
        ("--device", device, str, "cpu or cuda"),
        ("--threads", threads, int, "torch intra-op threads (0: torch's choice)"),
        ("--warmup", warmup, int, "warm-up calls per method"),
        ("--repeats", repeats, int, "timed repetitions"),
        ("--max-seconds", max_seconds, float, "stop repeating a measurement after this many seconds"),
        ("--seed", seed, int, "seed of the data"),
    )
    for flag, default, kind, text in options:
        if default is _UNSET or default is False:
            continue
        dest = flag[2:].replace("-", "_")
        parser.add_argument(flag, type=kind, default=default,
                            help=help_texts.get(dest, f"{text} (default {default})"))


def split(text: Optional[str], cast=str) -> list:
    """``"a,b,,c"`` -> ``[cast(a), cast(b), cast(c)]``; empty or None -> ``[]``."""
    return [cast(v) for v in (text or "").split(",") if v]


def check_choices(parser: argparse.ArgumentParser, given: Iterable[str], allowed: Iterable[str],
                  what: str) -> None:
    """``parser.error`` naming the unknown ``what`` (methods, problems) among ``given``."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        parser.error(f"unknown {what} {unknown}; choose from {sorted(allowed)}")


def start(parser, args, bench: str):
    """The common start of a bench script: the device from ``--device`` (``parser.error`` when
    it cannot be had), the thread count, and an :class:`Emitter` that has printed the
    environment line. Sets ``args.device`` and ``args.sync``; returns the emitter."""
    try:
        args.device, args.sync = setup_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    set_threads(args.threads)
    emit = Emitter(bench)
    emit.environment(args.device)
    return emit
