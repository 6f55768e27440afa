"""OptimizationLayer: a least-squares solve as a differentiable PyTorch module.

``solution = argmin_x 0.5 * sum ||w r(x; theta)||^2`` depends on the data ``theta`` (aux
variables, cost weights). The layer returns the solution and lets gradients flow to every aux
tensor that requires grad, in one of three backward modes:

* ``unroll``: autograd records every iteration (linear solves included) and differentiates the
  algorithm itself. Exact for what was computed; memory grows with the iteration count.
* ``truncated``: the first iterations run without a graph; the last ``backward_num_iterations``
  are recorded. Converged elements keep stepping during those iterations (steps that barely move
  them but carry the dependence on ``theta``). Cheap; an approximation.
* ``implicit``: the solve runs without a graph; the gradient comes from the optimality condition
  at the solution. With ``g(x, theta) = J^T r`` the gradient on the tangent, ``g(x*, theta) = 0``
  for every ``theta``, so ``H dx* = -(dg/dtheta) dtheta`` with ``H = dg/dx``. For an incoming
  cotangent ``v`` on ``x*``::

      H w = v,        dL/dtheta = -(dg/dtheta)^T w          (one solve, one vector-Jacobian product)

  Memory and graph size do not depend on the iteration count. The backward is itself built from
  differentiable operations and refers to ``x*`` through this layer's own output, so
  ``create_graph=True`` gives correct second derivatives.

``hessian`` chooses ``H`` for ``implicit``:

* ``"gauss_newton"`` (default): ``H = J^T J``, reusing the forward's linear solver. Exact when the
  residuals vanish at the solution (fits through the data, equations ``F(x, y) = 0``), and then
  also for second derivatives. On problems whose residuals do not vanish it drops
  ``sum_i r_i * Hess(r_i)`` and the gradients are off by a relative amount of the order of the
  residual times the curvature of ``r`` (0.1-3% on typical fits).
* ``"exact"``: ``H = dg/dx`` including the second-order residual terms, built column by column
  from Hessian-vector products (forward-mode derivatives of ``g``). Correct for any residual;
  costs ``D`` extra Jacobian evaluations, and ``H`` may be indefinite away from a minimum (use
  ``linear_solver="dense_lu"`` then).

The implicit gradient assumes the forward solve converged: an element that did not converge gets
the gradient of the point it stopped at, as if it were optimal (check ``info.converged``).
"""
from __future__ import annotations

import contextlib
import enum
import warnings
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch

from .core.numeric_diff import NumericDiffCostFunction
from .core.variable import Variable
from .core.evaluation import State
from .solve.optimizer import Optimizer, OptimizerInfo, Status


class BackwardMode(str, enum.Enum):
    """How :class:`OptimizationLayer` differentiates the solution."""

    UNROLL = "unroll"
    TRUNCATED = "truncated"
    IMPLICIT = "implicit"

    @classmethod
    def parse(cls, value) -> "BackwardMode":
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ValueError(
                f"backward_mode must be one of {[m.value for m in cls]}, got {value!r}"
            ) from None


HESSIANS = ("gauss_newton", "exact")


@contextlib.contextmanager
def _swapped(variables: List[Variable], tensors):
    saved = [v.tensor for v in variables]
    try:
        for v, t in zip(variables, tensors):
            v.tensor = t
        yield
    finally:
        for v, t in zip(variables, saved):
            v.tensor = t


