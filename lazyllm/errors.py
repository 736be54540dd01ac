"""lazyllm's errors (defined in :mod:`lazyllm.core.errors`, the bottom layer)."""

from lazyllm.core.errors import *  # noqa: F401,F403
from lazyllm.core.errors import __all__  # noqa: F401
