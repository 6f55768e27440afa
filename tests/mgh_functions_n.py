"""The Moré–Garbow–Hillstrom residuals of variable dimension (numbers 23 to 35), batched.

``x (B, n) -> r (B, m)``, each from the paper's definition; Jacobians ``(B, m, n)`` beside them.
"""
import math

import torch


def _index(count, like, start=1):
    return torch.arange(start, start + count, dtype=like.dtype, device=like.device)


def _eye(x, m=None):
    n = x.shape[1]
    return torch.eye(m or n, n, dtype=x.dtype, device=x.device).expand(x.shape[0], -1, -1)


# ---- 23 Penalty I (m = n + 1) ---------------------------------------------------------------------
def penalty1(x):
    a = math.sqrt(1e-5)
    return torch.cat([a * (x - 1), (x ** 2).sum(1, keepdim=True) - 0.25], dim=1)


def penalty1_jacobian(x):
    return torch.cat([math.sqrt(1e-5) * _eye(x), 2 * x[:, None, :]], dim=1)


# ---- 24 Penalty II (m = 2n) -----------------------------------------------------------------------
def penalty2(x):
    n = x.shape[1]
    a = math.sqrt(1e-5)
    i = _index(n - 1, x, start=2)
    y = torch.exp(i / 10) + torch.exp((i - 1) / 10)
    e = torch.exp(x / 10)
    weights = _index(n, x).flip(0)  # n - j + 1
    return torch.cat([x[:, :1] - 0.2, a * (e[:, 1:] + e[:, :-1] - y), a * (e[:, 1:] - math.exp(-0.1)),
                      (weights * x ** 2).sum(1, keepdim=True) - 1], dim=1)


def penalty2_jacobian(x):
    B, n = x.shape
    a = math.sqrt(1e-5)
    de = torch.exp(x / 10) / 10
    J = x.new_zeros(B, 2 * n, n)
    J[:, 0, 0] = 1
    rows = torch.arange(1, n, device=x.device)
    J[:, rows, rows] = a * de[:, 1:]
    J[:, rows, rows - 1] = a * de[:, :-1]
    J[:, rows + n - 1, rows] = a * de[:, 1:]
    J[:, 2 * n - 1] = 2 * _index(n, x).flip(0) * x
    return J


# ---- 25 Variably dimensioned (m = n + 2) ----------------------------------------------------------
def variably_dimensioned(x):
    s = ((x - 1) * _index(x.shape[1], x)).sum(1, keepdim=True)
    return torch.cat([x - 1, s, s ** 2], dim=1)


def variably_dimensioned_jacobian(x):
    j = _index(x.shape[1], x)
    s = ((x - 1) * j).sum(1, keepdim=True)
    return torch.cat([_eye(x), j.expand(x.shape[0], 1, -1), (2 * s * j)[:, None, :]], dim=1)


# ---- 26 Trigonometric (m = n) ---------------------------------------------------------------------
def trigonometric(x):
    n = x.shape[1]
    return n - torch.cos(x).sum(1, keepdim=True) + _index(n, x) * (1 - torch.cos(x)) - torch.sin(x)


def trigonometric_jacobian(x):
    n = x.shape[1]
    diag = _index(n, x) * torch.sin(x) - torch.cos(x)
    return torch.sin(x)[:, None, :].expand(-1, n, -1) + torch.diag_embed(diag)


# ---- 27 Brown almost-linear (m = n) ---------------------------------------------------------------
def brown_almost_linear(x):
    n = x.shape[1]
    head = x[:, :-1] + x.sum(1, keepdim=True) - (n + 1)
    return torch.cat([head, x.prod(1, keepdim=True) - 1], dim=1)


def brown_almost_linear_jacobian(x):
    n = x.shape[1]
    head = torch.ones_like(x)[:, None, :].expand(-1, n - 1, -1) + _eye(x, n - 1)
    others = x[:, None, :].expand(-1, n, -1).masked_fill(
        torch.eye(n, dtype=torch.bool, device=x.device), 1.0)
    return torch.cat([head, others.prod(2)[:, None, :]], dim=1)


# ---- 28 Discrete boundary value (m = n) -----------------------------------------------------------
def _grid(x):
    h = 1 / (x.shape[1] + 1)
    return h, h * _index(x.shape[1], x)


def boundary_value(x):
    h, t = _grid(x)
    pad = torch.nn.functional.pad(x, (1, 1))
    return 2 * x - pad[:, :-2] - pad[:, 2:] + h ** 2 * (x + t + 1) ** 3 / 2


def boundary_value_jacobian(x):
    h, t = _grid(x)
    n = x.shape[1]
    band = -torch.diag(x.new_ones(n - 1), 1) - torch.diag(x.new_ones(n - 1), -1)
    return band + torch.diag_embed(2 + 1.5 * h ** 2 * (x + t + 1) ** 2)


