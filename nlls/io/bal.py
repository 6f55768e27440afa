"""Bundle adjustment in BAL format ("Bundle Adjustment in the Large", Agarwal et al. 2010).

A file holds, separated by whitespace::

    num_cameras num_points num_observations
    camera point u v                         (num_observations lines)
    w1 w2 w3 t1 t2 t3 f k1 k2                (9 numbers per camera, usually one per line)
    X Y Z                                    (3 numbers per point)

A camera maps a world point ``X`` to the image by

    P = R(w) X + t,     p = -P[:2] / P[2],     prediction = f (1 + k1 |p|^2 + k2 |p|^4) p,

with ``R(w)`` the rotation by the Rodrigues vector ``w`` (axis times angle); the residual is
``prediction - (u, v)`` in pixels (sigma 1). Each camera is one 9-dof
:class:`~nlls.Vector` ``c{i}`` (so ``w`` is moved additively, as in Ceres' BAL example), each point
a :class:`~nlls.Point3` ``p{j}``, the observations one :class:`~nlls.FactorGroup` ``obs`` of
:class:`BALReprojection` factors (or one ``obs{k}`` each, ``objective(vectorized=False)``).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..core.blocks import VariableBlock
from ..core.cost_function import CostFunction
from ..core.factor_group import FactorGroup
from ..core.manifold import Point3, Vector, broadcast_batch
from ..core.objective import Objective
from ..core.variable import Variable
from ..geometry.so3 import SO3
from ._numbers import parse_numbers
from ._text import PathLike, Records, Source, assemble, no_gc_pauses
from .files import write_text_atomic


def rodrigues(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The rotation of Rodrigues vectors ``w`` ``(N, 3)`` and the left Jacobian of that map, both
    ``(N, 3, 3)``: ``R(w + d) ~ exp(Jl d) R(w)``, ``Jl(w) = Jr(-w)`` (:class:`~nlls.SO3`'s
    exponential and right Jacobian, smooth at ``w = 0``)."""
    return SO3.exp_tensor(w), SO3.jr_tensor(-w)


