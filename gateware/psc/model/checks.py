"""Argument checks shared by every public boundary: the golden model, the packer, the
configurations, the host scheduler and API, the serial driver and the command line.

Each check names the argument, shows the offending value and says what is
allowed, in one line. A value of the wrong kind raises :class:`BadTypeError`
(both a ``TypeError`` and a ``ValueError``, so one ``except ValueError``
catches every bad argument); a value of the right kind out of its range
raises ``ValueError``. Callers that need their own exception type (the
host's ``LayerError``) convert it.

Nothing is cast silently: a bool is not an integer, a float that happens to
be whole is not an integer, a string is not a bool, and an array must have
an integer dtype (not bool, float or object) whose values fit int64.
"""

import math

import numpy as np

__all__ = ["BadTypeError", "show", "signed_range", "check_int", "check_bool", "check_choice",
           "check_real", "check_width", "int_array", "check_signed", "check_dims",
           "per_channel"]


class BadTypeError(TypeError, ValueError):
    """An argument of the wrong type; a ``ValueError`` too, so that callers can catch every
    bad argument with one clause."""


def show(value, limit=60):
    """``value`` for an error message: one line, at most about ``limit`` characters (an array
    is described by its shape and dtype, not printed)."""
    if isinstance(value, np.ndarray) and value.ndim:
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def signed_range(width):
    """``(lo, hi)`` of a signed ``width``-bit integer."""
    return -(1 << (width - 1)), (1 << (width - 1)) - 1


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _allowed(lo, hi):
    if hi is None:
        return f">= {lo}"
    return f"in [{lo}, {hi}]"


def check_int(name, value, lo, hi=None):
    """``value`` as an int, checking it is an integer (not a bool, not a float) in
    ``[lo, hi]`` (``>= lo`` when ``hi`` is None)."""
    if not _is_int(value):
        raise BadTypeError(f"{name} must be an integer {_allowed(lo, hi)}, not {show(value)}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be an integer {_allowed(lo, hi)}, not {show(value)}")
    return int(value)


def check_bool(name, value):
    """``value`` as a bool, checking it is one (``True``/``False`` or a numpy bool; a string,
    an integer or None is refused rather than read for its truth)."""
    if not isinstance(value, (bool, np.bool_)):
        raise BadTypeError(f"{name} must be True or False, not {show(value)}")
    return bool(value)


def check_choice(name, value, choices):
    """``value``, checking it is one of ``choices``."""
    if not isinstance(value, (str, int)) or isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, "
                         f"not {show(value)}")
    return value


def check_real(name, value, lo, hi):
    """``value`` as a float, checking it is a finite real number (not a bool or a string)
    in ``[lo, hi]``."""
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(
            value, (bool, np.bool_)):
        raise BadTypeError(f"{name} must be a number in [{lo}, {hi}], not {show(value)}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{name} must be a number in [{lo}, {hi}], not {show(value)}")
    return float(value)


def check_width(name, width, *, maximum=62):
    """A bit width in ``[2, maximum]``."""
    return check_int(name, width, 2, maximum)


_INT64_MAX = (1 << 63) - 1


def int_array(name, value):
    """``value`` as an int64 array, checking its dtype is an integer one (a Python int or a
    nested list of them is accepted; bool, float, complex, str and object arrays are not)
    and, for an unsigned dtype, that every value fits int64 (no wrap-around)."""
    if isinstance(value, (bool, np.bool_)):
        raise BadTypeError(f"{name} must hold integers, not the bool {value!r}")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as e:
        # ragged nesting, or a Python int beyond every numpy dtype
        raise BadTypeError(f"{name} must be an integer array, not {show(value)} "
                           f"({' '.join(str(e).split())})") from None
    if arr.dtype.kind not in "iu":
        raise BadTypeError(f"{name} must hold integers (a numpy integer dtype), "
                           f"not dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size:
        big = arr > np.uint64(_INT64_MAX)
        if big.any():
            raise ValueError(f"{name} holds {int(arr[big].flat[0])}, beyond the int64 the "
                             f"model computes in (at most {_INT64_MAX})")
    return arr.astype(np.int64)


def check_signed(name, value, width):
    """Return ``value`` as an int64 array, checking it fits ``width`` signed bits.

    Raises :class:`BadTypeError` for data that is not integer and ``ValueError``
    naming ``name``, the offending value and the allowed range otherwise.
    """
    width = check_width(f"{name} width", width)
    lo, hi = signed_range(width)
    raw = np.asarray(value) if isinstance(value, np.ndarray) else None
    if raw is not None and raw.dtype.kind == "u" and raw.size and int(raw.max()) > hi:
        # named by its own value, before int_array would call it too big for int64
        first = int(raw[raw > np.uint64(hi)].flat[0])
        raise ValueError(f"{name} must be within the signed {width}-bit range [{lo}, {hi}]; "
                         f"found {first}")
    arr = int_array(name, value)
    if arr.size:
        bad = (arr < lo) | (arr > hi)
        if bad.any():
            first = arr[bad].flat[0]
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name} must be within the signed {width}-bit range [{lo}, {hi}]; "
                f"found {first}" + (f" at index {where}" if where else ""))
    return arr


def check_dims(name, arr, dims, *, batch=False):
    """Check that ``arr`` has the axes named by ``dims`` (e.g. ``("Cin", "H", "W")``), with
    an optional leading batch axis when ``batch``, and that none of the named axes is
    empty (a batch of zero is allowed). Returns ``arr``."""
    spelled = f"({', '.join(dims)})"
    ndims = (len(dims),) + ((len(dims) + 1,) if batch else ())
    if arr.ndim not in ndims:
        also = f" or (N, {', '.join(dims)})" if batch else ""
        raise ValueError(f"{name} must have shape {spelled}{also}, not {arr.shape}")
    named = arr.shape[arr.ndim - len(dims):]
    empty = [d for d, n in zip(dims, named) if n == 0]
    if empty:
        raise ValueError(f"{name} must have no empty dimension, not shape {arr.shape}: "
                         f"{' and '.join(empty)} {'is' if len(empty) == 1 else 'are'} 0 "
                         f"in {spelled}")
    return arr


def per_channel(name, value, channels, lo, hi):
    """``value`` (a scalar, broadcast, or shape ``(channels,)``) as an int64 array of
    ``channels`` integers in ``[lo, hi]``."""
    arr = int_array(name, value)
    if arr.ndim == 0:
        arr = np.full(channels, int(arr), dtype=np.int64)
    if arr.shape != (channels,):
        raise ValueError(f"{name} must be a scalar or have shape ({channels},), not {arr.shape}")
    bad = (arr < lo) | (arr > hi)
    if bad.any():
        raise ValueError(f"{name} must be within [{lo}, {hi}]; "
                         f"found {arr[bad][0]} for channel {int(np.argmax(bad))}")
    return arr
