"""asyncsess benchmarks: ``python -m benchmarks [--quick]`` runs them all.

Each module ``bench_*.py`` exposes ``NAME`` and ``run(quick=False) -> list[dict]``.
"""

from __future__ import annotations

import os

# Quieten TensorFlow's C++ logging before any benchmark imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