class BALReprojection(CostFunction):
    """The reprojection residual of one BAL observation, ``(B, 2)`` pixels.

    Jacobians (with ``J_P`` the derivative of the prediction by ``P = R X + t``):

    * camera ``(w, t, f, k1, k2)``: ``-J_P R [X]_x Jr(w)``, ``J_P``, ``d p``, ``f |p|^2 p``,
      ``f |p|^4 p`` (``d = 1 + k1 |p|^2 + k2 |p|^4``; ``R`` and ``Jr`` from :class:`~nlls.SO3`);
    * point: ``J_P R``;

    where ``J_P = f (d I + 2 (k1 + 2 k2 |p|^2) p p^T) (-1/P_z) [I | p]``.

    Args:
        camera: a 9-dof :class:`~nlls.Vector` ``(B, 9)``: ``w (3), t (3), f, k1, k2``.
        point: a :class:`~nlls.Point3` ``(B, 3)``.
        measurement: a :class:`~nlls.Variable` ``(B, 2)``: the observed ``(u, v)``.
        name: unique name inside an objective.

    Raises:
        TypeError, ValueError: a variable of the wrong kind or shape; the message names it.
    """

    def __init__(self, camera: Vector, point: Vector, measurement: Variable,
                 name: Optional[str] = None):
        super().__init__(optim_vars=(camera, point), aux_vars=(measurement,), name=name)
        for var, dof, role in ((camera, 9, "camera"), (point, 3, "point")):
            if not isinstance(var, Vector) or var.event_shape != (dof,):
                raise TypeError(f"BALReprojection {self.name!r}: {role} must be a Vector of shape "
                                f"(B, {dof}), got {var!r}")
        if measurement.event_shape != (2,):
            raise ValueError(f"BALReprojection {self.name!r}: measurement {measurement.name!r} "
                             f"must have shape (B, 2), got {tuple(measurement.shape)}")
        self.camera = camera
        self.point = point
        self.measurement = measurement

    def dim(self) -> int:
        return 2

    def _project(self, with_jacobians: bool):
        camera, point = broadcast_batch(self.camera.tensor, self.point.tensor, self.name)
        uv, camera = broadcast_batch(self.measurement.tensor, camera, self.name)
        uv, point = broadcast_batch(uv, point, self.name)
        jacobians: Optional[List[torch.Tensor]] = [] if with_jacobians else None  # Jr(w), d(R X)/dR, d(R X)/dX = R
        rotated = SO3.exp_map(camera[:, :3], jacobians).rotate(point, jacobians)
        in_camera = rotated + camera[:, 3:6]
        p = -in_camera[:, :2] / in_camera[:, 2:]
        r2 = (p * p).sum(dim=1, keepdim=True)
        f, k1, k2 = camera[:, 6:7], camera[:, 7:8], camera[:, 8:9]
        distortion = 1.0 + r2 * (k1 + k2 * r2)
        error = f * distortion * p - uv
        return error, (camera, jacobians, in_camera, p, r2, distortion)

    def error(self) -> torch.Tensor:
        return self._project(False)[0]

    def jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        error, parts = self._project(True)
        camera, (jr, d_rotated_d_rotation, rotation), in_camera, p, r2, distortion = parts
        f, k1, k2 = camera[:, 6:7], camera[:, 7:8], camera[:, 8:9]
        eye2 = torch.eye(2, dtype=p.dtype, device=p.device)
        d_prediction_d_p = f[:, :, None] * (distortion[:, :, None] * eye2 + 2.0 * (
            k1 + 2.0 * k2 * r2)[:, :, None] * p[:, :, None] * p[:, None, :])
        d_p_d_camera_point = torch.cat([eye2.expand(p.shape[0], 2, 2), p[:, :, None]], dim=2)
        d_p_d_camera_point = d_p_d_camera_point * (-1.0 / in_camera[:, 2:, None])
        j_point_in_camera = d_prediction_d_p @ d_p_d_camera_point  # (N, 2, 3)
        j_rotation = j_point_in_camera @ d_rotated_d_rotation @ jr
        j_camera = torch.cat([
            j_rotation, j_point_in_camera, (distortion * p)[:, :, None],
            (f * r2 * p)[:, :, None], (f * r2 * r2 * p)[:, :, None],
        ], dim=2)
        return [j_camera, j_point_in_camera @ rotation], error


