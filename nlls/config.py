"""Solver configuration from YAML: the same objects, written down.

A configuration has three sections, each optional::

    optimizer:            # which optimizer and its settings (the constructor's keyword arguments)
      name: levenberg_marquardt
      max_iterations: 50
    linear_solver:        # a registered linear solver and its own settings
      name: dense_cholesky
    backward:             # how OptimizationLayer differentiates the solution
      mode: implicit

Files are read with ``yaml.safe_load``'s rules (a tag that would build a Python object is
refused), with two changes from YAML 1.1: a number with an exponent and no dot (``1e-3``) is a
number, as in YAML 1.2, and a key repeated in one mapping is an error naming both lines.
Every key is checked: an unknown key, a wrong type, a value out of range or not finite (``.nan``,
``.inf``) raises :class:`ConfigError` naming the key by its path (``optimizer.max_iterations``)
and listing what is allowed; a value quoted in a message is cut short. A :class:`Config` is
written back with :meth:`Config.to_yaml` (whole or not at all) and reads back equal.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import yaml

from .backward import BACKWARD_MODES, HESSIANS
from .core.objective import Objective
from .io.files import write_text_atomic
from .solve.checks import short_repr
from .solve.dogleg import Dogleg
from .solve.gauss_newton import GaussNewton
from .solve.levenberg_marquardt import LevenbergMarquardt
from .solve.linear import LINEAR_SOLVERS
from .solve.optimizer import Optimizer


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and what is allowed."""


OPTIMIZERS = {"gauss_newton": GaussNewton, "levenberg_marquardt": LevenbergMarquardt, "dogleg": Dogleg}
_LM_ONLY = ("damping", "adaptive_damping", "diagonal_scaling", "min_relative_decrease", "max_damping",
            "jacobi_scaling", "damping_factor")
# the keys of one optimizer (or a few): each optimizer takes its own and the base's
_OWN_KEYS = {"levenberg_marquardt": _LM_ONLY,
             "dogleg": ("initial_radius", "max_radius", "min_radius", "diagonal_scaling", "min_relative_decrease")}


def _foreign_keys(name: str) -> Dict[str, List[str]]:
    """The optimizer-specific keys ``name`` does not take, each with the optimizers that do."""
    owners: Dict[str, List[str]] = {}
    for optimizer, keys in _OWN_KEYS.items():
        for key in keys:
            owners.setdefault(key, []).append(optimizer)
    return {key: names for key, names in owners.items() if name not in names}


# the defaults are the constructors' own (stated once, there)
_DEFAULTS = {name: p.default for cls in (Dogleg, LevenbergMarquardt, Optimizer)
             for name, p in inspect.signature(cls.__init__).parameters.items()
             if p.default is not inspect.Parameter.empty}


def _number(kind, minimum=None, open_minimum=False):
    return {"kind": kind, "minimum": minimum, "open": open_minimum}


@dataclass
class OptimizerConfig:
    """``optimizer:`` section; keys are the optimizer's keyword arguments."""

    name: str = field(default="levenberg_marquardt", metadata={"choices": OPTIMIZERS})
    max_iterations: int = field(default=_DEFAULTS["max_iterations"], metadata=_number(int, 0))
    step_size: float = field(default=_DEFAULTS["step_size"], metadata=_number(float, 0, True))
    abs_err_tolerance: float = field(default=_DEFAULTS["abs_err_tolerance"], metadata=_number(float, 0))
    rel_err_tolerance: Optional[float] = field(default=_DEFAULTS["rel_err_tolerance"], metadata=_number(float, 0))
    check_every: int = field(default=_DEFAULTS["check_every"], metadata=_number(int, 1))
    function_tolerance: float = field(default=_DEFAULTS["function_tolerance"], metadata=_number(float, 0))
    gradient_tolerance: float = field(default=_DEFAULTS["gradient_tolerance"], metadata=_number(float, 0))
    parameter_tolerance: float = field(default=_DEFAULTS["parameter_tolerance"], metadata=_number(float, 0))
    damping: float = field(default=_DEFAULTS["damping"], metadata=_number(float, 0, True))
    adaptive_damping: bool = field(default=_DEFAULTS["adaptive_damping"], metadata={"kind": bool})
    diagonal_scaling: bool = field(default=_DEFAULTS["diagonal_scaling"], metadata={"kind": bool})
    min_relative_decrease: float = field(default=_DEFAULTS["min_relative_decrease"], metadata=_number(float, 0))
    max_damping: float = field(default=_DEFAULTS["max_damping"], metadata=_number(float, 0, True))
    jacobi_scaling: bool = field(default=_DEFAULTS["jacobi_scaling"], metadata={"kind": bool})
    damping_factor: Optional[float] = field(default=_DEFAULTS["damping_factor"], metadata=_number(float, 1, True))
    initial_radius: float = field(default=_DEFAULTS["initial_radius"], metadata=_number(float, 0, True))
    max_radius: float = field(default=_DEFAULTS["max_radius"], metadata=_number(float, 0, True))
    min_radius: float = field(default=_DEFAULTS["min_radius"], metadata=_number(float, 0))


