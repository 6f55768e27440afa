"""Problem files: pose graphs (g2o, TORO) and bundle adjustment (BAL) in, optimized graphs out.

Each reader returns a problem object whose ``.objective()`` builds the :class:`~nlls.Objective`
(no prior added; the gauge freedom is the solver's to handle)::

    problem = nlls.io.read("w100.graph")            # the format is detected from the records
    objective = problem.objective()
    nlls.LevenbergMarquardt(objective, linear_solver="sparse_cholesky").optimize()
    problem.write_g2o("w100-optimized.g2o", objective)

A malformed file raises :class:`FormatError` (a ``ValueError``) whose message starts with
``<file>:<line>:``. :func:`bundled_dataset` is a small real pose graph shipped with the package.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional, Union

from . import bal as _bal
from . import g2o as _g2o
from . import toro as _toro
from ._text import FormatError, MissingFileError, PathLike, Source
from .bal import BALProblem, BALReprojection, read_bal
from .g2o import read_g2o
from .pose_graph import PoseGraph, PoseGraphEdges
from .toro import read_toro

__all__ = ["FormatError", "MissingFileError", "PoseGraph", "PoseGraphEdges", "BALProblem",
           "BALReprojection", "read", "read_g2o", "read_toro", "read_bal", "bundled_dataset"]


def read(path: PathLike, *, initialization: Optional[str] = None,
         information_order: Optional[str] = None) -> Union[PoseGraph, BALProblem]:
    """Read a g2o or TORO pose graph or a BAL problem, the format told by the first record.

    A first record tagged ``VERTEX_SE2``, ``EDGE_SE2``, ``VERTEX_SE3:QUAT``, ``EDGE_SE3:QUAT`` or
    ``FIX`` means g2o; ``VERTEX2``, ``EDGE2``, ``VERTEX3``, ``EDGE3`` or ``EQUIV`` means TORO;
    three integers (the header ``num_cameras num_points num_observations``) mean BAL.

    Args:
        path: the file.
        initialization, information_order: the pose-graph readers' options (see
            :func:`read_g2o`); ``None`` leaves their defaults. A BAL file refuses them.

    Returns:
        A :class:`PoseGraph` or a :class:`BALProblem`.

    Raises:
        FormatError: naming file and line, when no format matches or the file is malformed.
        ValueError: an unknown option value, or a pose-graph option given for a BAL file.
    """
    source = Source(path)
    source.require_records("a g2o, TORO or BAL file")
    options = {key: value for key, value in (("initialization", initialization),
                                             ("information_order", information_order))
               if value is not None}
    line, words = source.record(0)
    tag = words[0]
    if tag in _g2o.TAGS:
        return _g2o.read_source(source, **options)
    if tag in _toro.TAGS + _toro.IGNORED:
        return _toro.read_source(source, **options)
    if len(words) == 3 and all(word.isdigit() for word in words):
        if options:
            raise ValueError(f"read: {', '.join(options)} applies to pose graphs; {source.path} "
                             "is a BAL problem")
        return _bal.read_source(source)
    raise source.error(line, f"unknown format: the first record is {' '.join(words[:4])!r}; "
                       f"expected g2o ({', '.join(_g2o.TAGS)}), TORO "
                       f"({', '.join(_toro.TAGS + _toro.IGNORED)}) or a BAL header "
                       "(three integers)")


def bundled_dataset() -> Path:
    """The path of ``w100.graph``, a 2-D TORO pose graph (100 poses, 300 edges) from GTSAM's
    examples (BSD licence, ``LICENSE-gtsam.txt`` beside it), installed with the package."""
    return Path(str(resources.files(__package__).joinpath("data").joinpath("w100.graph")))
