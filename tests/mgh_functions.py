"""The Moré–Garbow–Hillstrom residuals (ACM TOMS 7(1), 1981, 17-41), batched: ``x (B, n) -> r (B, m)``.

Numbered as in the paper. Each residual is written from the paper's definition; the Jacobians
that are short to write out sit beside it (``jacobian(x) -> (B, m, n)``); ``tests/mgh.py`` falls
back to ``torch.func.jacrev`` for the others. Data tables are the paper's.
"""
import math

import torch


def _t(values, like):
    return torch.as_tensor(values, dtype=like.dtype, device=like.device)


def _index(count, like, start=1):
    return torch.arange(start, start + count, dtype=like.dtype, device=like.device)


# ---- 1 Rosenbrock, 21 extended Rosenbrock (n even) ------------------------------------------------
def rosenbrock(x):
    x1, x2 = x[:, 0::2], x[:, 1::2]
    return torch.stack([10 * (x2 - x1 ** 2), 1 - x1], dim=2).reshape(x.shape[0], -1)


def rosenbrock_jacobian(x):
    B, n = x.shape
    J = x.new_zeros(B, n, n)
    i = torch.arange(0, n, 2, device=x.device)
    J[:, i, i] = -20 * x[:, 0::2]
    J[:, i, i + 1] = 10
    J[:, i + 1, i] = -1
    return J


# ---- 2 Freudenstein and Roth ----------------------------------------------------------------------
def freudenstein_roth(x):
    x1, x2 = x[:, 0], x[:, 1]
    return torch.stack([-13 + x1 + ((5 - x2) * x2 - 2) * x2,
                        -29 + x1 + ((x2 + 1) * x2 - 14) * x2], dim=1)


def freudenstein_roth_jacobian(x):
    x2 = x[:, 1]
    one = torch.ones_like(x2)
    return torch.stack([torch.stack([one, 10 * x2 - 3 * x2 ** 2 - 2], dim=1),
                        torch.stack([one, 3 * x2 ** 2 + 2 * x2 - 14], dim=1)], dim=1)


# ---- 3 Powell badly scaled ------------------------------------------------------------------------
def powell_badly_scaled(x):
    x1, x2 = x[:, 0], x[:, 1]
    return torch.stack([1e4 * x1 * x2 - 1, torch.exp(-x1) + torch.exp(-x2) - 1.0001], dim=1)


def powell_badly_scaled_jacobian(x):
    x1, x2 = x[:, 0], x[:, 1]
    return torch.stack([torch.stack([1e4 * x2, 1e4 * x1], dim=1),
                        torch.stack([-torch.exp(-x1), -torch.exp(-x2)], dim=1)], dim=1)


# ---- 4 Brown badly scaled -------------------------------------------------------------------------
def brown_badly_scaled(x):
    x1, x2 = x[:, 0], x[:, 1]
    return torch.stack([x1 - 1e6, x2 - 2e-6, x1 * x2 - 2], dim=1)


def brown_badly_scaled_jacobian(x):
    x1, x2 = x[:, 0], x[:, 1]
    one, zero = torch.ones_like(x1), torch.zeros_like(x1)
    return torch.stack([torch.stack([one, zero], 1), torch.stack([zero, one], 1),
                        torch.stack([x2, x1], 1)], dim=1)


# ---- 5 Beale --------------------------------------------------------------------------------------
_BEALE_Y = (1.5, 2.25, 2.625)


def beale(x):
    i = _index(3, x)
    return _t(_BEALE_Y, x) - x[:, :1] * (1 - x[:, 1:2] ** i)


def beale_jacobian(x):
    i = _index(3, x)
    x1, x2 = x[:, :1], x[:, 1:2]
    return torch.stack([-(1 - x2 ** i), x1 * i * x2 ** (i - 1)], dim=2)


# ---- 6 Jennrich and Sampson (m = 10) -------------------------------------------------------------
def jennrich_sampson(x):
    i = _index(10, x)
    return 2 + 2 * i - (torch.exp(i * x[:, :1]) + torch.exp(i * x[:, 1:2]))


def jennrich_sampson_jacobian(x):
    i = _index(10, x)
    return torch.stack([-i * torch.exp(i * x[:, :1]), -i * torch.exp(i * x[:, 1:2])], dim=2)


# ---- 7 Helical valley -----------------------------------------------------------------------------
def helical_valley(x):
    x1, x2, x3 = x[:, 0], x[:, 1], x[:, 2]
    theta = torch.atan(x2 / x1) / (2 * math.pi) + 0.5 * (x1 < 0).to(x.dtype)
    return torch.stack([10 * (x3 - 10 * theta), 10 * (torch.sqrt(x1 ** 2 + x2 ** 2) - 1), x3], dim=1)


