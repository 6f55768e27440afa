"""Checks of :meth:`nlls.Objective.add` done in one pass over many variables (a group of
thousands): the fast answer only; the objective names a culprit the slow way."""
from __future__ import annotations

from typing import Mapping

import torch

from .variable import Variable


def data_fits(new_optim: Mapping[str, Variable], new_aux: Mapping[str, Variable],
              dtype: torch.dtype, device: torch.device) -> bool:
    """Whether every optim variable has ``dtype`` and ``device``, and every aux one ``device``
    and, when floating-point or complex, ``dtype`` (a weight given as a number aside: it takes
    the objective's dtype and device)."""
    optim = {(t.dtype, t.device) for t in [var.tensor for var in new_optim.values()]}
    aux = {(t.dtype, t.device) for t in [var.tensor for var in new_aux.values()
                                          if not (var.follows_objective
                                                  and var.tensor.is_floating_point())]}
    return optim <= {(dtype, device)} and all(
        t_device == device and (t_dtype == dtype or not (t_dtype.is_floating_point
                                                          or t_dtype.is_complex))
        for t_dtype, t_device in aux)
