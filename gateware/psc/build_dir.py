"""Where generated files go: simulator builds, synthesis runs, board builds.

``PSC_BUILD_DIR`` when set; otherwise ``build/`` in the source checkout the
package runs from, or ``~/.cache/psc`` for an installed package. The YoWASP
tools cannot see absolute paths under ``/tmp`` (they map a private
directory over it), so tool flows check their directory with
:func:`check_not_tmp`.
"""

import os
from pathlib import Path

__all__ = ["build_root", "check_not_tmp", "check_dir"]

_PACKAGE = Path(__file__).resolve().parent


def build_root():
    """The root of every generated directory (created on first use by its user)."""
    env = os.environ.get("PSC_BUILD_DIR")
    if env:
        return Path(env).expanduser().resolve()
    checkout = _PACKAGE.parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "gateware" / "psc").is_dir():
        return checkout / "build"
    return Path.home() / ".cache" / "psc"


def check_dir(name, path):
    """``path`` (argument ``name``) as a resolved :class:`~pathlib.Path`, checking it can be
    a directory: it is one, or it does not exist yet and its nearest existing ancestor is
    one (so that creating it will not fail half-way, after work has started)."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes) or not str(path):
        raise ValueError(f"{name} must be a directory path, not {path!r}")
    resolved = Path(path).expanduser().resolve()
    for at in (resolved, *resolved.parents):
        if at.exists():
            if not at.is_dir():
                what = "is" if at == resolved else f"is inside {str(at)!r}, which is"
                raise ValueError(f"{name} must be a directory, not {str(path)!r}: it {what} a "
                                 f"file")
            break
    return resolved


def check_not_tmp(name, path):
    """Refuse ``path`` (argument ``name``) when it lies under ``/tmp``, where YoWASP tools
    cannot see it; compares path components, not a string prefix. Also :func:`check_dir`."""
    check_dir(name, path)
    parts = Path(path).resolve().parts
    if len(parts) > 1 and parts[1] == "tmp":
        raise ValueError(f"{name} must not be under /tmp (the YoWASP tools cannot see it there), "
                         f"not {str(path)!r}; set PSC_BUILD_DIR or pass another directory")
    return Path(path).resolve()