def helical_valley_jacobian(x):
    x1, x2 = x[:, 0], x[:, 1]
    r2 = x1 ** 2 + x2 ** 2
    r = torch.sqrt(r2)
    zero, one = torch.zeros_like(x1), torch.ones_like(x1)
    scale = 100 / (2 * math.pi)
    return torch.stack([torch.stack([scale * x2 / r2, -scale * x1 / r2, 10 * one], 1),
                        torch.stack([10 * x1 / r, 10 * x2 / r, zero], 1),
                        torch.stack([zero, zero, one], 1)], dim=1)


# ---- 8 Bard ---------------------------------------------------------------------------------------
_BARD_Y = (0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39)


def _bard_uvw(x):
    u = _index(15, x)
    v = 16 - u
    return u, v, torch.minimum(u, v)


def bard(x):
    u, v, w = _bard_uvw(x)
    return _t(_BARD_Y, x) - (x[:, :1] + u / (v * x[:, 1:2] + w * x[:, 2:3]))


def bard_jacobian(x):
    u, v, w = _bard_uvw(x)
    d = (v * x[:, 1:2] + w * x[:, 2:3]) ** 2
    return torch.stack([-torch.ones_like(d), u * v / d, u * w / d], dim=2)


# ---- 9 Gaussian -----------------------------------------------------------------------------------
_GAUSSIAN_Y = (0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989,
               0.3521, 0.2420, 0.1295, 0.0540, 0.0175, 0.0044, 0.0009)


def gaussian(x):
    t = (8 - _index(15, x)) / 2
    x1, x2, x3 = x[:, :1], x[:, 1:2], x[:, 2:3]
    return x1 * torch.exp(-x2 * (t - x3) ** 2 / 2) - _t(_GAUSSIAN_Y, x)


def gaussian_jacobian(x):
    t = (8 - _index(15, x)) / 2
    x1, x2, x3 = x[:, :1], x[:, 1:2], x[:, 2:3]
    e = torch.exp(-x2 * (t - x3) ** 2 / 2)
    return torch.stack([e, -x1 * e * (t - x3) ** 2 / 2, x1 * e * x2 * (t - x3)], dim=2)


# ---- 10 Meyer -------------------------------------------------------------------------------------
_MEYER_Y = (34780, 28610, 23650, 19630, 16370, 13720, 11540, 9744, 8261, 7030, 6005, 5147, 4427,
            3820, 3307, 2872)


def meyer(x):
    t = 45 + 5 * _index(16, x)
    return x[:, :1] * torch.exp(x[:, 1:2] / (t + x[:, 2:3])) - _t(_MEYER_Y, x)


def meyer_jacobian(x):
    t = 45 + 5 * _index(16, x)
    x1, x2, x3 = x[:, :1], x[:, 1:2], x[:, 2:3]
    e = torch.exp(x2 / (t + x3))
    return torch.stack([e, x1 * e / (t + x3), -x1 * e * x2 / (t + x3) ** 2], dim=2)


# ---- 11 Gulf research and development (m = 99) ----------------------------------------------------
def _gulf_ty(x, m=99):
    t = _index(m, x) / 100
    return t, 25 + (-50 * torch.log(t)) ** (2 / 3)


def gulf(x):
    t, y = _gulf_ty(x)
    return torch.exp(-torch.abs(y - x[:, 1:2]) ** x[:, 2:3] / x[:, :1]) - t


def gulf_jacobian(x):
    t, y = _gulf_ty(x)
    x1, x2, x3 = x[:, :1], x[:, 1:2], x[:, 2:3]
    a = torch.abs(y - x2)
    p = a ** x3
    e = torch.exp(-p / x1)
    d2 = e * x3 * a ** (x3 - 1) * torch.sign(y - x2) / x1
    return torch.stack([e * p / x1 ** 2, d2, -e * p * torch.log(a) / x1], dim=2)


# ---- 12 Box three-dimensional (m = 10) ------------------------------------------------------------
def box3d(x):
    t = 0.1 * _index(10, x)
    return (torch.exp(-t * x[:, :1]) - torch.exp(-t * x[:, 1:2])
            - x[:, 2:3] * (torch.exp(-t) - torch.exp(-10 * t)))


def box3d_jacobian(x):
    t = 0.1 * _index(10, x)
    return torch.stack([-t * torch.exp(-t * x[:, :1]), t * torch.exp(-t * x[:, 1:2]),
                        -(torch.exp(-t) - torch.exp(-10 * t)).expand(x.shape[0], -1)], dim=2)


