"""Marginals of real pose graphs with a prior on the first pose equal GTSAM's ``Marginals`` to
1e-6 relative: always against tests/data/marginals_*.npz (written by
bench/reference_marginals.py), and against live GTSAM when it is installed (skipped otherwise)."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nlls

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import reference_marginals  # noqa: E402

NAMES = ["w100", "pose3example"]


def _at_reference(name):
    reference = dict(np.load(ROOT / "tests" / "data" / f"marginals_{name}.npz"))
    problem = nlls.io.read(reference_marginals.DATA / reference_marginals.GRAPHS[name])
    objective, _ = reference_marginals.with_prior(problem, reference["sigmas"].tolist())
    objective.update({f"x{i}": torch.from_numpy(p[None]) for i, p in zip(reference["ids"], reference["poses"])})
    return reference, objective


def _relative_error(got, expected):
    return float((np.abs(got - expected).max(axis=(1, 2)) / np.abs(expected).max(axis=(1, 2))).max())


@pytest.mark.parametrize("solver", ["dense_cholesky", "sparse_cholesky"])
@pytest.mark.parametrize("name", NAMES)
def test_marginals_equal_gtsam(name, solver):
    reference, objective = _at_reference(name)
    names = [f"x{i}" for i in reference["ids"]]
    cov = nlls.Covariance(objective, linear_solver=solver).compute()
    assert cov.ok.all() and int(cov.null_space_dim) == 0
    got = np.stack([cov.marginal(n)[0].numpy() for n in names])
    assert _relative_error(got, reference["marginals"]) < 1e-6


@pytest.mark.skipif(importlib.util.find_spec("gtsam") is None, reason="gtsam is not installed")
@pytest.mark.parametrize("name", NAMES)
def test_the_files_are_what_gtsam_computes(name):
    reference, objective = _at_reference(name)
    live = reference_marginals.gtsam_marginals(reference_marginals.DATA / reference_marginals.GRAPHS[name],
                                               int(reference["dimension"]), reference["ids"], reference["poses"],
                                               reference["sigmas"])
    np.testing.assert_allclose(live, reference["marginals"], rtol=1e-12, atol=0)
    cov = nlls.Covariance(objective)
    got = cov.joint([f"x{i}" for i in reference["ids"][:3]])[0].numpy()
    dof = live.shape[-1]
    blocks = np.stack([got[k * dof:(k + 1) * dof, k * dof:(k + 1) * dof] for k in range(3)])
    assert _relative_error(blocks, live[:3]) < 1e-6