# ---- 29 Discrete integral equation (m = n) --------------------------------------------------------
def _integral_weights(x):
    h, t = _grid(x)
    lower = torch.tril(torch.ones(x.shape[1], x.shape[1], dtype=x.dtype, device=x.device))
    # W[i, j] = (1 - t_i) t_j for j <= i, t_i (1 - t_j) for j > i
    return h, t, lower * (1 - t)[:, None] * t + (1 - lower) * t[:, None] * (1 - t)


def integral_equation(x):
    h, t, W = _integral_weights(x)
    return x + h / 2 * (x + t + 1) ** 3 @ W.T


def integral_equation_jacobian(x):
    h, t, W = _integral_weights(x)
    return _eye(x) + h / 2 * W * 3 * ((x + t + 1) ** 2)[:, None, :]


# ---- 30 Broyden tridiagonal (m = n) ---------------------------------------------------------------
def broyden_tridiagonal(x):
    pad = torch.nn.functional.pad(x, (1, 1))
    return (3 - 2 * x) * x - pad[:, :-2] - 2 * pad[:, 2:] + 1


def broyden_tridiagonal_jacobian(x):
    n = x.shape[1]
    band = -torch.diag(x.new_ones(n - 1), -1) - 2 * torch.diag(x.new_ones(n - 1), 1)
    return band + torch.diag_embed(3 - 4 * x)


# ---- 31 Broyden banded (m = n, ml = 5, mu = 1) ----------------------------------------------------
def _band(x, lower=5, upper=1):
    n = x.shape[1]
    i = torch.arange(n, device=x.device)
    offset = i[None, :] - i[:, None]
    return ((offset >= -lower) & (offset <= upper) & (offset != 0)).to(x.dtype)


def broyden_banded(x):
    return x * (2 + 5 * x ** 2) + 1 - (x * (1 + x)) @ _band(x).T


def broyden_banded_jacobian(x):
    return torch.diag_embed(2 + 15 * x ** 2) - _band(x) * (1 + 2 * x)[:, None, :]


# ---- 32 Linear function, full rank; 33 rank 1; 34 rank 1 with zero columns and rows ---------------
def linear_full_rank(x, m):
    n = x.shape[1]
    s = 2 / m * x.sum(1, keepdim=True)
    return torch.cat([x - s - 1, (-s - 1).expand(-1, m - n)], dim=1)


def linear_full_rank_jacobian(x, m):
    n = x.shape[1]
    return torch.eye(m, n, dtype=x.dtype, device=x.device).expand(x.shape[0], -1, -1) - 2 / m


def linear_rank1(x, m):
    s = (x * _index(x.shape[1], x)).sum(1, keepdim=True)
    return _index(m, x) * s - 1


def linear_rank1_jacobian(x, m):
    i, j = _index(m, x), _index(x.shape[1], x)
    return (i[:, None] * j).expand(x.shape[0], -1, -1)


def linear_rank1_zero(x, m):
    n = x.shape[1]
    s = (x[:, 1:n - 1] * _index(n - 2, x, start=2)).sum(1, keepdim=True)
    i = _index(m - 2, x, start=2)
    minus_one = -torch.ones_like(s)
    return torch.cat([minus_one, (i - 1) * s - 1, minus_one], dim=1)


def linear_rank1_zero_jacobian(x, m):
    n = x.shape[1]
    j = torch.cat([x.new_zeros(1), _index(n - 2, x, start=2), x.new_zeros(1)])
    i = torch.cat([x.new_zeros(1), _index(m - 2, x, start=1), x.new_zeros(1)])  # i - 1, 0 at the ends
    return (i[:, None] * j).expand(x.shape[0], -1, -1)


# ---- 35 Chebyquad (m = n here) --------------------------------------------------------------------
def _chebyshev(x, m):
    """T_1..T_m of the shifted Chebyshev polynomials at x in [0, 1], and their derivatives."""
    u = 2 * x - 1
    values, slopes = [torch.ones_like(x), u], [torch.zeros_like(x), torch.ones_like(x)]
    for _ in range(2, m + 1):
        values.append(2 * u * values[-1] - values[-2])
        slopes.append(2 * values[-2] + 2 * u * slopes[-1] - slopes[-2])
    return torch.stack(values[1:], 1), 2 * torch.stack(slopes[1:], 1)  # (B, m, n) each


def _chebyquad_y(x, m):
    i = _index(m, x)
    even = torch.remainder(i, 2) == 0
    return torch.where(even, -1 / (i ** 2 - 1), torch.zeros_like(i))


def chebyquad(x, m):
    values, _ = _chebyshev(x, m)
    return values.mean(2) - _chebyquad_y(x, m)


def chebyquad_jacobian(x, m):
    _, slopes = _chebyshev(x, m)
    return slopes / x.shape[1]