@dataclass
class LinearSolverConfig:
    """``linear_solver:`` section: a registry name and that solver's own keyword arguments."""

    name: str = "dense_cholesky"
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class BackwardConfig:
    """``backward:`` section, read by ``OptimizationLayer.from_config``."""

    mode: str = field(default="implicit", metadata={"choices": BACKWARD_MODES})
    num_iterations: Optional[int] = field(default=None, metadata=_number(int, 1))
    hessian: str = field(default="gauss_newton", metadata={"choices": HESSIANS})


@dataclass
class Config:
    """A whole configuration; ``given`` remembers which optimizer keys the file set."""

    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    linear_solver: LinearSolverConfig = field(default_factory=LinearSolverConfig)
    backward: BackwardConfig = field(default_factory=BackwardConfig)

    def to_dict(self) -> Dict[str, Any]:
        linear = {"name": self.linear_solver.name, **self.linear_solver.options}
        optimizer = dataclasses.asdict(self.optimizer)
        for key in _foreign_keys(optimizer["name"]):
            optimizer.pop(key)
        backward = dataclasses.asdict(self.backward)
        if backward["num_iterations"] is None:
            backward.pop("num_iterations")
        return {"optimizer": optimizer, "linear_solver": linear, "backward": backward}

    def to_yaml(self, path: Union[str, Path, None] = None) -> str:
        """The configuration as YAML text; also written to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            write_text_atomic(path, text)
        return text


# ---- reading -------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """``safe_load``'s loader (no Python objects), with YAML 1.2 exponent floats and repeated keys
    refused."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: Dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable: the base class reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"repeated key {short_repr(key)} (first on line {first})",
                        key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 needs a dot in a float (and a sign in its exponent): `1e-3` would be the string '1e-3'
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_config(source: Union[str, Path, Mapping[str, Any], Config, None]) -> Config:
    """Read and check a configuration.

    Args:
        source: a YAML file path, a mapping with the same layout, a :class:`Config` (returned as
            is) or ``None`` (the defaults). The mapping is not modified.

    Raises:
        ConfigError: unreadable file, bad YAML, unknown keys, wrong types or values.
    """
    if isinstance(source, Config):
        return source
    if source is None:
        return Config()
    where = "configuration"
    if isinstance(source, (str, Path)):
        path = Path(source)
        where = str(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read configuration ({exc.strerror or exc})") from None
        try:
            source = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            problem = _bounded(getattr(exc, "problem", None) or str(exc).splitlines()[0])
            raise ConfigError(f"{path}{line}: invalid YAML: {problem}") from None
        except ValueError as exc:  # a scalar Python cannot hold, e.g. an int beyond its digit limit
            raise ConfigError(f"{path}: invalid YAML: {_bounded(str(exc))}") from None
        if source is None:
            return Config()
    if not isinstance(source, Mapping):
        raise ConfigError(f"{where}: expected a mapping with sections optimizer, linear_solver, "
                          f"backward; got {type(source).__name__}")
    _check_keys(source, ("optimizer", "linear_solver", "backward"), "", where)
    optimizer = _read_section(OptimizerConfig, source.get("optimizer"), "optimizer", where)
    for key, owners in _foreign_keys(optimizer.name).items():
        if key in (source.get("optimizer") or {}):
            raise ConfigError(f"{where}: optimizer.{key} applies to {' and '.join(owners)} only, "
                              f"not {optimizer.name}")
    linear = _read_linear_solver(source.get("linear_solver"), where)
    backward = _read_section(BackwardConfig, source.get("backward"), "backward", where)
    if optimizer.name == "levenberg_marquardt" and optimizer.max_damping <= optimizer.damping:
        raise ConfigError(f"{where}: optimizer.max_damping ({optimizer.max_damping!r}) must be > "
                          f"optimizer.damping ({optimizer.damping!r})")
    if optimizer.name == "dogleg" and not optimizer.min_radius < optimizer.initial_radius <= optimizer.max_radius:
        raise ConfigError(f"{where}: optimizer.min_radius ({optimizer.min_radius!r}) < initial_radius "
                          f"({optimizer.initial_radius!r}) <= max_radius ({optimizer.max_radius!r}) must hold")
    if backward.num_iterations is not None and backward.mode != "truncated":
        raise ConfigError(f"{where}: backward.num_iterations applies to mode truncated only")
    if backward.mode == "truncated" and backward.num_iterations is None:
        raise ConfigError(f"{where}: backward.mode truncated needs backward.num_iterations")
    if backward.num_iterations is not None and backward.num_iterations > optimizer.max_iterations:
        raise ConfigError(f"{where}: backward.num_iterations ({short_repr(backward.num_iterations)}) exceeds "
                          f"optimizer.max_iterations ({short_repr(optimizer.max_iterations)})")
    return Config(optimizer=optimizer, linear_solver=linear, backward=backward)


def _bounded(text: str, limit: int = 300) -> str:
    """``text`` (a message that may quote a value) cut to ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_keys(mapping: Mapping, allowed, path: str, where: str) -> None:
    for key in mapping:
        if not isinstance(key, str) or key not in allowed:
            name = short_repr(f"{path}.{key}" if path and isinstance(key, str) else key)
            raise ConfigError(f"{where}: unknown key {name}; valid keys"
                              f"{' of ' + path if path else ''}: {', '.join(allowed)}")


def _read_section(cls, raw, path: str, where: str):
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: {path} must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(raw, tuple(fields), path, where)
    values = {}
    for key, value in raw.items():
        values[key] = _check_value(fields[key], value, f"{path}.{key}", where)
    return cls(**values)


def _check_value(spec: dataclasses.Field, value, key: str, where: str):
    meta = spec.metadata
    if "choices" in meta:
        if not isinstance(value, str) or value not in meta["choices"]:
            raise ConfigError(f"{where}: {key} must be one of {', '.join(meta['choices'])}; "
                              f"got {short_repr(value)}")
        return value
    kind = meta.get("kind")
    if kind is None:
        return value
    if value is None and spec.default is None:
        return None
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {short_repr(value)}")
        return value
    ok = isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        ok = ok or isinstance(value, float)
    if not ok:
        raise ConfigError(f"{where}: {key} must be {'an integer' if kind is int else 'a number'}, "
                          f"got {short_repr(value)}")
    number = value
    if kind is float:
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{where}: {key} must be a finite number, got {short_repr(value)}")
    minimum = meta.get("minimum")
    if minimum is not None and (number < minimum or (meta.get("open") and number == minimum)):
        raise ConfigError(f"{where}: {key} must be {'>' if meta.get('open') else '>='} {minimum}, "
                          f"got {short_repr(value)}")
    return number


def _read_linear_solver(raw, where: str) -> LinearSolverConfig:
    if raw is None:
        return LinearSolverConfig()
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: linear_solver must be a mapping, got {type(raw).__name__}")
    name = raw.get("name", "dense_cholesky")
    if not isinstance(name, str) or name not in LINEAR_SOLVERS:
        raise ConfigError(f"{where}: linear_solver.name must be one of {', '.join(LINEAR_SOLVERS)}; "
                          f"got {short_repr(name)}")
    options = {k: v for k, v in raw.items() if k != "name"}
    parameters = inspect.signature(LINEAR_SOLVERS[name]).parameters
    allowed = [p for p in parameters if p != "self"]
    _check_keys(options, ["name"] + allowed, "linear_solver", where)
    try:
        LINEAR_SOLVERS[name](**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: linear_solver ({name}): {_bounded(str(exc))}") from None
    return LinearSolverConfig(name=name, options=dict(options))


# ---- building ------------------------------------------------------------------------------
def build_optimizer(objective: Objective, config: Union[str, Path, Mapping, Config, None]) -> Optimizer:
    """An optimizer for ``objective`` as the configuration says."""
    cfg = load_config(config)
    opt = cfg.optimizer
    kwargs = {f.name: getattr(opt, f.name) for f in dataclasses.fields(opt) if f.name != "name"}
    for key in _foreign_keys(opt.name):
        kwargs.pop(key)
    solver = LINEAR_SOLVERS[cfg.linear_solver.name](**cfg.linear_solver.options)
    return OPTIMIZERS[opt.name](objective, linear_solver=solver, **kwargs)
