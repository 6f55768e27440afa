"""OptimizationLayer: a least-squares solve as a differentiable PyTorch module.

``solution = argmin_x 0.5 * sum ||w r(x; theta)||^2`` depends on the data ``theta`` (aux
variables, cost weights). The layer returns the solution and lets gradients flow to every aux
tensor that requires grad, in one of the backward modes of :mod:`nlls.backward`:

* ``unroll``: autograd records every iteration (linear solves included) and differentiates the
  algorithm itself. Exact for what was computed; memory grows with the iteration count.
* ``truncated``: the first iterations run without a graph; the last ``backward_num_iterations``
  are recorded. Converged elements keep stepping during those iterations (steps that barely move
  them but carry the dependence on ``theta``). Cheap; an approximation.
* ``implicit``: the solve runs without a graph; the gradient comes from the optimality condition
  at the solution (implicit function theorem). Memory and graph size do not depend on the
  iteration count, and ``create_graph=True`` gives correct second derivatives.

``hessian`` chooses ``H`` for ``implicit``:

* ``"gauss_newton"`` (default): ``H = J^T J``, reusing the forward's linear solver. Exact when the
  residuals vanish at the solution (fits through the data, equations ``F(x, y) = 0``), and then
  also for second derivatives. On problems whose residuals do not vanish it drops
  ``sum_i r_i * Hess(r_i)`` and the gradients are off by a relative amount of the order of the
  residual times the curvature of ``r`` (0.1-3% on typical fits).
* ``"exact"``: ``H = dg/dx`` including the second-order residual terms, built column by column
  from Hessian-vector products (forward-mode derivatives of ``g``) with dense solvers; sparse ones
  (``sparse_cholesky``, ``schur``) assemble it per cost function in the pattern of ``J^T J``. Correct for any residual;
  costs ``D`` extra Jacobian evaluations, and ``H`` may be indefinite away from a minimum (use
  ``linear_solver="dense_lu"`` then).

The implicit gradient assumes the forward solve converged: an element that did not converge gets
the gradient of the point it stopped at, as if it were optimal (check ``info.converged``).
A new backward mode is one class (:class:`nlls.backward.Backward`) and one line to register it.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

import torch

from .backward import Backward, BackwardMode, backward_class, check_hessian
from .config import build_optimizer, load_config
from .solve.checks import check_bool
from .solve.drivers.base import Driver
from .solve.drivers.select import select_driver
from .solve.optimizer import Optimizer
from .solve.state import OptimizerInfo, Status


class OptimizationLayer(torch.nn.Module):
    """A least-squares solve as a ``torch.nn.Module`` with a choice of backward.

    Args:
        optimizer: a configured optimizer; its objective defines the problem.
        hessian: the default ``H`` of the implicit backward, ``"gauss_newton"`` or ``"exact"``.
        backward_mode: the default backward mode of :meth:`forward`.
        backward_num_iterations: the default for the truncated mode.
        compile, cuda_graph: the defaults of the calls' ``compile`` and ``cuda_graph`` (below; kept as
            ``default_compile``, ``default_cuda_graph``).

    Calling the layer, ``solution, info = layer(inputs, ...)`` (:meth:`forward`), takes:

    * ``inputs``: name -> tensor for optim variables (initial values) and aux variables; the
      tensors are not modified. Names not given keep the objective's current values; the
      objective's variables are left as they were before the call (the solution is returned, not
      stored), so calls with different batch sizes do not interfere.
    * ``backward_mode``: ``"unroll"``, ``"truncated"``, ``"implicit"`` (:class:`BackwardMode`),
      a registered mode's name, or a configured :class:`~nlls.backward.Backward`; default: the
      layer's (``"implicit"`` unless configured otherwise).
    * ``backward_num_iterations``: ``truncated`` only: iterations recorded for the backward.
    * ``hessian``: ``implicit`` only: ``"gauss_newton"`` or ``"exact"`` (default: the layer's).
    * ``verbose``, ``track_best_solution``, ``track_err_history``, ``compile``: as in
      ``optimize()`` (``compile`` applies to the iterations; the implicit backward runs eagerly).
    * ``cuda_graph``: replay the forward solve from a CUDA graph captured once per problem
      structure and shape (as ``optimize(cuda_graph=True)``); the implicit backward runs eagerly
      at the solution. A graph records no autograd graph, so ``"unroll"`` and ``"truncated"``
      cannot differentiate through it (an error says so when a gradient is wanted).
    * ``driver``: an execution strategy (:mod:`nlls.solve.drivers`) instead of the two flags.
    * ``callback``: as in ``optimize()``; called during the forward solve.

    It returns ``solution``, name -> ``(B, ...)`` tensor of every optim variable,
    differentiable, and ``info``, the optimizer's :class:`~nlls.solve.state.OptimizerInfo`.
    """

    def __init__(self, optimizer: Optimizer, hessian: str = "gauss_newton",
                 backward_mode: Union[str, BackwardMode] = BackwardMode.IMPLICIT,
                 backward_num_iterations: Optional[int] = None, compile: bool = False,
                 cuda_graph: bool = False):
        super().__init__()
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"OptimizationLayer expects an nlls optimizer, got {type(optimizer).__name__}")
        check_bool("OptimizationLayer", "compile", compile)
        check_bool("OptimizationLayer", "cuda_graph", cuda_graph)
        select_driver("OptimizationLayer", compile, cuda_graph)  # refuses both at once
        self.optimizer = optimizer
        self.default_compile, self.default_cuda_graph = compile, cuda_graph
        self.hessian = check_hessian(hessian)
        self.backward_mode = _mode_name(backward_mode)
        self.backward_num_iterations = backward_num_iterations

    @classmethod
    def from_config(cls, objective, config) -> "OptimizationLayer":
        """A layer for ``objective`` from a YAML file, a mapping or a ``Config``: the optimizer and
        linear solver of its ``optimizer``/``linear_solver`` sections, the default backward mode
        and Hessian of its ``backward`` section.

        Raises:
            ConfigError: naming the bad key.
        """
        cfg = load_config(config)
        return cls(build_optimizer(objective, cfg), hessian=cfg.backward.hessian,
                   backward_mode=cfg.backward.mode,
                   backward_num_iterations=cfg.backward.num_iterations)

    @property
    def objective(self):
        return self.optimizer.objective

    def backward_for(self, backward_mode=None, backward_num_iterations=None,
                     hessian=None) -> Backward:
        """The configured mode object of a call: the arguments, else the layer's defaults."""
        mode = self.backward_mode if backward_mode is None else backward_mode
        if isinstance(mode, Backward):
            return mode
        cls = backward_class(mode)
        if cls.takes_num_iterations and backward_num_iterations is None:
            backward_num_iterations = self.backward_num_iterations
        return cls(backward_num_iterations, check_hessian(self.hessian if hessian is None else hessian))

    # the options after hessian are optimize()'s, restated so that a call reads the same on both
    def forward(
        self,
        inputs: Optional[Mapping[str, torch.Tensor]] = None,
        backward_mode: Union[str, BackwardMode, Backward, None] = None,
        backward_num_iterations: Optional[int] = None,
        hessian: Optional[str] = None,
        verbose: bool = False,
        track_best_solution: bool = False,
        track_err_history: bool = False,
        compile: Optional[bool] = None,
        cuda_graph: Optional[bool] = None,
        driver: Optional[Driver] = None,
        callback: Optional[Callable] = None,
    ) -> Tuple[Dict[str, torch.Tensor], OptimizerInfo]:
        """Solve with ``inputs``; returns ``(solution, info)`` (arguments: see the class)."""
        mode = self.backward_for(backward_mode, backward_num_iterations, hessian)
        if driver is None:  # the call's flags, else the layer's
            compile = self.default_compile if compile is None else compile
            cuda_graph = self.default_cuda_graph if cuda_graph is None else cuda_graph
        runner = select_driver("OptimizationLayer", bool(compile), bool(cuda_graph), driver)
        mode.check(self.optimizer, inputs, runner)
        tracking = dict(track_best_solution=track_best_solution, track_err_history=track_err_history,
                        verbose=verbose, callback=callback)
        with _applied(self.objective, inputs):
            state, values = mode.solve(self.optimizer, runner, tracking)
            info = self.optimizer.postprocess(state, write_back=False)
            solution = self.optimizer.evaluator.as_dict(values)
        return solution, info

    def extra_repr(self) -> str:
        return f"optimizer={type(self.optimizer).__name__}, hessian={self.hessian!r}"


def _mode_name(mode):
    """A checked default mode: a :class:`Backward` as is, a built-in name as its
    :class:`BackwardMode`, a registered name as the name."""
    if isinstance(mode, Backward):
        return mode
    name = backward_class(mode).name
    return BackwardMode(name) if name in [m.value for m in BackwardMode] else name


@contextlib.contextmanager
def _applied(objective, inputs):
    """``inputs`` set on the objective for the call; afterwards every variable holds what it
    held before (the objective keeps no graph, and every call starts from the same place)."""
    variables = {**objective.optim_vars, **objective.aux_vars}
    saved = {name: var.tensor for name, var in variables.items()}
    try:
        objective.update(dict(inputs or {}))
        yield
    finally:
        for name, var in variables.items():
            var.tensor = saved[name]


__all__ = ["BackwardMode", "OptimizationLayer", "Status"]
