"""``nlls solve --covariance`` prints the first and last poses' marginal standard deviations (and
``--json`` holds them); a solve that fails on singular normal equations prints the diagnosis."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from nlls.cli import main

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _json(capsys, argv):
    status = main(argv + ["--json"])
    return status, json.loads(capsys.readouterr().out)


def test_covariance_of_the_first_and_last_poses(capsys):
    assert main(["solve", "--covariance", "--quiet"]) == 0
    status = main(["solve", "--covariance"])
    out = capsys.readouterr().out
    assert status == 0
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if "covariance" in line and "held fixed" in line)
    assert "x0 held fixed; marginal standard deviations (x, y, theta)" in lines[head]
    first, last = lines[head + 1].split(), lines[head + 2].split()
    assert first == ["x0", "0", "0", "0"] and last[0] == "x99" and all(float(v) > 0 for v in last[1:])
    status, report = _json(capsys, ["solve", "--covariance"])
    entry = report["covariance"]
    assert entry["gauge"] == "first" and entry["ok"] and set(entry["variables"]) == {"x0", "x99"}
    marginal = np.array(entry["variables"]["x99"]["covariance"])
    np.testing.assert_allclose(marginal, marginal.T)
    np.testing.assert_allclose(np.sqrt(marginal.diagonal()), entry["variables"]["x99"]["std"])
    assert [float(v) for v in last[1:]] == [float(f"{v:.6g}") for v in entry["variables"]["x99"]["std"]]


def test_pseudo_inverse_gauge_and_bundle_adjustment(capsys):
    status, report = _json(capsys, ["solve", "--covariance", "--gauge", "pseudo_inverse"])
    stds = report["covariance"]["variables"]["x0"]["std"]
    assert status == 0 and all(v > 0 for v in stds)
    status, report = _json(capsys, ["solve", str(DATA / "dubrovnik-3-7-pre.txt"), "--covariance"])
    entry = report["covariance"]
    assert entry["gauge"] == "pseudo_inverse" and set(entry["variables"]) == {"c0", "c2"}
    assert all(v is None or math.isfinite(v) for v in entry["variables"]["c2"]["std"])


def test_a_singular_solve_prints_the_diagnosis(tmp_path, capsys):
    config = tmp_path / "gn.yaml"
    config.write_text("optimizer:\n  name: gauss_newton\nlinear_solver:\n  name: dense_cholesky\n")
    status = main(["solve", "--config", str(config), "--covariance", "--no-anchor"])  # (anchored: regular)
    out = capsys.readouterr().out
    assert status == 1
    assert "diagnosis (the normal equations are singular):" in out
    assert "3 gauge direction(s) shared by all 100 SE2 variables" in out
    assert "marginal standard deviations" not in out  # no covariance after a failed solve
    status, report = _json(capsys, ["solve", "--config", str(config), "--no-anchor"])
    (finding,) = report["diagnosis"]["findings"]
    assert status == 1 and finding["kind"] == "gauge" and finding["directions"] == 3
    assert report["diagnosis"]["null_space_dim"] == [3] and len(finding["variables"]) == 20


def test_help_lists_the_options(capsys):
    try:
        main(["solve", "--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    assert "--covariance" in out and "--gauge" in out


def test_the_anchor_does_not_change_the_covariance(capsys):
    """The anchor's prior is left out of the covariance: the same marginals with and without it."""
    for gauge in ("first", "pseudo_inverse"):
        reports = [_json(capsys, ["solve", "--covariance", "--gauge", gauge, *extra])[1]["covariance"]
                   for extra in ([], ["--no-anchor"])]
        for name, entry in reports[0]["variables"].items():
            assert entry["std"] == pytest.approx(reports[1]["variables"][name]["std"], rel=1e-6, abs=1e-12)
