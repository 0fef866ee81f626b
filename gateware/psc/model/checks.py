"""Value checks shared by the golden model, the configurations and the host scheduler.

Each check names the parameter, the offending value and what is allowed, and
raises ``ValueError`` (``TypeError`` for data that is not integer); callers
that need their own exception type (the host's ``LayerError``) convert it.
"""

import numpy as np

__all__ = ["signed_range", "check_int", "check_width", "check_signed", "per_channel"]


def signed_range(width):
    """``(lo, hi)`` of a signed ``width``-bit integer."""
    return -(1 << (width - 1)), (1 << (width - 1)) - 1


def check_int(name, value, lo, hi=None):
    """``value`` as an int, checking it is an integer (not a bool) in ``[lo, hi]``
    (``>= lo`` when ``hi`` is None)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo or (
            hi is not None and value > hi):
        allowed = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {allowed}, not {value!r}")
    return int(value)


def check_width(name, width, *, maximum=62):
    """A bit width in ``[2, maximum]``."""
    return check_int(name, width, 2, maximum)


def check_signed(name, value, width):
    """Return ``value`` as an int64 array, checking it fits ``width`` signed bits.

    Raises ``TypeError`` for non-integer data and ``ValueError`` naming
    ``name``, the offending value and the allowed range otherwise.
    """
    width = check_width(f"{name} width", width)
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, not dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    lo, hi = signed_range(width)
    if arr.size:
        bad = (arr < lo) | (arr > hi)
        if bad.any():
            first = arr[bad].flat[0]
            raise ValueError(
                f"{name} must be within the signed {width}-bit range [{lo}, {hi}]; "
                f"found {first} at index {tuple(int(i) for i in np.argwhere(bad)[0])}")
    return arr


def per_channel(name, value, channels, lo, hi):
    """``value`` (a scalar, broadcast, or shape ``(channels,)``) as an int64 array of
    ``channels`` integers in ``[lo, hi]``."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, not dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.ndim == 0:
        arr = np.full(channels, int(arr), dtype=np.int64)
    if arr.shape != (channels,):
        raise ValueError(f"{name} must be a scalar or have shape ({channels},), not {arr.shape}")
    bad = (arr < lo) | (arr > hi)
    if bad.any():
        raise ValueError(f"{name} must be within [{lo}, {hi}]; "
                         f"found {arr[bad][0]} for channel {int(np.argmax(bad))}")
    return arr
