import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def devices():
    """Devices the dense-path tests run on: CPU always, CUDA when present."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    return out


@pytest.fixture
def registries():
    """Whatever a test registers by name (linear solvers, backward modes) is gone afterwards."""
    from nlls.backward import BACKWARD_MODES
    from nlls.solve.linear import LINEAR_SOLVERS

    saved = [(registry, dict(registry)) for registry in (LINEAR_SOLVERS, BACKWARD_MODES)]
    yield
    for registry, before in saved:
        registry.clear()
        registry.update(before)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny batched LAPACK calls spin OpenMP threads on a loaded machine: one thread for a module
    (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
