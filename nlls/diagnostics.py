"""Which variables does the objective leave unconstrained? :func:`diagnose` names them.

A least-squares problem is well posed at a point when ``A = J^T J`` (weighted, at the current
values) is nonsingular. A null direction ``n`` (``A n = 0``) moves the variables without changing
the cost to second order: the normal equations are singular (Gauss-Newton fails, covariances are
infinite). Two kinds are common, and the report names both:

* **unconstrained coordinates**: a coordinate (or a whole variable) that no residual depends on,
  e.g. ``'ab'[1]``;
* **gauge directions**: the cost is invariant to moving many variables together, e.g. a pose
  graph without a prior (``3`` directions shared by every ``SE2`` pose, ``6`` for ``SE3``), a
  bundle adjustment without fixed cameras (``7``: rotation, translation, scale).

How: the null directions are the eigenvectors of ``A`` with eigenvalues at most ``rcond`` times
its largest diagonal entry (float64): the eigendecomposition of the dense ``A`` for up to
``DENSE_MAX_DOF`` unknowns, block inverse iteration with the sparse factorization beyond
(:mod:`nlls.uncertainty.nullspace`). Unconstrained coordinates are read off the diagonal of
``A``; the other null directions are split by the connected components of the objective
(variables tied by cost functions) and reported with the variables they move. Each batch element
is analysed; findings shared by several elements are reported once, with the elements.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from .core.objective import Objective
from .solve.linear import LinearSolver, SparseCholesky
from .solve.linearization import DenseLinearization, SparseLinearization
from .uncertainty.covariance import DENSE_MAX_DOF
from .uncertainty.nullspace import diagonal, null_space_dense, null_space_iterative, to_float64
from .uncertainty.structure import Column, components, coordinate_name, kinds, name_list, variable_columns


@dataclass(frozen=True)
class Finding:
    """One reason for a singular ``J^T J``.

    Attributes:
        kind: ``"unconstrained"`` (coordinates no residual depends on) or ``"gauge"`` (null
            directions that move several variables, or a combination of one variable's
            coordinates).
        directions: how many null directions.
        variables: the names of the variables involved.
        coordinates: ``'ab'[1]``-style names of the coordinates (``"unconstrained"``), or of the
            variables (``"gauge"``).
        elements: the batch elements where it holds.
        text: the sentence :class:`Diagnosis` prints.
    """

    kind: str
    directions: int
    variables: Tuple[str, ...]
    coordinates: Tuple[str, ...]
    elements: Tuple[int, ...]
    text: str


@dataclass
class Diagnosis:
    """The report of :func:`diagnose`: ``str()`` reads as a few lines; the fields are structured.

    Attributes:
        batch_size, dof: the problem's batch size and unknowns.
        null_space_dim: ``(B,)`` null directions per element.
        findings: the :class:`Finding` s, unconstrained coordinates first.
        method: how the null directions were found.
        threshold: the relative eigenvalue threshold used.
    """

    batch_size: int
    dof: int
    null_space_dim: torch.Tensor
    findings: List[Finding] = field(default_factory=list)
    method: str = ""
    threshold: float = 0.0

    @property
    def ok(self) -> bool:
        """No null direction in any element."""
        return not bool(self.null_space_dim.any())

    def unconstrained(self) -> List[str]:
        """The names of every coordinate no residual depends on (in any element)."""
        return [name for f in self.findings if f.kind == "unconstrained" for name in f.coordinates]

    def __str__(self) -> str:
        head = (f"diagnosis: batch {self.batch_size}, {self.dof} unknowns, {self.method} (eigenvalues "
                f"<= {self.threshold:.2g} x the largest diagonal entry of J^T J count as zero)")
        if self.ok:
            return head + "\n  no null directions: J^T J is nonsingular at the current values"
        dims = sorted(set(self.null_space_dim.tolist()))
        lines = [head, f"  null directions per element: {', '.join(map(str, dims))}"]
        for finding in self.findings:
            where = ""
            if self.batch_size > 1 and len(finding.elements) < self.batch_size:
                where = f"element(s) {list(finding.elements)[:10]}: "
            lines.append(f"  - {where}{finding.text}")
        return "\n".join(lines)


def diagnose(objective: Objective, linear_solver: Union[None, str, LinearSolver] = None,
             min_reciprocal_condition_number: Optional[float] = None) -> Diagnosis:
    """Find the null directions of ``J^T J`` at the objective's current values and name the
    variables they move (see the module docs).

    Args:
        objective: the problem.
        linear_solver: ``None`` (dense eigendecomposition up to ``DENSE_MAX_DOF`` unknowns, sparse
            inverse iteration beyond), ``"dense"`` or ``"sparse"``, or a sparse solver instance to
            factor with.
        min_reciprocal_condition_number: the relative eigenvalue threshold (``None``: 100 machine
            epsilons of the objective's dtype).

    Returns:
        a :class:`Diagnosis`.
    """
    if not isinstance(objective, Objective):
        raise TypeError(f"diagnose: objective must be an nlls.Objective, got {type(objective).__name__}")
    evaluator = objective.evaluator()
    if evaluator is None or not objective.optim_vars:
        raise ValueError("diagnose: the objective has no cost functions or no optim variables")
    if isinstance(linear_solver, LinearSolver):
        kind, solver = linear_solver.linearization, linear_solver
    elif linear_solver in (None, "dense", "sparse"):
        kind = linear_solver or ("dense" if evaluator.dof <= DENSE_MAX_DOF else "sparse")
        solver = SparseCholesky()
    else:
        raise ValueError(f"diagnose: linear_solver must be None, 'dense', 'sparse' or a LinearSolver, "
                         f"got {linear_solver!r}")
    if kind not in ("dense", "sparse"):
        raise ValueError(f"diagnose: {solver!r} works on a {kind!r} linearization; use a dense or sparse one")
    rcond = (100 * torch.finfo(objective.dtype).eps if min_reciprocal_condition_number is None
             else float(min_reciprocal_condition_number))
    batch = evaluator.batch_size()
    with torch.no_grad():
        values, aux = evaluator.gather(batch), evaluator.aux(batch)
        linearization = (DenseLinearization if kind == "dense" else SparseLinearization)(evaluator)
        if kind == "sparse":
            solver.setup(linearization)
        matrix = to_float64(linearization.linearize(values, aux).A)
        diag = diagonal(matrix)
        scale = diag.amax(dim=-1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        threshold = rcond * scale
        if isinstance(matrix, torch.Tensor):
            count, basis = null_space_dense(matrix, threshold)
            method = "dense eigendecomposition"
        else:
            count, basis, _ = null_space_iterative(matrix, solver.factor, threshold, scale,
                                                   torch.finfo(objective.dtype).eps)
            method = "sparse inverse iteration"
    columns = variable_columns(evaluator)
    label, _ = components(evaluator)
    findings: Dict[Tuple, List] = {}
    for b in range(batch):
        unseen = (diag[b] <= threshold[b]).cpu().numpy()
        null = basis[b, :, : int(count[b])].cpu().numpy()
        for key, text in _element_findings(columns, label, unseen, null):
            findings.setdefault(key, [text, []])[1].append(b)
    report = [Finding(key[0], key[1], key[2], key[3], tuple(elements), text)
              for key, (text, elements) in findings.items()]
    report.sort(key=lambda f: (f.kind != "unconstrained", f.elements))
    return Diagnosis(batch, evaluator.dof, count.cpu(), report, method, rcond)


def _element_findings(columns: List[Column], label: np.ndarray, unseen: np.ndarray, null: np.ndarray):
    """``(key, text)`` per finding of one element: ``unseen (D,)`` coordinates, ``null (D, k)``."""
    out = []
    names = [coordinate_name(c, np.nonzero(unseen[c.start: c.start + c.dof])[0].tolist())
             for c in columns if unseen[c.start: c.start + c.dof].any()]
    if names:
        owners = tuple(c.variable.name for c in columns if unseen[c.start: c.start + c.dof].any())
        text = (f"{int(unseen.sum())} unconstrained coordinate(s): no residual depends on "
                f"{name_list(names, 8)}")
        out.append((("unconstrained", int(unseen.sum()), owners, tuple(names)), text))
    rest = null * (~unseen)[:, None]
    if rest.size:
        u, s, _ = np.linalg.svd(rest, full_matrices=False)
        rest = u[:, s > 0.5]
    if rest.shape[1] == 0:
        return out
    by_component: Dict[int, List[Column]] = {}
    for column in columns:
        by_component.setdefault(int(label[column.index]), []).append(column)
    for members in by_component.values():
        rows = np.concatenate([np.arange(c.start, c.start + c.dof) for c in members])
        block = rest[rows]
        k = int((np.linalg.svd(block, compute_uv=False) > 0.5).sum()) if block.size else 0
        if k == 0:
            continue
        weight = {c.index: float(np.linalg.norm(rest[c.start: c.start + c.dof])) for c in members}
        top = max(weight.values())
        moved = [c for c in members if weight[c.index] > 1e-6 * top]
        var_names = tuple(c.variable.name for c in moved)
        shown = name_list([repr(n) for n in var_names])
        if len(moved) == 1:
            text = (f"{k} null direction(s) within {shown} ({type(moved[0].variable).__name__}): a "
                    f"combination of its coordinates no residual constrains")
        else:
            every = "all " if len(moved) == len(members) else ""
            text = (f"{k} gauge direction(s) shared by {every}{kinds(moved)} variables ({shown}): moving "
                    f"them together leaves the cost unchanged; fix one (a prior such as nlls.Difference, or "
                    f"Covariance(gauge=...))")
        out.append((("gauge", k, var_names, tuple(repr(n) for n in var_names)), text))
    return out


__all__ = ["Diagnosis", "Finding", "diagnose"]
