"""The operator contract: one base class for narecon's linear operators, with ONE shape check.

A :class:`LinearOperator` maps arrays of shape ``(..., *ishape)`` to ``(..., *oshape)``;
leading axes (echoes, coils, segments) are a batch transformed together. Subclasses implement
``_forward``, ``_adjoint`` (and optionally ``_normal``) on inputs whose trailing shape has
already been checked here, so no operator re-checks shapes itself. :meth:`LinearOperator.sigpy`
gives a SigPy ``Linop`` view (for SigPy's solvers) of the unbatched operator.

Operators that follow the contract: :class:`recon.nufft.NUFFT`,
:class:`recon.b0.TimeSegmentedOperator`, the scaled echo operators of :mod:`recon.iterative`
and the Toeplitz normal operator :class:`recon.b0.toeplitz.ToeplitzNormal` (normal only).
Arrays may be numpy or CuPy: the operators use the array module of their input
(:func:`recon.device.get_array_module`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from recon.errors import InputError


def check_shape(a: Any, core: Sequence[int], what: str) -> tuple[int, ...]:
    """Leading (batch) shape of ``a`` whose trailing axes must equal ``core``; InputError otherwise."""
    core = tuple(int(c) for c in core)
    shp = tuple(getattr(a, "shape", ()))
    if len(shp) < len(core) or shp[len(shp) - len(core) :] != core:
        raise InputError(f"{what} must have shape (..., {', '.join(map(str, core))}), got {shp}")
    return shp[: len(shp) - len(core)]


class LinearOperator(ABC):
    """A linear map ``(..., *ishape) -> (..., *oshape)`` with forward, adjoint and normal.

    Subclasses set ``ishape`` and ``oshape`` (tuples of ints) and implement ``_forward(x, lead)``
    and ``_adjoint(y, lead)``, where ``lead`` is the batch shape already checked.
    """

    ishape: tuple[int, ...]
    oshape: tuple[int, ...]
    iname: str = "image"  # names of the input and output arrays in shape errors
    oname: str = "data"

    @abstractmethod
    def _forward(self, x, lead: tuple[int, ...]): ...

    @abstractmethod
    def _adjoint(self, y, lead: tuple[int, ...]): ...

    def _normal(self, x, lead: tuple[int, ...]):
        return self._adjoint(self._forward(x, lead), lead)

    def forward(self, x):
        """A x for x of shape (..., *ishape) -> (..., *oshape)."""
        return self._forward(x, check_shape(x, self.ishape, self.iname))

    def adjoint(self, y):
        """A^H y for y of shape (..., *oshape) -> (..., *ishape)."""
        return self._adjoint(y, check_shape(y, self.oshape, self.oname))

    def normal(self, x):
        """A^H A x for x of shape (..., *ishape)."""
        return self._normal(x, check_shape(x, self.ishape, self.iname))

    def sigpy(self, name: str | None = None):
        """A SigPy ``Linop`` view of this operator (unbatched: ishape -> oshape; SigPy checks shapes)."""
        return sigpy_linop(self.forward, self.adjoint, self.ishape, self.oshape, name or type(self).__name__)


def sigpy_linop(forward, adjoint, ishape: Sequence[int], oshape: Sequence[int], name: str = "narecon"):
    """A SigPy ``Linop`` from a forward and an adjoint function (used by :meth:`LinearOperator.sigpy`)."""
    try:
        import sigpy as sp
    except ImportError as e:  # pragma: no cover - iterative extra
        from recon.errors import BackendUnavailableError

        raise BackendUnavailableError("iterative reconstruction needs SigPy: pip install 'narecon[iterative]'") from e

    class OperatorLinop(sp.linop.Linop):
        def __init__(self, fwd, adj, ish, osh, repr_name):
            self._fwd, self._adj = fwd, adj
            super().__init__(tuple(osh), tuple(ish), repr_str=repr_name)

        def _apply(self, input):
            return self._fwd(input)

        def _adjoint_linop(self):
            return OperatorLinop(self._adj, self._fwd, self.oshape, self.ishape, self.repr_str + "^H")

    return OperatorLinop(forward, adjoint, ishape, oshape, name)


__all__ = ["LinearOperator", "check_shape", "sigpy_linop"]
