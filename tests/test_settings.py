"""Settings are checked where they enter (constructor or YAML): no NaN or infinity passes as a
tolerance, a message quoting a value stays short, a value of the wrong kind is a ConfigError,
YAML reads ``1e-3`` as a number and refuses a repeated key."""
import math

import pytest
import torch

import nlls
from nlls.cli import main as cli_main
from tests.problems import QuadFit, quad_data

FLOAT_KEYS = ("abs_err_tolerance", "rel_err_tolerance", "step_size", "damping", "max_damping",
              "min_relative_decrease")


def _objective(batch=2):
    x, y, _ = quad_data(batch)
    ab = nlls.Vector(tensor=torch.zeros(batch, 2, dtype=torch.float64), name="ab")
    obj = nlls.Objective()
    obj.add(QuadFit(ab, nlls.Variable(x, name="x"), nlls.Variable(y, name="y")))
    return obj


# ---- defect 4: non-finite settings --------------------------------------------------------
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_non_finite_optimizer_settings_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=rf"LevenbergMarquardt: {key} must be a finite number, got -?(nan|inf)"):
        nlls.LevenbergMarquardt(_objective(), **{key: value})


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN", ".Inf"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_non_finite_yaml_settings_are_refused_naming_the_key(tmp_path, key, value):
    path = tmp_path / "c.yaml"
    path.write_text(f"optimizer:\n  {key}: {value}\n")
    with pytest.raises(nlls.ConfigError, match=rf"optimizer\.{key} must be a finite number"):
        nlls.load_config(path)
    with pytest.raises(nlls.ConfigError, match=rf"optimizer\.{key} must be a finite number"):
        nlls.load_config({"optimizer": {key: float(value.lower().replace(".", ""))}})


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_linear_solver_options_are_refused(value):
    with pytest.raises(ValueError, match="ConjugateGradient: tolerance must be a finite number"):
        nlls.ConjugateGradient(tolerance=value)
    with pytest.raises(nlls.ConfigError, match=r"linear_solver \(cg\).*tolerance must be a finite number"):
        nlls.load_config({"linear_solver": {"name": "cg", "tolerance": value}})


