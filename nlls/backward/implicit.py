"""``backward_mode="implicit"``: the implicit function theorem at the solution.

The solve runs without a graph; the gradient comes from the optimality condition at the
solution. With ``g(x, theta) = J^T r`` the gradient on the tangent, ``g(x*, theta) = 0`` for every
``theta``, so ``H dx* = -(dg/dtheta) dtheta`` with ``H = dg/dx``. For an incoming cotangent ``v`` on
``x*``::

    H w = v,        dL/dtheta = -(dg/dtheta)^T w          (one solve, one vector-Jacobian product)

Memory and graph size do not depend on the iteration count. The backward is itself built from
differentiable operations and refers to ``x*`` through the layer's own output, so
``create_graph=True`` gives correct second derivatives. ``hessian`` chooses ``H``:
``"gauss_newton"`` (``J^T J``, the forward's linear solver; exact when the residuals vanish at
the solution) or ``"exact"`` (``dg/dx`` with the second-order residual terms; needs cost functions
with second derivatives). With a dense linear solver the exact ``H`` is built column by column
from forward-mode derivatives of ``g``; with a sparse one (``sparse_cholesky``, ``schur``) it is
assembled into the pattern of ``J^T J`` from one block per cost function
(:mod:`nlls.backward.exact_hessian`) and factored by that solver. The sparse exact path gives
first derivatives only: a second backward through it (``create_graph=True``) is refused.

With box bounds (``Objective.set_bounds``) a coordinate that ends on its bound stays there for
nearby data: its derivative is zero, and the optimality condition holds on the free coordinates
only, ``g_F(x*, theta) = 0``. The backward solves the reduced system ``H_FF w_F = v_F`` (the
bound coordinates' rows and columns replaced by the identity, their cotangent by zero, as the
forward's steps do) and ``w`` is zero on the bound coordinates.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, List, Optional, Tuple, Union

import torch

from ..core.evaluation import State
from ..core.variable import Variable
from ..solve.bounds import at_bounds, coordinates, restrict
from ..solve.guard import borrowed, donor_of
from ..solve.linearization import SparseLinearization
from ..solve.state import Status
from ..solve.systems import DenseSystem, SparseMatrix, SparseSystem
from .base import Backward
from .exact_hessian import exact_blocks

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from ..solve.optimizer import Optimizer


@contextlib.contextmanager
def swapped(variables: List[Variable], tensors):
    saved = [v.tensor for v in variables]
    try:
        for v, t in zip(variables, tensors):
            v.tensor = t
        yield
    finally:
        for v, t in zip(variables, saved):
            v.tensor = t


class ImplicitPieces:
    """The pieces of the implicit backward for one solve: g, H and the tangent map, as
    functions of the solution blocks and the aux tensors that require grad."""

    def __init__(self, optimizer: Optimizer, theta_vars: List[Variable], hessian: str, batch: int,
                 healthy: Optional[torch.Tensor] = None, bound: Optional[torch.Tensor] = None):
        self.optimizer = optimizer
        self.bound = bound  # (B, D) bool: coordinates on a box bound (no derivative), or None
        # failed elements (healthy False) take no gradient, and compute with a healthy element's
        # inputs so that their NaN meets no zero cotangent (nlls.solve.guard)
        self.guard: Optional[Tuple[torch.Tensor, torch.Tensor]] = (
            None if healthy is None or bool(healthy.all()) else (healthy, donor_of(healthy)))
        self.evaluator = optimizer.evaluator
        self.linearization = optimizer.linearization
        self.hessian = hessian
        self.batch = batch
        # the aux data of this solve (the objective may hold other data by backward time)
        theta_ids = {id(v) for v in theta_vars}
        others = [v for v in optimizer.objective.aux_vars.values() if id(v) not in theta_ids]
        self.aux_vars = list(theta_vars) + others
        self.fixed = tuple(v.tensor.detach() for v in others)

    def inputs(self, state: State, thetas):
        """The solution blocks and the stacked aux data, failed elements guarded."""
        with swapped(self.aux_vars, tuple(thetas) + self.fixed):
            aux = self.evaluator.aux(self.batch)
        if self.guard is None:
            return state, aux
        return borrowed(*self.guard, state, aux)

    def gradient(self, state: State, thetas) -> torch.Tensor:
        return self.linearization.gradient(*self.inputs(state, thetas))

    def matrix(self, state: State, thetas) -> Union[torch.Tensor, SparseMatrix]:
        state, aux = self.inputs(state, thetas)
        if self.hessian == "gauss_newton":
            system = self.linearization.linearize(state, aux)
            return system.A if self.bound is None else restrict(system, self.bound).A
        if isinstance(self.linearization, SparseLinearization):
            A = self.linearization.assemble_blocks(exact_blocks(self.evaluator, state, aux))
            if self.bound is None:
                return A
            return restrict(SparseSystem(A, torch.zeros_like(self.bound, dtype=A.values.dtype)), self.bound).A
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
        H = 0.5 * (H + H.mT)
        return H if self.bound is None else restrict(DenseSystem(H, zeros), self.bound).A

    def tangent_cotangent(self, state: State, grads) -> torch.Tensor:
        """Map cotangents on the solution tensors to the tangent: ``(d retract / d delta)^T v``."""
        ref = state[0]
        zeros = torch.zeros(self.batch, self.evaluator.dof, dtype=ref.dtype, device=ref.device)
        # vjp's stub also allows has_aux's 3-tuple
        _, pullback = torch.func.vjp(lambda d: self.evaluator.retract(state, d), zeros)  # type: ignore[misc]
        return pullback(tuple(grads))[0]


class ImplicitFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, implicit: ImplicitPieces, num_blocks: int, *tensors):
        blocks, thetas = tensors[:num_blocks], tensors[num_blocks:]
        outputs = tuple(b.clone() for b in blocks)
        ctx.implicit = implicit
        ctx.num_blocks = num_blocks
        ctx.save_for_backward(*outputs, *thetas)
        return outputs

    @staticmethod
    def backward(ctx, *grads):
        implicit: ImplicitPieces = ctx.implicit
        saved = ctx.saved_tensors
        state, thetas = saved[: ctx.num_blocks], saved[ctx.num_blocks:]
        create_graph = torch.is_grad_enabled()
        if create_graph and implicit.hessian == "exact" and isinstance(
                implicit.linearization, SparseLinearization):
            raise RuntimeError(
                "OptimizationLayer implicit backward: hessian='exact' with the sparse linear solver "
                f"{implicit.optimizer.linear_solver!r} gives first derivatives only; for second "
                "derivatives (create_graph=True) use a dense linear solver or hessian='gauss_newton'"
            )
        if not create_graph:
            state = tuple(s.detach() for s in state)
            thetas = tuple(t.detach() for t in thetas)
        healthy = None if implicit.guard is None else implicit.guard[0]
        guarded = state if implicit.guard is None else borrowed(*implicit.guard, state, [])[0]
        v = implicit.tangent_cotangent(guarded, grads)
        if healthy is not None:  # a failed element's solution is its start: no gradient
            v = torch.where(healthy[:, None], v, torch.zeros_like(v))
        if implicit.bound is not None:  # a coordinate on its bound does not move
            v = torch.where(implicit.bound, torch.zeros_like(v), v)
        H = implicit.matrix(state, thetas)
        w, ok = implicit.optimizer.linear_solver.factor(H).solve(v)
        unsolved = ~ok if healthy is None else ~ok & healthy
        if bool(unsolved.any()):
            warnings.warn(
                f"OptimizationLayer implicit backward: the {implicit.hessian} Hessian could not be "
                f"factored for batch elements {torch.nonzero(unsolved).flatten().tolist()}; their "
                f"gradients are set to zero (is the solution a strict minimum? for "
                f"hessian='exact' try linear_solver='dense_lu')",
                RuntimeWarning, stacklevel=2,
            )
        # vjp's stub also allows has_aux's 3-tuple
        _, pullback = torch.func.vjp(lambda *th: implicit.gradient(state, th), *thetas)  # type: ignore[misc]
        if healthy is not None:
            w = torch.where(healthy[:, None], w, torch.zeros_like(w))
        theta_grads = pullback(-w)
        return (None, None) + (None,) * ctx.num_blocks + tuple(theta_grads)


class Implicit(Backward):
    """Differentiates the optimality condition at the solution (see the module's description).
    The gradient assumes the forward solve converged: an element that did not converge gets
    the gradient of the point it stopped at, as if it were optimal, and a ``RuntimeWarning`` says
    how many elements that is. The solution does not depend on the initial values (it is the
    minimizer), so no gradient flows to them: ``torch.autograd.grad`` then needs
    ``allow_unused=True`` for an initial value."""

    name = "implicit"

    def check(self, optimizer, inputs, driver) -> None:
        if self.hessian != "exact":
            return
        if optimizer.linear_solver.linearization not in ("dense", "dense_jacobian", "sparse"):
            raise ValueError(
                f"hessian='exact' factors the exact Hessian and needs a dense or sparse linear "
                f"solver (dense_cholesky, dense_lu, dense_qr, sparse_cholesky, schur); "
                f"{optimizer.linear_solver!r} is not one (use hessian='gauss_newton')"
            )
        lacking = [cf for cf in optimizer.objective.cost_functions.values()
                   if not cf.has_second_derivatives]
        if lacking and torch.is_grad_enabled():
            raise ValueError(
                f"hessian='exact' needs second derivatives, which {type(lacking[0]).__name__} "
                f"{lacking[0].name!r} does not provide; use hessian='gauss_newton'"
            )

    def solve(self, optimizer, driver, tracking):
        with torch.no_grad():
            state = driver.solve(optimizer, optimizer.max_iterations, **tracking)
        theta_vars = [v for v in optimizer.objective.aux_vars.values() if v.tensor.requires_grad]
        if not theta_vars or not torch.is_grad_enabled():
            return state, state.values
        # (with every tolerance 0 the user asked for a fixed count: no element can "converge")
        running = 0 if optimizer.fixed_count else int((state.status == Status.RUNNING).sum())
        if running:
            warnings.warn(
                f"OptimizationLayer implicit backward: {running} of {state.status.numel()} batch "
                f"elements did not converge in max_iterations={optimizer.max_iterations}; their "
                f"gradients are those of the point they stopped at, as if it were a solution "
                f"(raise max_iterations, or check info.converged)",
                RuntimeWarning, stacklevel=5,  # the caller of the layer (through nn.Module.__call__)
            )
        bound = None
        if state.lower is not None and state.upper is not None:
            x = coordinates(optimizer.evaluator, tuple(v.detach() for v in state.values))
            bound = at_bounds(x, state.lower, state.upper) != 0
        pieces = ImplicitPieces(optimizer, theta_vars, self.hessian, state.error.shape[0],
                                healthy=state.status != Status.FAILED, bound=bound)
        blocks = tuple(v.detach() for v in state.values)
        thetas = tuple(v.tensor for v in theta_vars)
        return state, ImplicitFunction.apply(pieces, len(blocks), *blocks, *thetas)