class _Implicit:
    """The pieces of the implicit backward for one solve: g, H and the tangent map, as
    functions of the solution blocks and the aux tensors that require grad."""

    def __init__(self, optimizer: Optimizer, theta_vars: List[Variable], hessian: str, batch: int):
        self.optimizer = optimizer
        self.evaluator = optimizer._evaluator
        self.linearization = optimizer._linearization
        self.hessian = hessian
        self.batch = batch
        # the aux data of this solve (the objective may hold other data by backward time)
        theta_ids = {id(v) for v in theta_vars}
        others = [v for v in optimizer.objective.aux_vars.values() if id(v) not in theta_ids]
        self.aux_vars = list(theta_vars) + others
        self.fixed = tuple(v.tensor.detach() for v in others)

    def aux(self, thetas):
        with _swapped(self.aux_vars, tuple(thetas) + self.fixed):
            return self.evaluator.aux(self.batch)

    def gradient(self, state: State, thetas) -> torch.Tensor:
        return self.linearization.gradient(state, self.aux(thetas))

    def matrix(self, state: State, thetas) -> torch.Tensor:
        aux = self.aux(thetas)
        if self.hessian == "gauss_newton":
            return self.linearization.linearize(state, aux).A
        dof = self.evaluator.dof
        ref = state[0]
        zeros = torch.zeros(self.batch, dof, dtype=ref.dtype, device=ref.device)
        basis = torch.eye(dof, dtype=ref.dtype, device=ref.device)[:, None, :].expand(dof, self.batch, dof)

        def moved_gradient(eta):
            return self.linearization.gradient(self.evaluator.retract(state, eta), aux)

        def column(direction):
            return torch.func.jvp(moved_gradient, (zeros,), (direction,))[1]

        columns = torch.func.vmap(column)(basis)  # (D, B, D): column k of H per element
        H = columns.permute(1, 2, 0)
        return 0.5 * (H + H.mT)

    def tangent_cotangent(self, state: State, grads) -> torch.Tensor:
        """Map cotangents on the solution tensors to the tangent: ``(d retract / d delta)^T v``."""
        ref = state[0]
        zeros = torch.zeros(self.batch, self.evaluator.dof, dtype=ref.dtype, device=ref.device)
        _, pullback = torch.func.vjp(lambda d: self.evaluator.retract(state, d), zeros)
        return pullback(tuple(grads))[0]


class _ImplicitFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, implicit: _Implicit, num_blocks: int, *tensors):
        blocks, thetas = tensors[:num_blocks], tensors[num_blocks:]
        outputs = tuple(b.clone() for b in blocks)
        ctx.implicit = implicit
        ctx.num_blocks = num_blocks
        ctx.save_for_backward(*outputs, *thetas)
        return outputs

    @staticmethod
    def backward(ctx, *grads):
        implicit: _Implicit = ctx.implicit
        saved = ctx.saved_tensors
        state, thetas = saved[: ctx.num_blocks], saved[ctx.num_blocks:]
        create_graph = torch.is_grad_enabled()
        if not create_graph:
            state = tuple(s.detach() for s in state)
            thetas = tuple(t.detach() for t in thetas)
        v = implicit.tangent_cotangent(state, grads)
        H = implicit.matrix(state, thetas)
        w, ok = implicit.optimizer.linear_solver.factor(H).solve(v)
        if not bool(ok.all()):
            warnings.warn(
                f"OptimizationLayer implicit backward: the {implicit.hessian} Hessian could not be "
                f"factored for batch elements {torch.nonzero(~ok).flatten().tolist()}; their "
                f"gradients are set to zero (is the solution a strict minimum? for "
                f"hessian='exact' try linear_solver='dense_lu')",
                RuntimeWarning,
            )
        _, pullback = torch.func.vjp(lambda *th: implicit.gradient(state, th), *thetas)
        theta_grads = pullback(-w)
        return (None, None) + (None,) * ctx.num_blocks + tuple(theta_grads)


