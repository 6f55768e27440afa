"""Normal use is quiet: no warning and no compiler report from nlls's own code on the compiled
path (analytic, autodiff and black-box cost functions, optimize and the layer)."""
import subprocess
import sys
from pathlib import Path

import pytest

import nlls

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import warnings
warnings.simplefilter("error")  # every warning is an error, but these third-party ones:
# torch warns about its own TorchScript internals when the compiler is imported lazily
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script(_method)?` is deprecated", category=DeprecationWarning)
import numpy as np
import torch
import nlls
from tests.problems import QuadFit, autodiff_objective, exp_data, exp_error, quad_data

F64 = torch.float64
x, y, _ = quad_data(3, points=20)
ab = nlls.Vector(tensor=torch.zeros(3, 2, dtype=F64), name="ab")
objective = nlls.Objective()
objective.add(QuadFit(ab, nlls.Variable(x, name="x"), nlls.Variable(y, name="y")))
nlls.GaussNewton(objective, max_iterations=4, check_every=2).optimize(compile=True)
nlls.GaussNewton(objective, max_iterations=4, check_every=4).optimize(compile=True)

xe, ye, _ = exp_data(2, points=20)
objective, p = autodiff_objective(exp_error, 3, xe, ye, torch.tensor([[1.0, 1.0, 0.0]], dtype=F64).repeat(2, 1))
layer = nlls.OptimizationLayer(nlls.LevenbergMarquardt(objective, max_iterations=30), compile=True)
yy = ye.clone().requires_grad_(True)
solution, info = layer({"y": yy})
solution["p"].sum().backward()
assert info.converged.all()

def black_box(optim, aux):
    v, = optim
    t, = aux
    return torch.as_tensor(np.asarray(v.tensor)[:, :1] * np.asarray(t.tensor) - 1.0)

numeric = nlls.Objective()
v = nlls.Vector(tensor=torch.ones(2, 2, dtype=F64), name="v")
numeric.add(nlls.NumericDiffCostFunction((v,), black_box, 3, name="bb",
            aux_vars=(nlls.Variable(torch.ones(2, 3, dtype=F64), name="t"),)))
nlls.GaussNewton(numeric, max_iterations=4, check_every=2).optimize(compile=True)
print("quiet")
'''


def test_the_compiled_path_is_quiet():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "quiet"
    assert "Graph break" not in result.stderr and "Warning" not in result.stderr, result.stderr[-3000:]


def test_the_layer_takes_compile_and_cuda_graph_as_defaults():
    import torch

    from tests.problems import QuadFit, quad_data

    x, y, _ = quad_data(2, points=10)
    ab = nlls.Vector(tensor=torch.zeros(2, 2, dtype=torch.float64), name="ab")
    objective = nlls.Objective()
    objective.add(QuadFit(ab, nlls.Variable(x, name="x"), nlls.Variable(y, name="y")))
    layer = nlls.OptimizationLayer(nlls.GaussNewton(objective), cuda_graph=True)
    assert layer.default_cuda_graph and not layer.default_compile
    with pytest.raises(ValueError, match="CUDA device"):  # the default applies to the calls
        layer({"y": y})
    solution, info = layer({"y": y}, cuda_graph=False)  # a call's flag wins
    assert info.converged.all()
    with pytest.raises(ValueError, match="exclusive"):
        nlls.OptimizationLayer(nlls.GaussNewton(objective), compile=True, cuda_graph=True)
    with pytest.raises(TypeError, match="compile must be a bool"):
        nlls.OptimizationLayer(nlls.GaussNewton(objective), compile="yes")
