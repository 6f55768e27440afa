from pathlib import Path

import pytest
import torch
import yaml

import nlls
from tests.problems import QuadFit, quad_data

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _objective(batch=3):
    x, y, truth = quad_data(batch)
    ab = nlls.Vector(tensor=torch.zeros(batch, 2, dtype=torch.float64), name="ab")
    obj = nlls.Objective()
    obj.add(QuadFit(ab, nlls.Variable(x, name="x"), nlls.Variable(y, name="y")))
    return obj, ab, x, y


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_loads_builds_and_solves(path):
    cfg = nlls.load_config(path)
    assert nlls.load_config(yaml.safe_load(cfg.to_yaml())) == cfg  # round trip
    if "pose_graph" in path.name or "bundle" in path.name:
        pytest.skip("solved by the io tests")
    obj, ab, *_ = _objective()
    info = nlls.build_optimizer(obj, path).optimize()
    assert info.converged.all()


def test_defaults_and_build():
    cfg = nlls.load_config(None)
    assert cfg.optimizer.name == "levenberg_marquardt" and cfg.linear_solver.name == "dense_cholesky"
    obj, *_ = _objective()
    opt = nlls.build_optimizer(obj, {"optimizer": {"name": "gauss_newton", "max_iterations": 7},
                                     "linear_solver": "dense_lu"})
    assert isinstance(opt, nlls.GaussNewton) and opt.max_iterations == 7
    assert isinstance(opt.linear_solver, nlls.DenseLU)
    lm = nlls.build_optimizer(obj, {"optimizer": {"damping": 0.5, "adaptive_damping": False}})
    assert isinstance(lm, nlls.LevenbergMarquardt) and lm.damping == 0.5 and not lm.adaptive_damping


@pytest.mark.parametrize("raw, message", [
    ({"optimizer": {"max_iter": 3}}, r"unknown key 'optimizer.max_iter'; valid keys of optimizer: name, max_iterations"),
    ({"solver": {}}, r"unknown key 'solver'; valid keys: optimizer, linear_solver, backward"),
    ({"optimizer": {"max_iterations": "ten"}}, r"optimizer.max_iterations must be an integer, got 'ten'"),
    ({"optimizer": {"max_iterations": 2.5}}, r"optimizer.max_iterations must be an integer"),
    ({"optimizer": {"max_iterations": -1}}, r"optimizer.max_iterations must be >= 0, got -1"),
    ({"optimizer": {"step_size": 0}}, r"optimizer.step_size must be > 0"),
    ({"optimizer": {"adaptive_damping": "yes"}}, r"optimizer.adaptive_damping must be true or false"),
    ({"optimizer": {"name": "newton"}}, r"optimizer.name must be one of gauss_newton, levenberg_marquardt, dogleg; got 'newton'"),
    ({"optimizer": {"name": "gauss_newton", "damping": 1.0}}, r"optimizer.damping applies to levenberg_marquardt only"),
    ({"optimizer": {"damping_factor": 1.0}}, r"optimizer.damping_factor must be > 1"),
    ({"optimizer": {"name": "dogleg", "damping_factor": 10.0}}, r"optimizer.damping_factor applies to levenberg_marquardt only"),
    ({"linear_solver": {"name": "qr"}}, r"linear_solver.name must be one of dense_cholesky, dense_lu"),
    ({"linear_solver": {"name": "dense_lu", "pivot": True}}, r"unknown key 'linear_solver.pivot'"),
    ({"backward": {"mode": "adjoint"}}, r"backward.mode must be one of unroll, truncated, implicit"),
    ({"backward": {"mode": "truncated"}}, r"backward.mode truncated needs backward.num_iterations"),
    ({"backward": {"mode": "unroll", "num_iterations": 3}}, r"num_iterations applies to mode truncated only"),
    ({"backward": {"mode": "truncated", "num_iterations": 50}}, r"exceeds optimizer.max_iterations"),
    ({"backward": {"hessian": "newton"}}, r"backward.hessian must be one of gauss_newton, exact"),
    (["optimizer"], r"expected a mapping"),
    ({"optimizer": 3}, r"optimizer must be a mapping"),
])
def test_bad_configs_name_the_key(raw, message):
    with pytest.raises(nlls.ConfigError, match=message):
        nlls.load_config(raw)


def test_the_given_mapping_is_not_modified():
    raw = {"optimizer": {"name": "gauss_newton"}, "linear_solver": {"name": "dense_lu"}}
    snapshot = yaml.safe_dump(raw)
    nlls.load_config(raw)
    assert yaml.safe_dump(raw) == snapshot


def test_python_object_tags_are_refused_and_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.yaml"
    path.write_text(f"optimizer: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(nlls.ConfigError, match=r"evil.yaml line 1: invalid YAML"):
        nlls.load_config(path)
    assert not marker.exists()


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(nlls.ConfigError, match="missing.yaml: cannot read"):
        nlls.load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer:\n  name: [unclosed\n")
    with pytest.raises(nlls.ConfigError, match=r"bad.yaml line \d+: invalid YAML"):
        nlls.load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert nlls.load_config(empty) == nlls.Config()


def test_yaml_round_trip_through_a_file(tmp_path):
    cfg = nlls.load_config({"optimizer": {"max_iterations": 9, "diagonal_scaling": True},
                            "backward": {"mode": "truncated", "num_iterations": 3}})
    path = tmp_path / "out.yaml"
    cfg.to_yaml(path)
    assert nlls.load_config(path) == cfg


def test_layer_from_config_uses_backward_section():
    obj, ab, x, y = _objective(batch=1)
    layer = nlls.OptimizationLayer.from_config(obj, {"optimizer": {"name": "gauss_newton"},
                                                      "backward": {"mode": "truncated", "num_iterations": 2}})
    assert layer.backward_mode == nlls.BackwardMode.TRUNCATED and layer.backward_num_iterations == 2
    y_in = y.clone().requires_grad_(True)
    solution, info = layer({"y": y_in})
    grad, = torch.autograd.grad(solution["ab"].sum(), y_in)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(nlls.ConfigError):
        nlls.OptimizationLayer.from_config(obj, {"backward": {"mode": "sideways"}})
