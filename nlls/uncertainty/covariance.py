"""The covariance of a solution: blocks of ``(J^T J)^-1``, batched and differentiable.

Near a minimum ``x*`` the cost is ``0.5 ||r(x* (+) delta)||^2 ~ const + 0.5 delta^T A delta`` with
``A = J^T J`` built from the *weighted* residuals, so when the weights are inverse square roots
of the measurement covariances, the estimate's covariance in the tangent at ``x*`` is ``A^-1``
(the Laplace approximation, what Ceres' ``Covariance`` and GTSAM's ``Marginals`` compute). With
a robust loss ``A`` is the Gauss-Newton matrix of the robustified cost, ``J'^T J'`` with the
corrected Jacobian of :class:`~nlls.RobustCostFunction` (the matrix the optimizer uses).
Blocks are in nlls's tangent order (``SE2``: ``x, y, theta``; ``SE3``: translation, then rotation).

**Gauge.** A problem with a null direction (a pose graph without a prior can be moved as a whole;
a coordinate no residual sees) has a singular ``A``. ``gauge="pseudo_inverse"`` returns the
Moore-Penrose pseudo-inverse ``A^+`` (Ceres' ``DENSE_SVD``: eigenvalues at most
``min_reciprocal_condition_number`` times the largest diagonal entry of ``A`` count as zero;
see :mod:`nlls.uncertainty.nullspace` for how they are found). ``gauge=variable`` (or a list)
holds those variables fixed instead: their rows and columns are removed and their marginals are
zero, as with a hard prior on them.

**How.** Both come from one factorization of ``A`` with some coordinates ``F`` held fixed (the
gauge variables' coordinates, or for the pseudo-inverse a set chosen on the null basis so that
the rest is nonsingular): ``G = [[A_ff^-1, 0], [0, 0]]``. For the fixed gauge ``G`` is the
answer. Otherwise ``G`` is a generalized inverse of ``A`` and ``A^+ = P G P`` with ``P`` the
orthogonal projector onto the range of ``A``, whose null basis ``N = [-A_ff^-1 A_fF; I]`` comes
from the same factorization. A block ``C`` of the result needs ``|C|`` solves (plus ``2 k`` once
for ``k`` null directions): nothing dense of size ``D x D`` is formed on the sparse path.

**Differentiable.** ``A`` is built with autograd on (from the values the objective holds, its
aux data and its weights), and every step above is a differentiable operation (dense: torch's
Cholesky; sparse: the sparse solver's solve, whose backward gives the gradient on ``A``'s
nonzero values only). A loss on the covariance of a layer's solution (``objective.update(
solution)``) thus trains through :class:`~nlls.OptimizationLayer`. The pseudo-inverse is
differentiated along matrices of the same rank (the gauge symmetry holds for any data).
"""
from __future__ import annotations

import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..core.evaluation import Evaluator
from ..core.manifold import Manifold
from ..core.objective import Objective
from ..solve.linear import LinearSolver, make_linear_solver
from ..solve.linear.schur_columns import independent_blocks
from ..solve.linearization import DenseLinearization, SparseLinearization
from .nullspace import (
    Matrix,
    choose_gauge,
    diagonal,
    finite,
    identity_where,
    matmul,
    near_singular,
    null_space_dense,
    null_space_iterative,
    solve_columns,
    to_float64,
    with_fixed,
)
from .structure import name_list, variable_columns

DENSE_MAX_DOF = 500  # linear_solver=None: dense up to this many unknowns, sparse beyond
# per evaluator (one per objective structure): its linearizations and default solvers, which
# hold the sparsity pattern and the symbolic analysis, shared by every Covariance of it
_SHARED: "weakref.WeakKeyDictionary[Evaluator, Dict[str, Any]]" = weakref.WeakKeyDictionary()
VariableLike = Union[Manifold, str]


