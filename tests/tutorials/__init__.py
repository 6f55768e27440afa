"""Tests that run the tutorials (small sizes) and check their numbers."""
import importlib.util
from pathlib import Path


def load_tutorial(path: Path):
    """Import a tutorial script by path (their names start with digits) as a module."""
    spec = importlib.util.spec_from_file_location(f"tutorial_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_single_threaded(function, **kwargs):
    """Call ``function(**kwargs)`` with one torch thread: the tutorials' solves are tiny, and
    more threads only spin on a shared machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return function(**kwargs)
    finally:
        torch.set_num_threads(threads)
