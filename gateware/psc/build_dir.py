"""Where generated files go: simulator builds, synthesis runs, board builds.

``PSC_BUILD_DIR`` when set; otherwise ``build/`` in the source checkout the
package runs from, or ``~/.cache/psc`` for an installed package. The YoWASP
tools cannot see absolute paths under ``/tmp`` (they map a private
directory over it), so tool flows check their directory with
:func:`check_not_tmp`.
"""

import os
from pathlib import Path

__all__ = ["build_root", "check_not_tmp"]

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


def check_not_tmp(name, path):
    """Refuse ``path`` (argument ``name``) when it lies under ``/tmp``, where YoWASP tools
    cannot see it; compares path components, not a string prefix."""
    parts = Path(path).resolve().parts
    if len(parts) > 1 and parts[1] == "tmp":
        raise ValueError(f"{name} must not be under /tmp (the YoWASP tools cannot see it there), "
                         f"not {str(path)!r}; set PSC_BUILD_DIR or pass another directory")
    return Path(path).resolve()
