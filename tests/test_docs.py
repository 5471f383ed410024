"""Every ```python block of the README and docs/ runs, so none of them rots.

Fragments that cannot run on their own are fenced as ```py instead: those are
compiled (top-level ``await`` allowed), so at least their syntax cannot rot.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
FRAGMENT = re.compile(r"^```py\n(.*?)^```", re.S | re.M)


def _blocks(pattern: re.Pattern[str] = BLOCK) -> list[object]:
    params = []
    for path in DOCS:
        for index, match in enumerate(pattern.finditer(path.read_text())):
            name = f"{path.relative_to(ROOT)}#{index}"
            params.append(pytest.param(match.group(1), id=name))
    return params


@pytest.mark.parametrize("code", _blocks())
def test_code_block_runs(
    code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<doc>", "exec"), {"__name__": "__doc_example__"})


@pytest.mark.parametrize("code", _blocks(FRAGMENT))
def test_code_fragment_compiles(code: str) -> None:
    compile(code, "<doc>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
