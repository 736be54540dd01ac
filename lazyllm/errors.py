"""lazyllm's errors (defined in :mod:`lazyllm.backends.errors`, the bottom layer)."""

from lazyllm.backends.errors import *  # noqa: F401,F403
from lazyllm.backends.errors import __all__  # noqa: F401
