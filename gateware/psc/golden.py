"""The bit-exact golden model of PSC (public name); it lives in :mod:`psc.model.golden`."""

from psc.model.golden import *  # noqa: F401,F403
from psc.model.golden import __all__  # noqa: F401