# ---- 13 Powell singular, 22 extended Powell singular (n a multiple of 4) -------------------------
def powell_singular(x):
    x1, x2, x3, x4 = x[:, 0::4], x[:, 1::4], x[:, 2::4], x[:, 3::4]
    r = [x1 + 10 * x2, math.sqrt(5) * (x3 - x4), (x2 - 2 * x3) ** 2, math.sqrt(10) * (x1 - x4) ** 2]
    return torch.stack(r, dim=2).reshape(x.shape[0], -1)


def powell_singular_jacobian(x):
    B, n = x.shape
    J = x.new_zeros(B, n, n)
    i = torch.arange(0, n, 4, device=x.device)
    x1, x2, x3, x4 = x[:, 0::4], x[:, 1::4], x[:, 2::4], x[:, 3::4]
    J[:, i, i], J[:, i, i + 1] = 1, 10
    J[:, i + 1, i + 2], J[:, i + 1, i + 3] = math.sqrt(5), -math.sqrt(5)
    J[:, i + 2, i + 1], J[:, i + 2, i + 2] = 2 * (x2 - 2 * x3), -4 * (x2 - 2 * x3)
    J[:, i + 3, i], J[:, i + 3, i + 3] = 2 * math.sqrt(10) * (x1 - x4), -2 * math.sqrt(10) * (x1 - x4)
    return J


# ---- 14 Wood --------------------------------------------------------------------------------------
def wood(x):
    x1, x2, x3, x4 = x.unbind(1)
    return torch.stack([10 * (x2 - x1 ** 2), 1 - x1, math.sqrt(90) * (x4 - x3 ** 2), 1 - x3,
                        math.sqrt(10) * (x2 + x4 - 2), (x2 - x4) / math.sqrt(10)], dim=1)


def wood_jacobian(x):
    J = x.new_zeros(x.shape[0], 6, 4)
    J[:, 0, 0], J[:, 0, 1] = -20 * x[:, 0], 10
    J[:, 1, 0] = -1
    J[:, 2, 2], J[:, 2, 3] = -2 * math.sqrt(90) * x[:, 2], math.sqrt(90)
    J[:, 3, 2] = -1
    J[:, 4, 1], J[:, 4, 3] = math.sqrt(10), math.sqrt(10)
    J[:, 5, 1], J[:, 5, 3] = 1 / math.sqrt(10), -1 / math.sqrt(10)
    return J


# ---- 15 Kowalik and Osborne -----------------------------------------------------------------------
_KOWALIK_Y = (0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235, 0.0246)
_KOWALIK_U = (4, 2, 1, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625)


def kowalik_osborne(x):
    u = _t(_KOWALIK_U, x)
    x1, x2, x3, x4 = x[:, :1], x[:, 1:2], x[:, 2:3], x[:, 3:4]
    return _t(_KOWALIK_Y, x) - x1 * (u ** 2 + u * x2) / (u ** 2 + u * x3 + x4)


def kowalik_osborne_jacobian(x):
    u = _t(_KOWALIK_U, x)
    x1, x2, x3, x4 = x[:, :1], x[:, 1:2], x[:, 2:3], x[:, 3:4]
    num, den = u ** 2 + u * x2, u ** 2 + u * x3 + x4
    return torch.stack([-num / den, -x1 * u / den, x1 * num * u / den ** 2,
                        x1 * num / den ** 2], dim=2)


# ---- 16 Brown and Dennis (m = 20) -----------------------------------------------------------------
def brown_dennis(x):
    t = _index(20, x) / 5
    a = x[:, :1] + t * x[:, 1:2] - torch.exp(t)
    b = x[:, 2:3] + x[:, 3:4] * torch.sin(t) - torch.cos(t)
    return a ** 2 + b ** 2


def brown_dennis_jacobian(x):
    t = _index(20, x) / 5
    a = x[:, :1] + t * x[:, 1:2] - torch.exp(t)
    b = x[:, 2:3] + x[:, 3:4] * torch.sin(t) - torch.cos(t)
    return torch.stack([2 * a, 2 * a * t, 2 * b, 2 * b * torch.sin(t)], dim=2)


# ---- 17 Osborne 1 ---------------------------------------------------------------------------------
_OSBORNE1_Y = (0.844, 0.908, 0.932, 0.936, 0.925, 0.908, 0.881, 0.850, 0.818, 0.784, 0.751, 0.718,
               0.685, 0.658, 0.628, 0.603, 0.580, 0.558, 0.538, 0.522, 0.506, 0.490, 0.478, 0.467,
               0.457, 0.448, 0.438, 0.431, 0.424, 0.420, 0.414, 0.411, 0.406)


def osborne1(x):
    t = 10 * _index(33, x, start=0)
    x1, x2, x3, x4, x5 = (x[:, k:k + 1] for k in range(5))
    return _t(_OSBORNE1_Y, x) - (x1 + x2 * torch.exp(-t * x4) + x3 * torch.exp(-t * x5))


