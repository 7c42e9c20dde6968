"""Imported first by every script: makes src/scribeflow importable in any environment
(a conda env made by --use-conda, a cluster node) without installing the package."""

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parents[1] / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
