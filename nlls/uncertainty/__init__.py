"""Uncertainty of a solution: covariance blocks (:class:`Covariance`), the null directions of
``J^T J`` they rest on (:mod:`nlls.uncertainty.nullspace`), and what the structure of an objective
tells about them (:mod:`nlls.uncertainty.structure`)."""
from .covariance import DENSE_MAX_DOF, Covariance

__all__ = ["Covariance", "DENSE_MAX_DOF"]
