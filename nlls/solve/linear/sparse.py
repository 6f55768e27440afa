"""Sparse Cholesky for large problems: symbolic analysis once, numeric factorization per iteration.

The normal matrix of a pose graph or a bundle adjustment problem has a few nonzeros per row. Its
pattern is fixed by the problem's structure (``SparsePattern``); only values change.

Backends (``backend=``; ``"auto"`` picks by device and availability, shown in ``repr``):

* ``"supernodal"`` (CPU and CUDA; nothing to install): nlls's own supernodal Cholesky in batched
  tensor operations (:mod:`nlls.solve.linear.supernodal`): ordering and symbolic analysis once
  per pattern, shared by every batch size; each element reports its own failure.
* ``"qdldl"`` (CPU; the ``sparse`` extra): ``L D L^T`` with an AMD ordering, analysed once per
  structure and batch size, refactored in place per iteration (:mod:`nlls.solve.linear.ldl`).
* ``"cholmod"`` (CPU; the optional ``nlls[cholmod]`` extra: CVXOPT's wheel, GPL-3,
  :mod:`nlls.solve.linear.cholmod_cvxopt`; or scikit-sparse, which needs SuiteSparse's headers
  and a compiler): CHOLMOD's own choice of simplicial or supernodal Cholesky, analysed once.
* ``"scipy"`` (CPU): SciPy's SuperLU in symmetric mode (diagonal pivots), its minimum-degree
  ordering found once per structure and kept (every factorization is of the permuted matrix).
* ``"cudss"`` (CUDA): ``torch.sparse.spsolve`` (NVIDIA cuDSS), data stays on the GPU.

The batch of the other backends is factored as one block-diagonal matrix. On CPU ``"auto"``
takes the first of CHOLMOD through CVXOPT, QDLDL, CHOLMOD through scikit-sparse, the supernodal
backend and SuperLU that is available, the fastest first as measured by
``bench/bench_sparse_factor.py``; the supernodal backend only on matrices of at least
:data:`~nlls.solve.linear.supernodal_symbolic.MIN_ENTRIES` stored entries whose analysis finds
enough arithmetic for its groups of panels (not on a chain-like one, whose elimination tree is
deep: SuperLU is faster there), and before QDLDL where the factor fills in much (the
dense products then win over QDLDL's scalar loop). On CUDA it is cuDSS, else the supernodal backend. (cholespy is
not offered: it aborts the whole process on a matrix that is not positive definite, which
Gauss-Newton meets on any problem with a gauge freedom.)
Solves are differentiable (a custom autograd function whose backward solves with the same
factorization), including second derivatives. An element whose matrix cannot be factored gets a
zero solution and ``ok = False``; cuDSS factors and solves in one call and reports no failure,
so there each element's solution is checked (:func:`solution_ok`: finite, small residual).

A backend this machine lacks is refused when the solver is made (:func:`available_backends`
lists the others), so a configuration naming it fails when it is loaded.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from ..checks import check_choice
from ..systems import SparseMatrix, SparsePattern
from .base import SINGULAR_ADVICE, Factorization, LinearSolver
from .cholmod_cvxopt import CholmodAnalysis, NotPositiveDefinite, cvxopt_available
from .ldl import LDLAnalysis, qdldl_available
from .superlu import SuperLUOrdering as _SuperLUOrdering
from .superlu import superlu as _superlu
from .supernodal import SupernodalCholesky
from .supernodal_symbolic import MIN_ENTRIES

BACKENDS = ("auto", "supernodal", "cholmod", "qdldl", "scipy", "cudss")
_NEEDS = {"supernodal": "nothing", "cholmod": "the CPU and cvxopt (pip install 'nlls[cholmod]') or scikit-sparse",
          "qdldl": "the CPU and qdldl (pip install qdldl)", "scipy": "the CPU",
          "cudss": "a CUDA device and a PyTorch with torch.sparse.spsolve (cuDSS)"}
_TENSORS = {"supernodal": "CPU or CUDA", "cholmod": "CPU", "qdldl": "CPU", "scipy": "CPU", "cudss": "CUDA"}
#: the CPU backends, fastest first: what ``"auto"`` tries in turn ("cvxopt": CHOLMOD through
#: CVXOPT, "cholmod" once more after QDLDL: through scikit-sparse)
CPU_ORDER = ("cvxopt", "qdldl", "cholmod", "supernodal", "scipy")


def _cholmod_module() -> Optional[str]:
    """Which package gives CHOLMOD here: ``"cvxopt"``, ``"sksparse"`` or ``None``."""
    if cvxopt_available():
        return "cvxopt"
    return "sksparse" if importlib.util.find_spec("sksparse") is not None else None


def _available(backend: str, device: torch.device) -> bool:
    if backend == "cvxopt":  # (an "auto" candidate only: the backend's name is "cholmod")
        return device.type == "cpu" and cvxopt_available()
    if backend == "cholmod":
        return device.type == "cpu" and _cholmod_module() is not None
    if backend == "qdldl":
        return device.type == "cpu" and qdldl_available()
    if backend == "scipy":
        return device.type == "cpu"
    if backend == "supernodal":
        return device.type in ("cpu", "cuda")
    if backend == "cudss":
        return device.type == "cuda" and hasattr(torch.sparse, "spsolve")
    return False


def available_backends(device: Optional[torch.device] = None) -> Tuple[str, ...]:
    """``"auto"`` and the backends that work on ``device`` (on some device of this machine when
    ``None``)."""
    if device is None:
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(device)]
    return ("auto",) + tuple(b for b in BACKENDS[1:] if any(_available(b, d) for d in devices))


def solution_ok(matrix: SparseMatrix, x: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``(B,)``: whether each element's ``x`` solves ``A x = rhs``: finite, with a residual
    ``max |A x - rhs|`` within ``sqrt(eps)`` of ``max (|A| |x| + |rhs|)`` (a backward-stable
    solve is far inside; a failed factorization's finite garbage is far outside)."""
    x, rhs = x.detach(), rhs.detach()
    rows, cols, _, _ = matrix.pattern.on(x.device)
    products = matrix.values.detach().to(x.dtype) * x[:, cols]
    residual = torch.zeros_like(x).index_add_(1, rows, products) - rhs
    scale = torch.zeros_like(x).index_add_(1, rows, products.abs()) + rhs.abs()
    tolerance = torch.finfo(x.dtype).eps ** 0.5
    finite = torch.isfinite(x).all(dim=-1) & torch.isfinite(residual).all(dim=-1)
    return finite & (residual.abs().amax(dim=-1) <= tolerance * scale.amax(dim=-1))


