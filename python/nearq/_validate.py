"""Input normalisation shared by the Python surface: dtype, shape and scalar checks that turn
bad arguments into :class:`~nearq.errors.InvalidInputError` before they reach the native code."""

from __future__ import annotations

import operator
from typing import Any, List, Optional

import numpy as np

from .errors import InvalidInputError


_F32 = np.dtype(np.float32)


def as_matrix(x: Any, name: str, *, allow_1d: bool) -> np.ndarray:
    """Returns `x` as a C-contiguous float32 matrix, converting at most once."""
    # Fast path for what a search loop passes (one float32 query or a float32 batch): the
    # checks below cost microseconds, a noticeable share of a single-query search.
    if type(x) is np.ndarray and x.dtype is _F32 and x.flags.c_contiguous and x.size:
        if x.ndim == 2:
            return x
        if x.ndim == 1 and allow_1d:
            return x.reshape(1, -1)
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise InvalidInputError(f"{name} cannot be read as an array: {e}") from None
    if a.dtype.kind != "f":
        raise InvalidInputError(
            f"{name} must hold floating-point values (float16/32/64), got dtype {a.dtype}"
        )
    if a.ndim == 1 and allow_1d:
        a = a.reshape(1, -1)
    if a.ndim != 2:
        shape = "(dim,) or (n, dim)" if allow_1d else "(n, dim)"
        raise InvalidInputError(f"{name} must have shape {shape}, got an array of shape {a.shape}")
    if a.shape[0] == 0:
        raise InvalidInputError(f"{name} is empty (0 rows)")
    if a.shape[1] == 0:
        raise InvalidInputError(f"{name} is empty (0 columns)")
    if a.dtype == np.float32 and a.flags.c_contiguous:
        return a
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(a, dtype=np.float32)


def as_int(name: str, v: Any, *, lo: int, hi: int = 2**63 - 1, optional: bool = False) -> Optional[int]:
    """Checks that `v` is an integer in [lo, hi] (None allowed when `optional`)."""
    if type(v) is int and lo <= v <= hi:  # fast path (bool is not `int` by type)
        return v
    if v is None and optional:
        return None
    if isinstance(v, (bool, np.bool_)):
        raise InvalidInputError(f"{name} must be an integer, got {v!r}")
    try:
        i = operator.index(v)
    except TypeError:
        raise InvalidInputError(f"{name} must be an integer, got {type(v).__name__} {v!r}") from None
    if i < lo or i > hi:
        bound = f">= {lo}" if hi == 2**63 - 1 else f"in [{lo}, {hi}]"
        raise InvalidInputError(f"{name} must be {bound}, got {i}")
    return i


def as_bits(v: Any) -> Optional[List[int]]:
    """Bits per dimension: None, an integer, a tuple/list of one or two integers (two-level
    encodings such as LVQ-4x8: ``(4, 8)``), or the string ``"4x8"``; returned as a list."""
    if v is None:
        return None
    if isinstance(v, str):
        parts = v.lower().split("x")
        try:
            v = [int(p) for p in parts]
        except ValueError:
            raise InvalidInputError(
                f"bits must be an integer, a pair such as (4, 8), or a string such as \"4x8\"; got {v!r}"
            ) from None
    elif isinstance(v, (list, tuple)):
        v = list(v)
    else:
        return [as_int("bits", v, lo=1, hi=64)]  # type: ignore[list-item]
    if not 1 <= len(v) <= 2:
        raise InvalidInputError(f"bits takes one or two values (one per level), got {len(v)}: {v!r}")
    return [as_int("bits", b, lo=1, hi=64) for b in v]  # type: ignore[misc]


def as_float(name: str, v: Any) -> float:
    if isinstance(v, (bool, np.bool_)):
        raise InvalidInputError(f"{name} must be a number, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a number, got {v!r}") from None
    if not np.isfinite(f):
        raise InvalidInputError(f"{name} must be finite, got {f}")
    return f


def as_str(name: str, v: Any) -> str:
    if not isinstance(v, str):
        raise InvalidInputError(f"{name} must be a string, got {type(v).__name__} {v!r}")
    return v


def as_ids(name: str, v: Any, *, n: Optional[int] = None) -> np.ndarray:
    """Returns `v` as a 1-D C-contiguous int64 array of ids (`n` of them when given)."""
    if isinstance(v, (set, frozenset)):
        v = sorted(v)
    try:
        a = np.asarray(v)
    except Exception as e:
        raise InvalidInputError(f"{name} cannot be read as an array: {e}") from None
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise InvalidInputError(f"{name} must be one-dimensional, got shape {a.shape}")
    if a.size == 0:
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise InvalidInputError(f"{name} must hold integers, got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.size and int(a.max()) > 2**63 - 1:
        raise InvalidInputError(f"{name}: ids must fit in int64")
    if n is not None and a.shape[0] != n:
        raise InvalidInputError(f"{name}: got {a.shape[0]} ids for {n} vectors")
    return np.ascontiguousarray(a, dtype=np.int64)


def as_filter(v: Any) -> "tuple[Optional[np.ndarray], Optional[np.ndarray]]":
    """A search filter as (allowed ids, mask): an array-like of integer ids, or a boolean mask
    indexed by id (``mask[id]`` True means allowed)."""
    if v is None:
        return None, None
    if isinstance(v, (set, frozenset)):
        return as_ids("filter", v), None
    try:
        a = np.asarray(v)
    except Exception as e:
        raise InvalidInputError(f"filter cannot be read as an array: {e}") from None
    if a.dtype == np.bool_:
        if a.ndim != 1:
            raise InvalidInputError(f"a filter mask must be one-dimensional, got shape {a.shape}")
        return None, np.ascontiguousarray(a)
    if a.size == 0:
        return np.zeros(0, dtype=np.int64), None
    if a.dtype.kind not in "iu":
        raise InvalidInputError(
            f"filter must be integer ids or a boolean mask, got dtype {a.dtype}"
        )
    return as_ids("filter", a), None
