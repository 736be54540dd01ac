"""benchmarks/ is not an installed package: make it importable from the repository root
(``python -m pytest`` has it on sys.path already; a bare ``pytest`` does not)."""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