class Covariance:
    """Covariance blocks of an objective's optim variables at their current values.

    Args:
        objective: the problem, at the point of interest (typically after ``optimize()``, or with
            a layer's solution written in by ``objective.update(solution)``).
        linear_solver: ``None`` (dense up to ``DENSE_MAX_DOF`` unknowns; beyond, ``"schur"`` when
            variables that no cost function links hold most unknowns, as a bundle adjustment's
            points do, else ``"sparse_cholesky"``), or a name or instance of a linear solver whose
            linearization is ``"dense"`` (``"dense_cholesky"``, ``"dense_lu"``) or ``"sparse"``
            (``"sparse_cholesky"``, ``"schur"``); its factorization is used.
        gauge: ``"pseudo_inverse"``, or an optim variable (object or name) or a list of them
            held fixed.
        min_reciprocal_condition_number: eigenvalues at most this times the largest diagonal
            entry of ``J^T J`` count as zero (``None``: 100 machine epsilons of the objective's
            dtype, ``2.2e-14`` for float64).

    Attributes (after :meth:`compute`):
        ok: ``(B,)`` bool; a failed element (non-finite data, or a matrix that stays singular
            with the gauge variables fixed) has zero blocks, never NaN, and ``message`` says why.
        null_space_dim: ``(B,)`` the null directions found (``"pseudo_inverse"``; else 0).
        kind: ``"dense"`` or ``"sparse"``, the path taken.
        message: one line on the result.

    Raises:
        TypeError, ValueError: a bad argument (named), or, in :meth:`compute`, a gradient asked
            through a cost function that cannot give it (``NumericDiffCostFunction``).
    """

    def __init__(self, objective: Objective, linear_solver: Union[None, str, LinearSolver] = None,
                 gauge: Union[str, VariableLike, Sequence[VariableLike]] = "pseudo_inverse",
                 min_reciprocal_condition_number: Optional[float] = None):
        if not isinstance(objective, Objective):
            raise TypeError(f"Covariance: objective must be an nlls.Objective, got {type(objective).__name__}")
        self.objective = objective
        self.linear_solver = None if linear_solver is None else make_linear_solver(linear_solver)
        if self.linear_solver is not None and self.linear_solver.linearization not in ("dense", "sparse"):
            raise ValueError(
                f"Covariance: linear_solver {self.linear_solver!r} works on a {self.linear_solver.linearization!r} "
                f"linearization; the covariance factors J^T J: use None, 'dense_cholesky', 'dense_lu' or "
                f"'sparse_cholesky'")
        rcond = min_reciprocal_condition_number
        if rcond is not None and (isinstance(rcond, bool) or not isinstance(rcond, (int, float))
                                  or not 0 <= rcond < 1):
            raise ValueError(f"Covariance: min_reciprocal_condition_number must be a number in [0, 1), got {rcond!r}")
        self.min_reciprocal_condition_number = rcond
        if isinstance(gauge, str) and gauge == "pseudo_inverse":
            self.gauge: Union[str, List[Manifold]] = gauge
        else:
            items = list(gauge) if isinstance(gauge, (list, tuple)) else [gauge]
            self.gauge = [self._variable(item, "gauge") for item in items]
        self.ok: Optional[torch.Tensor] = None
        self.null_space_dim: Optional[torch.Tensor] = None
        self.kind: Optional[str] = None
        self.message = "not computed yet (call compute())"
        # (structure_version, kind, linearization, solver) of the current structure
        self._built: Optional[Tuple[int, str, Union[DenseLinearization, SparseLinearization], LinearSolver]] = None
        self._state: Optional[dict] = None

    # ---- arguments ----------------------------------------------------------------------
    def _variable(self, item, what: str) -> Manifold:
        optim = self.objective.optim_vars
        if isinstance(item, str):
            if item not in optim:
                raise ValueError(f"Covariance: {what} {item!r} is not an optim variable of the objective; "
                                 f"known: {name_list([repr(n) for n in optim], 6)}")
            return optim[item]
        if isinstance(item, Manifold):
            if optim.get(item.name) is not item:
                raise ValueError(f"Covariance: {what} {type(item).__name__} {item.name!r} is not an optim "
                                 f"variable of the objective")
            return item
        raise TypeError(f"Covariance: {what} must be 'pseudo_inverse', an optim variable or its name (or a "
                        f"list of them), got {type(item).__name__}")

    def _columns(self, variables: Sequence[VariableLike], what: str) -> List[int]:
        assert self._built is not None, "_build() runs first"
        where = {id(c.variable): c for c in variable_columns(self._built[2].evaluator)}
        out: List[int] = []
        for item in variables:
            column = where[id(self._variable(item, what))]
            out.extend(range(column.start, column.start + column.dof))
        return out

    def _build(self):
        evaluator = self.objective.evaluator()
        if evaluator is None or not self.objective.optim_vars:
            raise ValueError("Covariance: the objective has no cost functions or no optim variables")
        version = self.objective.structure_version
        if self._built is None or self._built[0] != version:
            solver = self.linear_solver
            shared = _SHARED.setdefault(evaluator, {})  # structures reused by later covariances
            if solver is None:
                name = ("dense_cholesky" if evaluator.dof <= DENSE_MAX_DOF
                        else "schur" if _mostly_independent(evaluator) else "sparse_cholesky")
                solver = shared.setdefault(name, make_linear_solver(name))
            kind = solver.linearization
            if kind not in shared:
                shared[kind] = (DenseLinearization if kind == "dense" else SparseLinearization)(evaluator)
            linearization = shared[kind]
            solver.setup(linearization)
            self._built = (version, kind, linearization, solver)
            self.kind = kind
        return self._built

    # ---- the work -----------------------------------------------------------------------
    def compute(self) -> "Covariance":
        """Linearize at the objective's current values and factor (once per call); returns
        ``self``. Call it again after the values change."""
        _, kind, linearization, solver = self._build()
        evaluator = linearization.evaluator
        batch = evaluator.batch_size()
        values, aux = evaluator.gather(batch), evaluator.aux(batch)
        _check_gradients(evaluator, values, aux)
        matrix: Matrix = to_float64(linearization.linearize(values, aux).A)
        good = finite(matrix)
        matrix = identity_where(matrix, ~good)
        scale = diagonal(matrix).detach().amax(dim=-1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        threshold = self._rcond() * scale
        size = evaluator.dof
        if isinstance(self.gauge, str):
            if isinstance(matrix, torch.Tensor):
                count, basis = null_space_dense(matrix, threshold)
                found = torch.ones_like(good)
            else:
                count, basis, found = null_space_iterative(matrix, solver.factor, threshold, scale,
                                                           torch.finfo(self.objective.dtype).eps)
            fixed, picks, valid = choose_gauge(basis, count)
            good = good & found
        else:
            fixed = torch.zeros(batch, size, dtype=torch.bool, device=scale.device)
            fixed[:, self._columns(self.gauge, "gauge")] = True
            count = torch.zeros(batch, dtype=torch.long, device=scale.device)
            picks = valid = torch.zeros(batch, 0, dtype=torch.long, device=scale.device)
        reduced = with_fixed(matrix, fixed, scale)
        factorization = solver.factor(reduced)
        singular = ~factorization.ok | near_singular(reduced, factorization, threshold)
        ok = good & ~singular
        if not bool(ok.all()):  # factor again with the failed elements as the identity: no NaN, no inf
            reduced = identity_where(reduced, ~ok)
            factorization = solver.factor(reduced)
        free = (~fixed).to(scale.dtype)
        state = dict(factorization=factorization, free=free, width=int(count.max()) if count.numel() else 0)
        if state["width"]:
            units = torch.nn.functional.one_hot(picks, size).mT.to(scale.dtype) * valid[:, None, :]
            rhs = -matmul(matrix, units) * free[..., None] + units * scale[:, None, None]
            null, solved = solve_columns(factorization, rhs)  # [-A_ff^-1 A_fF; I]
            gram = null.mT @ null + torch.diag_embed((~valid).to(scale.dtype))
            g_null, solved2 = solve_columns(factorization, null * free[..., None])
            g_null = g_null * free[..., None]
            state.update(null=null, gram_inverse=torch.cholesky_inverse(torch.linalg.cholesky(gram)),
                         null_g_null=null.mT @ g_null)
            ok = ok & solved & solved2
        self._state = state
        self.ok, self.null_space_dim = ok, count
        self.message = self._message(ok, good, singular, count)
        return self

    def _rcond(self) -> float:
        if self.min_reciprocal_condition_number is not None:
            return float(self.min_reciprocal_condition_number)
        return 100 * torch.finfo(self.objective.dtype).eps

    def _message(self, ok, good, singular, count) -> str:
        gauge = "pseudo-inverse" if isinstance(self.gauge, str) else (
            f"{name_list([repr(v.name) for v in self.gauge])} held fixed")
        text = f"covariance ({gauge}): {int(ok.sum())}/{ok.numel()} element(s) ok"
        if isinstance(self.gauge, str) and bool(count.any()):
            dims = sorted(set(count.tolist()))
            text += f"; null directions found: {', '.join(map(str, dims))}"
        bad = (~good).nonzero().flatten().tolist()
        if bad:
            text += (f"; element(s) {bad[:10]}: J^T J is not finite, or its null directions were not "
                     f"found (their blocks are zero)")
        stuck = (singular & good).nonzero().flatten().tolist()
        if stuck:
            text += (f"; element(s) {stuck[:10]}: J^T J stays singular with the gauge fixed (a gauge direction "
                     f"left free, or a variable no residual constrains: nlls.diagnose(objective) names them; "
                     f"their blocks are zero)")
        return text

    def joint(self, variables: Sequence[VariableLike]) -> torch.Tensor:
        """The joint covariance of ``variables`` (objects or names), ``(B, sum dof, sum dof)``,
        blocks in the given order, each in its variable's tangent; differentiable. Calls
        :meth:`compute` first if it has not run."""
        if isinstance(variables, (str, Manifold)) or not isinstance(variables, (list, tuple)):
            raise TypeError(f"Covariance.joint expects a list of variables, got {type(variables).__name__}")
        chosen = [self._variable(item, "variable") for item in variables]
        if self._state is None or self._built is None or self._built[0] != self.objective.structure_version:
            self.compute()
        assert self._state is not None and self.ok is not None, "compute() sets the state"
        state = self._state
        columns = self._columns(chosen, "variable")
        free = state["free"]
        size = free.shape[1]
        units = torch.zeros(free.shape[0], size, len(columns), dtype=free.dtype, device=free.device)
        units[:, columns, torch.arange(len(columns))] = 1.0
        x, solved = solve_columns(state["factorization"], units)
        g_columns = x * free[..., None] * free[:, columns][:, None, :]  # G[:, C]
        out = g_columns[:, columns, :]
        if state["width"]:
            null_c = state["null"][:, columns, :]
            left = null_c @ state["gram_inverse"]  # (B, |C|, k)
            projected = left @ (state["null"].mT @ g_columns)
            out = out - projected - projected.mT + left @ state["null_g_null"] @ left.mT
        out = 0.5 * (out + out.mT)
        ok = self.ok & solved
        return torch.where(ok[:, None, None], out, torch.zeros_like(out)).to(self.objective.dtype)

    def marginal(self, variable: VariableLike) -> torch.Tensor:
        """The covariance of one variable (object or name), ``(B, dof, dof)`` in its tangent."""
        return self.joint([variable])

    def __repr__(self) -> str:
        gauge = self.gauge if isinstance(self.gauge, str) else [v.name for v in self.gauge]
        return f"Covariance(linear_solver={self.linear_solver!r}, gauge={gauge!r})"


def _mostly_independent(evaluator) -> bool:
    """Whether variables that no cost function links (a Schur complement eliminates them) hold
    most of the unknowns."""
    blocks = independent_blocks(evaluator)
    if not blocks:
        return False
    largest = max(evaluator.blocks[b].size for b in blocks)
    return 2 * largest > evaluator.dof


def _check_gradients(evaluator, values, aux) -> None:
    """Refuse, naming it, a cost function whose Jacobians cannot carry a gradient that is asked
    for (some value or aux tensor it reads requires grad)."""
    if not torch.is_grad_enabled():
        return
    for group, group_aux in zip(evaluator.groups, aux):
        twin = group.twin  # flags read on the instance: wrappers (robust losses) ask their inner cost
        moving = any(values[slot.block].requires_grad for slot in group.optim_slots)
        data = any(t.requires_grad for t in group_aux)
        missing = ("has_second_derivatives" if moving and not twin.has_second_derivatives else
                   "has_autograd_graph" if data and not twin.has_autograd_graph else None)
        if missing:
            raise ValueError(
                f"Covariance: {group.describe()} ({type(twin).__name__}, {missing}=False) cannot differentiate its "
                f"Jacobians, and a tensor it reads requires grad; compute under torch.no_grad() or detach it")


__all__ = ["Covariance", "DENSE_MAX_DOF"]
