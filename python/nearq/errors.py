"""Exception classes raised by nearq.

Every error derives from :class:`NearqError` and from the builtin a caller would expect:
bad input is a :class:`ValueError`, a file that cannot be read or written is an
:class:`OSError`.
"""

from __future__ import annotations

__all__ = [
    "NearqError",
    "InvalidInputError",
    "DimensionMismatchError",
    "IndexFormatError",
    "NearqIOError",
]


class NearqError(Exception):
    """Base class of every nearq error."""


class InvalidInputError(NearqError, ValueError):
    """An argument is invalid: wrong shape or dtype, NaN/inf, empty, or a bad parameter."""


class DimensionMismatchError(InvalidInputError):
    """Vectors or queries have a different dimension from the index."""


class IndexFormatError(NearqError, ValueError):
    """An index file is corrupt, truncated, not a nearq index, or from a newer version."""


class NearqIOError(NearqError, OSError):
    """An index file could not be read or written."""
