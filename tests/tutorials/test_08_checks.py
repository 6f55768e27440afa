from pathlib import Path

from tests.tutorials import load_tutorial, run_single_threaded

TUTORIAL = Path(__file__).resolve().parents[2] / "tutorials" / "08_checks.py"


def test_checks_tutorial(tmp_path):
    result = run_single_threaded(load_tutorial(TUTORIAL).main, output_dir=tmp_path, verbose=False)
    # the transposed landmark Jacobian is found, named, and invisible at the identity pose
    report = result["jacobians"]
    assert not report.ok and report.worst.variable == "l" and report.variables["x"].ok
    assert result["at_identity"].ok and result["fixed"].ok
    # the Gauss-Newton implicit gradient is flagged on the large-residual fit, the exact one passes
    gradients = result["gradients"]
    assert not gradients.ok and not gradients.modes["implicit"]["y"].ok
    assert gradients.modes["unroll"]["y"].ok and result["exact"].ok
    # the ragged batch equals the separate fits; the NaN padding gets no gradient
    assert result["value_gap"] < 1e-12 and result["gradient_gap"] < 1e-10
    assert result["padding_gradient"] == 0.0
    assert result["plot"].exists()