class _BlockDiagonal:
    """CSR arrays of ``B`` copies of a pattern on the diagonal (cached per batch size)."""

    def __init__(self, pattern: SparsePattern, batch: int):
        dof, nnz = pattern.dof, pattern.nnz
        offsets = np.arange(batch)[:, None]
        self.indptr = np.concatenate([
            (pattern.crow[:-1].numpy()[None, :] + offsets * nnz).reshape(-1), [batch * nnz]
        ]).astype(np.int64)
        self.indices = (pattern.cols.numpy()[None, :] + offsets * dof).reshape(-1).astype(np.int64)
        self.size = batch * dof


class _Numeric:
    """One numeric factorization of a block-diagonal batch; ``solve`` on plain tensors."""

    def __init__(self, solver: "SparseCholesky", matrix: SparseMatrix):
        self.solver = solver
        self.pattern = matrix.pattern
        values = matrix.values.detach()
        self.batch, self.dof = values.shape[0], self.pattern.dof
        self.device, self.dtype = values.device, values.dtype
        self.ok = torch.ones(self.batch, dtype=torch.bool, device=self.device)
        try:
            self.handle = solver._factor_values(self.pattern, values, self)
            if self.handle[0] == "supernodal":  # each element's own verdict, nothing raised
                self.ok = self.handle[1].ok
        except _FactorizationFailed as failure:
            if failure.ok is not None:  # the backend told which elements failed
                self.ok = torch.as_tensor(failure.ok, dtype=torch.bool, device=self.device)
            else:  # find the culprits one element at a time (rare path)
                for b in range(self.batch):
                    try:
                        solver._factor_values(self.pattern, values[b:b + 1], None)
                    except _FactorizationFailed:
                        self.ok[b] = False
            # factor the rest, the failed elements replaced by the identity
            safe = torch.where(self.ok[:, None], values, self._identity_values())
            self.handle = solver._factor_values(self.pattern, safe, self)

    def _identity_values(self):
        out = torch.zeros(self.batch, self.pattern.nnz, dtype=self.dtype, device=self.device)
        out[:, self.pattern.diagonal.to(self.device)] = 1.0
        return out

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        x = self.solver._solve_values(self.handle, rhs.detach().reshape(-1))
        x = x.reshape(self.batch, self.dof).to(dtype=rhs.dtype, device=rhs.device)
        return torch.where(self.ok[:, None], x, torch.zeros_like(x))


