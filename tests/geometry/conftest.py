"""The groups every invariant test runs on, and the finite-difference checks they share.

Adding a group to ``GROUPS`` runs the whole suite (round trips, axioms, Jacobians) on it.
"""
import math

import pytest
import torch

from nlls.geometry import SE2, SE3, SO2, SO3
from nlls.geometry.lie_group import LieGroup

GROUPS = [SO2, SE2, SO3, SE3]


def pytest_generate_tests(metafunc):
    # plain parametrization (not a fixture), so hypothesis' @given tests can take it too
    if "group" in metafunc.fixturenames:
        metafunc.parametrize("group", GROUPS, ids=[g.__name__ for g in GROUPS])


def rotation_part(group, tangent):
    """The rotation coordinates of a tangent (the last 1 or 3)."""
    return tangent[:, -(1 if group in (SO2, SE2) else 3):]


def tangents(group, batch, generator, dtype=torch.float64, special=True):
    """``(batch, dof)`` tangents: random ones plus angles within 1e-6 of 0 and of pi (and 0, pi)."""
    dof = group.DOF
    out = torch.randn(batch, dof, generator=generator, dtype=dtype)
    rot = 1 if group in (SO2, SE2) else 3
    axis = torch.randn(batch, rot, generator=generator, dtype=dtype)
    axis = axis / axis.norm(dim=1, keepdim=True)
    angle = math.pi * torch.rand(batch, 1, generator=generator, dtype=dtype)
    if special:
        edge = torch.tensor([0.0, 1e-9, 1e-6, 3e-4, 0.05, math.pi - 1e-6, math.pi - 1e-3, math.pi],
                            dtype=dtype)
        angle[: len(edge), 0] = edge[: batch]
    out[:, dof - rot:] = angle * axis
    return out


def _perturb(value, h, index):
    if isinstance(value, LieGroup):
        delta = torch.zeros(value.shape[0], value.DOF, dtype=value.dtype)
        delta[:, index] = h
        return value.from_tensor(type(value).compose_tensor(
            value.tensor, type(value).exp_tensor(delta)))
    out = value.clone()
    out[:, index] += h
    return out


def _difference(reference, plus, minus):
    if isinstance(reference, LieGroup):
        return reference.local(plus) - reference.local(minus)
    return plus - minus


def numeric_jacobians(function, inputs, h=1e-6):
    """Central differences of ``function(*inputs)`` on the tangent of every input.

    Group inputs are perturbed on the right (``x ∘ exp(h e_i)``), tensors additively; a group
    output is compared with ``local``. Returns ``(B, out, dof)`` per input.
    """
    reference = function(*inputs)
    out = []
    for k, value in enumerate(inputs):
        dof = value.DOF if isinstance(value, LieGroup) else value.shape[1]
        columns = []
        for i in range(dof):
            plus = list(inputs)
            minus = list(inputs)
            plus[k] = _perturb(value, h, i)
            minus[k] = _perturb(value, -h, i)
            columns.append(_difference(reference, function(*plus), function(*minus)) / (2 * h))
        out.append(torch.stack(columns, dim=-1))
    return out


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)