class OptimizationLayer(torch.nn.Module):
    """A least-squares solve as a ``torch.nn.Module`` with a choice of backward.

    Args:
        optimizer: a configured optimizer; its objective defines the problem.
        hessian: the default ``H`` of the implicit backward, ``"gauss_newton"`` or ``"exact"``.
        backward_mode: the default backward mode of :meth:`forward`.
        backward_num_iterations: the default for the truncated mode.
    """

    def __init__(self, optimizer: Optimizer, hessian: str = "gauss_newton",
                 backward_mode: Union[str, BackwardMode] = BackwardMode.IMPLICIT,
                 backward_num_iterations: Optional[int] = None):
        super().__init__()
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"OptimizationLayer expects an nlls optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.hessian = _check_hessian(hessian)
        self.backward_mode = BackwardMode.parse(backward_mode)
        self.backward_num_iterations = backward_num_iterations

    @classmethod
    def from_config(cls, objective, config) -> "OptimizationLayer":
        """A layer for ``objective`` from a YAML file, a mapping or a ``Config``: the optimizer and
        linear solver of its ``optimizer``/``linear_solver`` sections, the default backward mode
        and Hessian of its ``backward`` section.

        Raises:
            ConfigError: naming the bad key.
        """
        from .config import build_optimizer, load_config  # config assembles layers: import late

        cfg = load_config(config)
        return cls(build_optimizer(objective, cfg), hessian=cfg.backward.hessian,
                   backward_mode=cfg.backward.mode,
                   backward_num_iterations=cfg.backward.num_iterations)

    @property
    def objective(self):
        return self.optimizer.objective

    def forward(
        self,
        inputs: Optional[Mapping[str, torch.Tensor]] = None,
        backward_mode: Union[str, BackwardMode, None] = None,
        backward_num_iterations: Optional[int] = None,
        hessian: Optional[str] = None,
        verbose: bool = False,
        track_best_solution: bool = False,
        track_err_history: bool = False,
        compile: bool = False,
        cuda_graph: bool = False,
    ) -> Tuple[Dict[str, torch.Tensor], OptimizerInfo]:
        """Solve with ``inputs`` and return ``(solution, info)``.

        Args:
            inputs: name -> tensor for optim variables (initial values) and aux variables; the
                tensors are not modified. Names not given keep the objective's current values;
                the objective's variables are left as they were before the call (the solution
                is returned, not stored), so calls with different batch sizes do not interfere.
            backward_mode: ``"unroll"``, ``"truncated"`` or ``"implicit"`` (:class:`BackwardMode`);
                default: the layer's (``"implicit"`` unless configured otherwise).
            backward_num_iterations: ``truncated`` only: iterations recorded for the backward.
            hessian: ``implicit`` only: ``"gauss_newton"`` or ``"exact"`` (default: the layer's).
            verbose, track_best_solution, track_err_history, compile: as in ``optimize()``
                (``compile`` applies to the iterations; the implicit backward runs eagerly).
            cuda_graph: replay the forward solve from a CUDA graph captured once per problem
                structure and shape (as ``optimize(cuda_graph=True)``); the implicit backward
                runs eagerly at the solution. A graph records no autograd graph, so
                ``"unroll"`` and ``"truncated"`` cannot differentiate through it (an error says
                so when a gradient is wanted).

        Returns:
            ``solution``: name -> ``(B, ...)`` tensor of every optim variable, differentiable;
            ``info``: the optimizer's :class:`~nlls.solve.optimizer.OptimizerInfo`.
        """
        mode = BackwardMode.parse(backward_mode if backward_mode is not None else self.backward_mode)
        if mode == BackwardMode.TRUNCATED and backward_num_iterations is None:
            backward_num_iterations = self.backward_num_iterations
        hessian = _check_hessian(hessian if hessian is not None else self.hessian)
        optimizer = self.optimizer
        if mode == BackwardMode.TRUNCATED:
            if backward_num_iterations is None:
                raise ValueError("backward_mode='truncated' needs backward_num_iterations")
            if isinstance(backward_num_iterations, bool) or not isinstance(backward_num_iterations, int) \
                    or not 1 <= backward_num_iterations <= optimizer.max_iterations:
                raise ValueError(
                    f"backward_num_iterations must be an int in [1, max_iterations="
                    f"{optimizer.max_iterations}], got {backward_num_iterations!r}"
                )
        elif backward_num_iterations is not None:
            raise ValueError(f"backward_num_iterations applies to the truncated mode only, not {mode.value!r}")
        objective = self.objective
        if mode == BackwardMode.IMPLICIT and hessian == "exact" and optimizer.linear_solver.linearization != "dense":
            raise ValueError(
                f"hessian='exact' builds a dense Hessian and needs a dense linear solver; "
                f"{optimizer.linear_solver!r} is not one (use hessian='gauss_newton')"
            )
        self._check_numeric(mode, hessian, inputs)
        if cuda_graph:
            self._check_cuda_graph(mode, inputs, compile)
        variables = {**objective.optim_vars, **objective.aux_vars}
        saved = {name: var.tensor for name, var in variables.items()}
        objective.update(dict(inputs or {}))
        try:
            kwargs = dict(track_best_solution=track_best_solution,
                          track_err_history=track_err_history, verbose=verbose)
            if cuda_graph:
                from .solve.cuda_graph import run_cuda_graph

                with torch.no_grad():
                    loop = run_cuda_graph(optimizer, optimizer.max_iterations, **kwargs)
                state = self._attach_implicit(loop, hessian) if mode == BackwardMode.IMPLICIT else loop.state
            elif mode == BackwardMode.UNROLL:
                loop = optimizer._start(**kwargs)
                optimizer._run(loop, optimizer.max_iterations, compile=compile)
                state = loop.state
            elif mode == BackwardMode.TRUNCATED:
                with torch.no_grad():
                    loop = optimizer._start(**kwargs)
                    optimizer._run(loop, optimizer.max_iterations - backward_num_iterations,
                                   compile=compile)
                # the recorded iterations start from the detached iterate, with graph-carrying aux
                evaluator = optimizer._evaluator
                loop.state = tuple(s.detach() for s in loop.state)
                loop.aux = evaluator.aux(loop.error.shape[0])
                loop.error = evaluator.error_metric(loop.state, loop.aux)
                optimizer._run(loop, backward_num_iterations, stop_on_convergence=False,
                               compile=compile)
                state = loop.state
            else:
                with torch.no_grad():
                    loop = optimizer._start(**kwargs)
                    optimizer._run(loop, optimizer.max_iterations, compile=compile)
                state = self._attach_implicit(loop, hessian)
            info = optimizer._finish(loop, write_back=False)
            solution = optimizer._evaluator.as_dict(state)
        finally:
            # the objective keeps no graph and every call starts from the same place: all
            # variables hold what they held before the call (pass initial values in inputs)
            for name, var in variables.items():
                var.tensor = saved[name]
        return solution, info

    def _check_numeric(self, mode: BackwardMode, hessian: str, inputs) -> None:
        numeric = [cf.name for cf in self.objective.cost_functions.values()
                   if isinstance(cf, NumericDiffCostFunction)]
        if not numeric or not torch.is_grad_enabled():
            return
        if mode != BackwardMode.IMPLICIT:
            if _wanting_grad(inputs, self.objective.aux_vars):
                raise ValueError(
                    f"backward_mode={mode.value!r} cannot differentiate through "
                    f"NumericDiffCostFunction {numeric[0]!r} (finite differences give no graph "
                    f"to unroll); use backward_mode='implicit'"
                )
        elif hessian == "exact":
            raise ValueError(
                f"hessian='exact' needs second derivatives, which NumericDiffCostFunction "
                f"{numeric[0]!r} does not provide; use hessian='gauss_newton'"
            )

    def _check_cuda_graph(self, mode: BackwardMode, inputs, compile: bool) -> None:
        if compile:
            raise ValueError("OptimizationLayer: compile=True and cuda_graph=True are exclusive")
        if mode == BackwardMode.IMPLICIT or not torch.is_grad_enabled():
            return
        wanted = _wanting_grad(inputs, {**self.objective.optim_vars, **self.objective.aux_vars})
        if wanted:
            raise ValueError(
                f"OptimizationLayer: backward_mode={mode.value!r} differentiates the recorded "
                f"iterations, but cuda_graph=True replays them without autograd ({wanted[0]!r} "
                f"requires grad); use backward_mode='implicit' with cuda_graph=True"
            )

    def _attach_implicit(self, loop, hessian: str) -> State:
        optimizer = self.optimizer
        theta_vars = [v for v in self.objective.aux_vars.values() if v.tensor.requires_grad]
        if not theta_vars or not torch.is_grad_enabled():
            return loop.state
        implicit = _Implicit(optimizer, theta_vars, hessian, loop.error.shape[0])
        blocks = tuple(s.detach() for s in loop.state)
        thetas = tuple(v.tensor for v in theta_vars)
        return _ImplicitFunction.apply(implicit, len(blocks), *blocks, *thetas)

    def extra_repr(self) -> str:
        return f"optimizer={type(self.optimizer).__name__}, hessian={self.hessian!r}"


def _wanting_grad(inputs, variables) -> List[str]:
    """Names whose tensor for this call requires grad: the tensors in ``inputs``, and the
    current tensors of the ``variables`` that ``inputs`` does not replace."""
    inputs = inputs or {}
    names = [name for name, t in inputs.items() if isinstance(t, torch.Tensor) and t.requires_grad]
    return names + [name for name, v in variables.items()
                    if name not in inputs and v.tensor.requires_grad]


def _check_hessian(value: str) -> str:
    if value not in HESSIANS:
        raise ValueError(f"hessian must be one of {list(HESSIANS)}, got {value!r}")
    return value


__all__ = ["BackwardMode", "OptimizationLayer", "Status"]