def test_nan_tolerance_no_longer_fakes_convergence(tmp_path, capsys):
    config = tmp_path / "nan.yaml"
    config.write_text("optimizer:\n  abs_err_tolerance: .nan\n")
    assert cli_main(["solve", "--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "optimizer.abs_err_tolerance must be a finite number" in err


# ---- defect 5: bounded messages -------------------------------------------------------------
def _aliases(levels=6, width=9):
    """A short flow sequence of YAML anchors whose value, expanded, has ``width ** levels`` leaves."""
    items = ["&a0 [1e-3]"]
    for level in range(1, levels + 1):
        items.append(f"&a{level} [{', '.join([f'*a{level - 1}'] * width)}]")
    return "[" + ", ".join(items) + "]"


@pytest.mark.parametrize("section, key", [
    ("optimizer", "damping"), ("optimizer", "name"), ("linear_solver", "name"), ("backward", "mode"),
    ("linear_solver", "tolerance"), ("linear_solver", "backend"), ("backward", "num_iterations"),
])
def test_a_huge_value_gives_a_short_message(tmp_path, capsys, section, key):
    path = tmp_path / "big.yaml"
    extra = {"tolerance": "\n  name: cg", "backend": "\n  name: sparse_cholesky",
             "num_iterations": "\n  mode: truncated"}.get(key, "")
    path.write_text(f"{section}:{extra}\n  {key}: {_aliases()}\n")
    assert len(path.read_text()) < 1500
    with pytest.raises(nlls.ConfigError) as error:
        nlls.load_config(path)
    assert len(str(error.value)) < 600, len(str(error.value))
    assert key in str(error.value)
    assert cli_main(["solve", "--config", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 700 and key in err


def test_a_huge_key_gives_a_short_message():
    with pytest.raises(nlls.ConfigError, match="unknown key") as error:
        nlls.load_config({"optimizer": {"x" * 10 ** 6: 1}})
    assert len(str(error.value)) < 600


def test_short_repr_bounds_and_keeps_short_values():
    from nlls.solve.checks import short_repr

    assert short_repr("ten") == "'ten'" and short_repr(2.5) == "2.5" and short_repr([1, 2]) == "[1, 2]"
    nested = [1]
    for _ in range(8):
        nested = [nested] * 9
    assert len(short_repr(nested)) <= 200
    assert len(short_repr("x" * 10 ** 6, limit=50)) <= 50
    assert len(short_repr({"k" * 500: "v" * 500})) <= 200


# ---- defect 8 (configuration side): values of the wrong kind ------------------------------
@pytest.mark.parametrize("raw, message", [
    ({"linear_solver": {"name": ["x"]}}, r"linear_solver.name must be one of .*; got \['x'\]"),
    ({"linear_solver": [["x"]]}, r"linear_solver must be a mapping"),
    ({"optimizer": {"name": ["x"]}}, r"optimizer.name must be one of .*; got \['x'\]"),
    ({"optimizer": {"name": {"a": 1}}}, r"optimizer.name must be one of"),
    ({"backward": {"mode": ["x"]}}, r"backward.mode must be one of"),
    ({"backward": {"hessian": {"a": 1}}}, r"backward.hessian must be one of"),
    ({"linear_solver": {"name": "sparse_cholesky", "backend": ["x"]}}, r"backend must be one of"),
    ({"linear_solver": {"name": "cg", "preconditioner": ["x"]}}, r"preconditioner must be one of"),
])
def test_unhashable_values_are_config_errors(raw, message):
    with pytest.raises(nlls.ConfigError, match=message):
        nlls.load_config(raw)
    with pytest.raises(nlls.ConfigError, match=message):
        nlls.build_optimizer(_objective(), raw)
    with pytest.raises(nlls.ConfigError, match=message):
        nlls.OptimizationLayer.from_config(_objective(), raw)


def test_unhashable_linear_solver_name_in_the_cli(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("linear_solver:\n  name: [x]\n")
    assert cli_main(["solve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "linear_solver.name must be one of" in err and "Traceback" not in err


# ---- defect 12: YAML 1.1 surprises ----------------------------------------------------------
@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("1E3", 1e3), ("-2e-4", -2e-4), ("1.0e3", 1e3),
                                         ("5e+1", 50.0), ("1_0e1", 100.0), ("0.5", 0.5), (".5e1", 5.0)])
def test_exponent_numbers_without_a_dot_are_numbers(tmp_path, text, value):
    path = tmp_path / "c.yaml"
    path.write_text(f"optimizer:\n  min_relative_decrease: {text}\n")
    if value < 0:
        with pytest.raises(nlls.ConfigError, match="min_relative_decrease must be >= 0"):
            nlls.load_config(path)
        return
    assert nlls.load_config(path).optimizer.min_relative_decrease == value


def test_yaml_integers_strings_and_tags_are_unchanged(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  max_iterations: 10\n  damping: 1e-3\n"
                    "linear_solver:\n  name: cg\n  max_iterations: 0x10\n")
    cfg = nlls.load_config(path)
    assert cfg.optimizer.max_iterations == 10 and type(cfg.optimizer.max_iterations) is int
    assert cfg.linear_solver.options == {"max_iterations": 16} and cfg.optimizer.damping == 1e-3
    path.write_text("optimizer:\n  name: !!python/name:os.system\n")
    with pytest.raises(nlls.ConfigError, match="invalid YAML"):
        nlls.load_config(path)
    path.write_text("optimizer:\n  name: e3\n")  # not a number
    with pytest.raises(nlls.ConfigError, match="got 'e3'"):
        nlls.load_config(path)


@pytest.mark.parametrize("text, key, first, second", [
    ("optimizer:\n  max_iterations: 3\noptimizer:\n  max_iterations: 5\n", "optimizer", 1, 3),
    ("optimizer:\n  damping: 0.1\n  step_size: 1\n  damping: 0.2\n", "damping", 2, 4),
    ("linear_solver:\n  name: cg\n  name: dense_lu\n", "name", 2, 3),
    ("optimizer: {max_iterations: 3, max_iterations: 4}\n", "max_iterations", 1, 1),
])
def test_repeated_keys_are_refused_naming_key_and_both_lines(tmp_path, text, key, first, second):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(nlls.ConfigError, match=rf"dup.yaml line {second}: .*repeated key '{key}' "
                                               rf"\(first on line {first}\)"):
        nlls.load_config(path)


def test_merge_keys_may_be_overridden(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &base {max_iterations: 3, damping: 0.5}\n")
    with pytest.raises(nlls.ConfigError, match="unknown key 'base'"):
        nlls.load_config(path)
    path.write_text("optimizer:\n  <<: {max_iterations: 3, damping: 0.5}\n  damping: 0.25\n")
    cfg = nlls.load_config(path)
    assert cfg.optimizer.max_iterations == 3 and cfg.optimizer.damping == 0.25


def test_huge_integers_are_config_errors_with_short_messages(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  max_iterations: " + "9" * 5000 + "\n")
    with pytest.raises(nlls.ConfigError, match="c.yaml: invalid YAML") as error:
        nlls.load_config(path)
    assert len(str(error.value)) < 600
    with pytest.raises(nlls.ConfigError, match="exceeds optimizer.max_iterations") as error:
        nlls.load_config({"backward": {"mode": "truncated", "num_iterations": 10 ** 5000}})
    assert len(str(error.value)) < 600
    with pytest.raises(nlls.ConfigError, match="optimizer.damping must be a finite number"):
        nlls.load_config({"optimizer": {"damping": 10 ** 400}})
    with pytest.raises(ValueError, match="damping must be a finite number"):
        nlls.LevenbergMarquardt(_objective(), damping=10 ** 400)


def test_max_damping_must_exceed_damping_in_the_config():
    with pytest.raises(nlls.ConfigError, match=r"optimizer.max_damping \(0.5\) must be > optimizer.damping \(1.0\)"):
        nlls.load_config({"optimizer": {"damping": 1.0, "max_damping": 0.5}})
