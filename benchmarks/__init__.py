"""Side-by-side benchmarks of this checkout (see ``benchmarks/run.py``).

Importing this package makes ``lazyllm``, ``lazyllm.planner`` and ``lazyllm.backends``
resolve to this checkout's ``lazyllm/``, ``planner/`` and ``backends/`` folders (the
mapping of pyproject's ``package-dir``), even when the editable install of the
environment points at another checkout: a benchmark measures the code it sits next to.
It does nothing for a module already imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = {"lazyllm": _ROOT / "lazyllm", "lazyllm.planner": _ROOT / "planner", "lazyllm.backends": _ROOT / "backends"}


class _ThisCheckout(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201 - importlib protocol
        folder = _PACKAGES.get(fullname)
        if folder is None or not (folder / "__init__.py").is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


if (_ROOT / "pyproject.toml").is_file() and not any(isinstance(f, _ThisCheckout) for f in sys.meta_path):
    sys.meta_path.insert(0, _ThisCheckout())