class BALProblem:
    """A bundle adjustment problem; made by :func:`~nlls.io.read_bal`.

    Attributes:
        cameras: ``(C, 9)`` float64: ``w (Rodrigues), t, f, k1, k2`` per camera.
        points: ``(P, 3)`` float64.
        observations: ``(O, 2)`` int64 ``(camera, point)`` indices.
        measurements: ``(O, 2)`` float64 observed ``(u, v)``.
        path: the file read.
    """

    def __init__(self, cameras: torch.Tensor, points: torch.Tensor, observations: np.ndarray,
                 measurements: torch.Tensor, path: Optional[PathLike] = None):
        self.cameras = cameras
        self.points = points
        self.observations = observations
        self.measurements = measurements
        self.path = None if path is None else Path(path)

    def objective(self, dtype: torch.dtype = torch.float64,
                  device: Optional[torch.device] = None, vectorized: bool = True) -> Objective:
        """The objective: ``c{i}`` cameras, ``p{j}`` points and the observations' residuals;
        unobserved cameras and points are left out.

        By default the cameras and points are the :class:`~nlls.VariableBlock` s ``cameras``
        ``(1, C, 9)`` and ``points`` ``(1, P, 3)`` (members ``c{i}``, ``p{j}``) and the observations
        one :class:`~nlls.FactorGroup` ``obs`` of :class:`BALReprojection` factors, their
        ``(u, v)`` the aux variable ``uv`` ``(1, K, 2)`` (observation ``k`` at row ``k``). With
        ``vectorized=False`` each observation is its own ``obs{k}`` with ``(u, v)`` in ``uv{k}``
        (one object each; slower to build).

        Args:
            dtype, device: of every tensor.
            vectorized: one group for the observations (default) or one cost function each.
        """
        cameras = self.cameras.to(dtype=dtype, device=device, copy=True)
        points = self.points.to(dtype=dtype, device=device, copy=True)
        uv = self.measurements.to(dtype=dtype, device=device, copy=True)
        with no_gc_pauses():
            if vectorized:
                return self._grouped(cameras, points, uv, dtype)
            camera_vars = [Vector(9, cameras[i:i + 1], name=f"c{i}")
                           for i in range(cameras.shape[0])]
            point_vars = [Point3(tensor=points[j:j + 1], name=f"p{j}")
                          for j in range(points.shape[0])]
            cost_functions = [
                BALReprojection(camera_vars[i], point_vars[j],
                                Variable(uv[k:k + 1], name=f"uv{k}"), name=f"obs{k}")
                for k, (i, j) in enumerate(self.observations.tolist())
            ]
            return assemble(cost_functions, dtype)

    def _grouped(self, cameras: torch.Tensor, points: torch.Tensor, uv: torch.Tensor, dtype) -> Objective:
        objective = Objective(dtype=dtype)
        if not len(self.observations):
            return objective
        sources = []
        kinds = ((Vector, cameras, "c", "cameras"), (Point3, points, "p", "points"))
        for column, (cls, values, prefix, name) in enumerate(kinds):
            index = np.asarray(self.observations[:, column], dtype=np.int64)
            used = np.zeros(values.shape[0], dtype=bool)
            used[index] = True
            kept = np.flatnonzero(used)  # observed ones only, in file order
            if not used.all():
                values = values[torch.from_numpy(kept).to(values.device)]
            block = VariableBlock(cls, values[None], name, [f"{prefix}{k}" for k in kept.tolist()])
            sources.append((block, torch.from_numpy(np.cumsum(used)[index] - 1)))
        camera, point = sources[0][0][0], sources[1][0][0]
        template = BALReprojection(camera.with_tensor(camera.tensor), point.with_tensor(point.tensor),
                                   Variable(uv[:1], name="uv_template"), name="obs_template")
        return objective.add(FactorGroup(template, sources, [Variable(uv[None], name="uv")], name="obs"))

    def current_values(self, objective: Optional[Objective] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The cameras and points ``objective`` holds (``c{i}``, ``p{j}``), this problem's own for
        those it lacks (unobserved points; or all of them when ``objective`` is ``None``).

        Returns:
            ``(cameras (C, 9), points (P, 3))``, float64 on the CPU.

        Raises:
            ValueError: a variable ``c{i}`` or ``p{j}`` of another size or with a batch size other
                than 1 (select one batch element before writing); the message names it.
        """
        cameras, points = self.cameras.clone(), self.points.clone()
        if objective is None:
            return cameras, points
        for prefix, out, dof in (("c", cameras, 9), ("p", points, 3)):
            for k in range(out.shape[0]):
                var = objective.optim_vars.get(f"{prefix}{k}")
                if var is None:
                    continue
                if var.batch_size != 1 or tuple(var.tensor.shape[1:]) != (dof,):
                    raise ValueError(f"BALProblem: variable '{prefix}{k}' must have shape (1, {dof}) "
                                     f"(select one batch element before writing), got {var!r}")
                out[k] = var.tensor[0].detach().to(device="cpu", dtype=torch.float64)
        return cameras, points

    def write_bal(self, path: PathLike, objective: Optional[Objective] = None) -> None:
        """Save the problem in BAL format with the cameras and points ``objective`` holds.

        The layout is the one of the BAL files (and of :func:`read_bal`): the header, one
        ``camera point u v`` line per observation (as read), then the 9 camera and the 3 point
        parameters one per line. Numbers have 17 significant digits, so reading the file back
        gives the same problem exactly.

        Args:
            path: the file to write (replaced if it exists; written whole or not at all: a
                failure midway leaves an existing file as it was).
            objective: typically ``self.objective()`` after ``optimize()``; ``None`` writes this
                problem's own values.

        Raises:
            ValueError: see :meth:`current_values`.
            OSError: naming ``path``, when it cannot be written.
        """
        cameras, points = self.current_values(objective)
        pairs = np.asarray(self.observations).reshape(-1, 2).tolist()
        uv = self.measurements.detach().to(device="cpu", dtype=torch.float64).numpy()
        lines = [f"{cameras.shape[0]} {points.shape[0]} {len(pairs)}"]
        lines += [f"{i} {j} {u:.16e} {v:.16e}" for (i, j), (u, v) in zip(pairs, uv.tolist())]
        lines += [f"{value:.16e}" for value in torch.cat([cameras.flatten(), points.flatten()]).tolist()]
        write_text_atomic(path, "\n".join(lines) + "\n")

    def __repr__(self) -> str:
        source = f", path={str(self.path)!r}" if self.path is not None else ""
        return (f"BALProblem(cameras={self.cameras.shape[0]}, points={self.points.shape[0]}, "
                f"observations={self.observations.shape[0]}{source})")


def read_bal(path: PathLike) -> BALProblem:
    """Read a bundle adjustment problem in BAL format.

    Args:
        path: the file.

    Returns:
        The :class:`BALProblem`; ``.objective()`` builds the problem.

    Raises:
        FormatError: (a ``ValueError``) naming file and line: a bad header, an observation line
            with the wrong number of fields or an out-of-range index, a non-number, too few or
            too many parameters, an empty file; ``MissingFileError`` for a missing file.
    """
    return read_source(Source(path))


def read_source(source: Source) -> BALProblem:
    """:func:`read_bal` of a file already split into records."""
    source.require_records("a BAL header 'num_cameras num_points num_observations'")
    header_line, header = source.record(0)
    try:
        counts = [int(word) for word in header]
    except ValueError:
        counts = []
    if len(counts) != 3 or min(counts) < 1:
        raise source.error(header_line, "BAL header must be three positive integers "
                           f"'num_cameras num_points num_observations', got {' '.join(header)!r}")
    num_cameras, num_points, num_observations = counts
    if source.num_records - 1 < num_observations:
        raise source.error(source.num_lines, f"the header announces {num_observations} "
                           f"observations, the file has {source.num_records - 1} lines after it")
    observations = Records(source, "observation", np.arange(1, 1 + num_observations), skip=0)
    cams_pts, uv = observations.table(("camera", "point", "u", "v"), ints=2)
    for column, count, what in ((0, num_cameras, "camera"), (1, num_points, "point")):
        bad = (cams_pts[:, column] < 0) | (cams_pts[:, column] >= count)
        if bad.any():
            k = int(np.argmax(bad))
            raise source.error(int(observations.lines[k]), f"observation of {what} "
                               f"{cams_pts[k, column]}, but the header declares num_{what}s = "
                               f"{count} (indices 0 to {count - 1})")
    parameters = _parameters(source, 1 + num_observations, 9 * num_cameras + 3 * num_points)
    return BALProblem(torch.from_numpy(parameters[:9 * num_cameras].reshape(num_cameras, 9)),
                      torch.from_numpy(parameters[9 * num_cameras:].reshape(num_points, 3)),
                      cams_pts, torch.from_numpy(uv), path=source.path)


def _parameters(source: Source, first_record: int, expected: int) -> np.ndarray:
    """The camera and point numbers (any layout) of the records from ``first_record`` on,
    exactly ``expected`` of them."""
    first = (int(source.record_first[first_record]) if first_record < source.num_records
             else source.starts.size)
    found = source.starts.size - first
    if found != expected:
        if found < expected:
            raise source.error(source.num_lines, f"the header announces {expected} camera and "
                               f"point parameters (9 per camera, 3 per point), the file has "
                               f"{found}")
        extra = np.searchsorted(source.record_first, first + expected, side="right") - 1
        raise source.error(int(source.record_line[extra]), f"more numbers than the {expected} "
                           "camera and point parameters the header announces")
    values, ok = parse_numbers(source.buffer, source.starts[first:], source.ends[first:])
    for k in np.flatnonzero(~ok).tolist():  # unusual forms, as float() reads them
        try:
            values[k] = float(source.word(first + k))
        except ValueError:
            values[k] = np.nan
    bad = ~np.isfinite(values)
    if bad.any():
        k = int(np.argmax(bad))
        record = np.searchsorted(source.record_first, first + k, side="right") - 1
        raise source.error(int(source.record_line[record]), f"camera/point parameter "
                           f"{source.word(first + k)!r} is not a finite number")
    return values
