#!/usr/bin/env python3
"""Bootstrap and run asyncsess from a fresh checkout with nothing but python3.

    python3 dev.py demo [ARGS...]   train the demo model (python -m asyncsess demo)
    python3 dev.py test [ARGS...]   lint, type-check and run the whole test suite
    python3 dev.py bench [ARGS...]  run the benchmarks (python -m benchmarks)

Each command creates (or reuses) the virtualenv in .venv, installs what it needs
when pyproject.toml changed since the last install, then runs inside it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".asyncsess-installed"


def _run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def ensure_env(tf_extra: str) -> None:
    """Create .venv and install the project with its test group, once per pyproject."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    wanted = f"{digest}:{tf_extra}"
    if PY.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not PY.exists():
        print("dev.py: creating .venv", flush=True)
        venv.create(VENV, with_pip=True)
    print("dev.py: installing asyncsess and its test tools into .venv", flush=True)
    # `pip install --group` needs pip >= 25.1; Python 3.11 ships 23.x.
    _run(PY, "-m", "pip", "install", "-q", "-U", "pip>=25.1")
    _run(
        PY,
        "-m",
        "pip",
        "install",
        "-q",
        "-e",
        f".[{tf_extra},trio,serve,progress]",
        "--group",
        "test",
        "--group",
        "bench",
    )
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "bench", "serve"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    ensure_env(os.environ.get("ASYNCSESS_TF_EXTRA", "tensorflow-cpu"))
    env = dict(
        os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")
    )
    if command == "test":
        folders = ("asyncsess", "tests", "benchmarks", "examples")
        sources = [d for d in folders if (ROOT / d).exists()]
        checks = [
            [str(BIN / "ruff"), "check", *sources],
            [str(BIN / "mypy")],
            [str(PY), "-m", "pytest", *rest],
        ]
        for check in checks:
            print(
                "dev.py:",
                " ".join(Path(c).name if i == 0 else c for i, c in enumerate(check)),
                flush=True,
            )
            code = subprocess.run(check, cwd=ROOT, env=env).returncode
            if code:
                return code
        return 0
    module = "benchmarks" if command == "bench" else "asyncsess"
    args = rest if command == "bench" else [command, *rest]
    return subprocess.run([str(PY), "-m", module, *args], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