def osborne1_jacobian(x):
    t = 10 * _index(33, x, start=0)
    _, x2, x3, x4, x5 = (x[:, k:k + 1] for k in range(5))
    e4, e5 = torch.exp(-t * x4), torch.exp(-t * x5)
    return torch.stack([-torch.ones_like(e4), -e4, -e5, t * x2 * e4, t * x3 * e5], dim=2)


# ---- 18 Biggs EXP6 (m = 13) -----------------------------------------------------------------------
def biggs_exp6(x):
    t = 0.1 * _index(13, x)
    y = torch.exp(-t) - 5 * torch.exp(-10 * t) + 3 * torch.exp(-4 * t)
    x1, x2, x3, x4, x5, x6 = (x[:, k:k + 1] for k in range(6))
    return x3 * torch.exp(-t * x1) - x4 * torch.exp(-t * x2) + x6 * torch.exp(-t * x5) - y


def biggs_exp6_jacobian(x):
    t = 0.1 * _index(13, x)
    x1, x2, x3, x4, x5, x6 = (x[:, k:k + 1] for k in range(6))
    e1, e2, e5 = torch.exp(-t * x1), torch.exp(-t * x2), torch.exp(-t * x5)
    return torch.stack([-t * x3 * e1, t * x4 * e2, e1, -e2, -t * x6 * e5, e5], dim=2)


# ---- 19 Osborne 2 ---------------------------------------------------------------------------------
_OSBORNE2_Y = (1.366, 1.191, 1.112, 1.013, 0.991, 0.885, 0.831, 0.847, 0.786, 0.725, 0.746, 0.679,
               0.608, 0.655, 0.616, 0.606, 0.602, 0.626, 0.651, 0.724, 0.649, 0.649, 0.694, 0.644,
               0.624, 0.661, 0.612, 0.558, 0.533, 0.495, 0.500, 0.423, 0.395, 0.375, 0.372, 0.391,
               0.396, 0.405, 0.428, 0.429, 0.523, 0.562, 0.607, 0.653, 0.672, 0.708, 0.633, 0.668,
               0.645, 0.632, 0.591, 0.559, 0.597, 0.625, 0.739, 0.710, 0.729, 0.720, 0.636, 0.581,
               0.428, 0.292, 0.162, 0.098, 0.054)


def osborne2(x):
    t = _index(65, x, start=0) / 10
    c = [x[:, k:k + 1] for k in range(11)]
    model = c[0] * torch.exp(-t * c[4])
    for a, s, mu in ((1, 5, 8), (2, 6, 9), (3, 7, 10)):
        model = model + c[a] * torch.exp(-(t - c[mu]) ** 2 * c[s])
    return _t(_OSBORNE2_Y, x) - model


def osborne2_jacobian(x):
    t = _index(65, x, start=0) / 10
    c = [x[:, k:k + 1] for k in range(11)]
    cols = [None] * 11
    e = torch.exp(-t * c[4])
    cols[0], cols[4] = -e, t * c[0] * e
    for a, s, mu in ((1, 5, 8), (2, 6, 9), (3, 7, 10)):
        d = t - c[mu]
        e = torch.exp(-d ** 2 * c[s])
        cols[a], cols[s], cols[mu] = -e, c[a] * d ** 2 * e, -2 * c[a] * c[s] * d * e
    return torch.stack(cols, dim=2)


# ---- 20 Watson (m = 31) ---------------------------------------------------------------------------
def _watson_powers(x):
    n = x.shape[1]
    t = _index(29, x) / 29
    return t[:, None] ** _index(n, x, start=0)  # (29, n): t^(j-1)


def watson(x):
    n = x.shape[1]
    p = _watson_powers(x)
    j = _index(n - 1, x)  # j - 1 for j = 2..n
    first = (x[:, 1:] * j) @ p[:, :n - 1].T
    second = x @ p.T
    head = first - second ** 2 - 1
    return torch.cat([head, x[:, :1], x[:, 1:2] - x[:, :1] ** 2 - 1], dim=1)


def watson_jacobian(x):
    B, n = x.shape
    p = _watson_powers(x)
    second = x @ p.T  # (B, 29)
    dfirst = torch.cat([torch.zeros_like(p[:, :1]), _index(n - 1, x) * p[:, :n - 1]], dim=1)
    head = dfirst - 2 * second[:, :, None] * p
    tail = x.new_zeros(B, 2, n)
    tail[:, 0, 0] = 1
    tail[:, 1, 0], tail[:, 1, 1] = -2 * x[:, 0], 1
    return torch.cat([head, tail], dim=1)