class _SparseSolve(torch.autograd.Function):
    """``x = A^{-1} b`` with ``A`` given by pattern values; differentiable in values and ``b``."""

    @staticmethod
    def forward(ctx, numeric: _Numeric, values: torch.Tensor, rhs: torch.Tensor):
        x = numeric.solve(rhs)
        ctx.numeric = numeric
        ctx.save_for_backward(values, x)
        return x

    @staticmethod
    def backward(ctx, grad_x):
        values, x = ctx.saved_tensors
        # A symmetric: b_bar = A^{-1} x_bar, A_bar = -b_bar x^T on the pattern
        grad_b = _SparseSolve.apply(ctx.numeric, values, grad_x)
        rows, cols, _, _ = ctx.numeric.pattern.on(grad_b.device)
        grad_values = -(grad_b[:, rows] * x[:, cols])
        return None, grad_values, grad_b


class _SparseFactorization(Factorization):
    def __init__(self, numeric: _Numeric, matrix: SparseMatrix):
        self.numeric = numeric
        self.matrix = matrix
        self.values = matrix.values
        self.ok = numeric.ok

    def solve(self, rhs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = _SparseSolve.apply(self.numeric, self.values, rhs)
        ok = self.ok & torch.isfinite(x).all(dim=-1)
        if self.numeric.handle[0] == "cudss":  # no factorization status: check each solution
            ok = ok & solution_ok(self.matrix, x, rhs)
        return torch.where(ok[:, None], x, torch.zeros_like(x)), ok


class _FactorizationFailed(Exception):
    """A factorization failed; ``ok (B,)`` says which elements, when the backend knows."""

    def __init__(self, reason: str, ok: Optional[np.ndarray] = None):
        super().__init__(reason)
        self.ok = ok


class SparseCholesky(LinearSolver):
    """Sparse Cholesky of the normal matrix; see the module docs for the backends.

    Args:
        backend: ``"auto"``, ``"supernodal"``, ``"cholmod"``, ``"qdldl"``, ``"scipy"`` or ``"cudss"``.

    Raises:
        ValueError: an unknown backend, or one this machine lacks (the message lists those it has).
    """

    name = "sparse_cholesky"
    linearization = "sparse"
    model_from_solve = True  # a direct factorization of a matrix whose products are not cheap
    failure_advice = SINGULAR_ADVICE

    def __init__(self, backend: str = "auto"):
        check_choice("SparseCholesky", "backend", backend, BACKENDS)
        here = available_backends()
        if backend not in here:
            raise ValueError(f"SparseCholesky: backend {backend!r} is not available here (it needs "
                             f"{_NEEDS[backend]}); available here: {', '.join(here)}")
        self.backend = backend
        self.backend_used: Optional[str] = None
        # keyed by (id(pattern), batch): CHOLMOD's and QDLDL's analyses, block-diagonal layouts
        self._symbolic: Dict[Tuple[int, int], Any] = {}
        self._blocks: Dict[Tuple[int, int], _BlockDiagonal] = {}
        self._patterns: Dict[int, SparsePattern] = {}

    def __repr__(self) -> str:
        used = f", used={self.backend_used!r}" if self.backend_used else ""
        return f"SparseCholesky(backend={self.backend!r}{used})"

    def setup(self, linearization) -> None:
        self._symbolic = {}
        self._blocks = {}
        self._patterns = {}

    def _choose(self, device: torch.device, pattern: Optional[SparsePattern] = None) -> str:
        if self.backend != "auto":
            if not _available(self.backend, device):
                usable = ", ".join(available_backends(device))
                if _TENSORS[self.backend].lower() != device.type:
                    raise RuntimeError(
                        f"SparseCholesky: backend {self.backend!r} solves {_TENSORS[self.backend]} "
                        f"tensors, not {device.type}; on {device.type}: {usable}")
                raise RuntimeError(f"SparseCholesky: backend {self.backend!r} needs "
                                   f"{_NEEDS[self.backend]}; on {device.type}: {usable}")
            return self.backend
        order = CPU_ORDER if device.type == "cpu" else ("cudss", "supernodal")
        for candidate in order:
            if not _available(candidate, device):
                continue
            analysis = self._supernodal(pattern).analysis if candidate in ("supernodal", "qdldl") \
                and pattern is not None and pattern.nnz >= MIN_ENTRIES else None  # small: not worth one
            if candidate == "supernodal" and candidate != order[-1] and not (analysis and analysis.suits):
                continue  # small, or a deep elimination tree: too many groups for its work
            if candidate == "qdldl" and analysis is not None and analysis.dense_enough:
                return "supernodal"  # much fill: dense products beat QDLDL's scalar loop
            return "cholmod" if candidate == "cvxopt" else candidate
        raise RuntimeError(f"SparseCholesky: no backend available on {device}")

    def factor(self, matrix: SparseMatrix) -> Factorization:
        if not isinstance(matrix, SparseMatrix):
            raise TypeError("SparseCholesky factors the SparseMatrix of a sparse linearization")
        # the caches are keyed by id(pattern): keep each pattern alive so that its id is not reused
        self._patterns[id(matrix.pattern)] = matrix.pattern
        self.backend_used = self._choose(matrix.values.device, matrix.pattern)
        return _SparseFactorization(_Numeric(self, matrix), matrix)

    # ---- backends ----------------------------------------------------------------------
    def _supernodal(self, pattern: SparsePattern) -> SupernodalCholesky:
        """The supernodal analysis of ``pattern`` (one per pattern, whatever the batch size)."""
        self._patterns[id(pattern)] = pattern
        if (id(pattern), 0) not in self._symbolic:
            self._symbolic[(id(pattern), 0)] = SupernodalCholesky(pattern)
        return self._symbolic[(id(pattern), 0)]

    def _block(self, pattern: SparsePattern, batch: int) -> _BlockDiagonal:
        key = (id(pattern), batch)
        if key not in self._blocks:
            self._blocks[key] = _BlockDiagonal(pattern, batch)
        return self._blocks[key]

    def _factor_values(self, pattern: SparsePattern, values: torch.Tensor, owner: Optional[object]):
        """A handle ``(backend, object)`` of the factorization of ``values (B, nnz)``, which
        ``owner`` keeps (a pooled QDLDL solver is not reused while it lives).

        Raises:
            _FactorizationFailed: some element is not positive definite.
        """
        backend = self.backend_used
        batch = values.shape[0]
        key = (id(pattern), batch)
        if backend == "supernodal":
            return ("supernodal", self._supernodal(pattern).factor(values))
        if backend == "qdldl":
            if key not in self._symbolic:
                self._symbolic[key] = LDLAnalysis(pattern, batch)
            solver, ok = self._symbolic[key].factor(values, owner)
            if ok is None or not ok.all():
                raise _FactorizationFailed("not positive definite", ok)
            return ("qdldl", solver)
        if backend == "cholmod" and _cholmod_module() == "cvxopt":
            if key not in self._symbolic:
                self._symbolic[key] = CholmodAnalysis(pattern, batch)
            analysis = self._symbolic[key]
            try:
                return ("cvxopt", (analysis, analysis.factor(values, owner)))
            except NotPositiveDefinite as exc:
                raise _FactorizationFailed(str(exc)) from None
        block = self._block(pattern, batch)
        if backend == "cudss":
            csr = torch.sparse_csr_tensor(
                torch.as_tensor(block.indptr, device=values.device),
                torch.as_tensor(block.indices, device=values.device),
                values.reshape(-1), size=(block.size, block.size))
            return ("cudss", csr)
        import scipy.sparse

        data = values.reshape(-1).to(torch.float64).cpu().numpy()
        csc = scipy.sparse.csc_matrix((data, block.indices, block.indptr), shape=(block.size, block.size))
        if backend == "cholmod":
            from sksparse import cholmod

            try:
                if key not in self._symbolic:
                    self._symbolic[key] = cholmod.analyze(csc, mode="auto")
                factor = self._symbolic[key].cholesky(csc)
            except cholmod.CholmodNotPositiveDefiniteError as exc:
                raise _FactorizationFailed(str(exc)) from None
            # CHOLMOD's simplicial mode computes L D L^T, which accepts negative pivots
            if not np.all(factor.D() > 0):
                raise _FactorizationFailed("not positive definite")
            return ("cholmod", factor)
        ordering = self._symbolic.get(key)
        try:
            if ordering is None:
                # SuperLU's column order (structural: no numeric pivoting), kept for this pattern;
                # every factorization, the first too, is then of the permuted matrix (the same
                # rounding whichever call of a structure comes first)
                ordering = _SuperLUOrdering(csc, _superlu(csc, "MMD_AT_PLUS_A").perm_c)
                self._symbolic[key] = ordering
            factorization = ordering.factor(data)
        except RuntimeError as exc:  # exactly singular
            raise _FactorizationFailed(str(exc)) from None
        pivots = factorization.lu.U.diagonal()  # builds U: once
        if not np.all(np.isfinite(pivots)) or np.any(pivots <= 0):
            raise _FactorizationFailed("not positive definite")
        return ("scipy", factorization)

    def _solve_values(self, handle, rhs: torch.Tensor) -> torch.Tensor:
        kind, obj = handle
        if kind == "supernodal":
            return obj.solve(rhs.reshape(obj.batch, -1).to(obj.dtype)).reshape(-1)
        if kind == "cudss":
            return torch.sparse.spsolve(obj, rhs.to(obj.dtype))
        rhs_numpy = rhs.to(torch.float64).cpu().numpy()
        if kind == "cvxopt":
            analysis, factor = obj
            return torch.from_numpy(analysis.solve(factor, rhs_numpy))
        x = obj(rhs_numpy) if kind == "cholmod" else obj.solve(rhs_numpy)
        return torch.from_numpy(np.asarray(x, dtype=np.float64))
