"""The code base stays `ruff` clean: the same checks `make lint` runs, enforced by `make test`."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_ruff_check_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-4000:]


def test_ruff_format_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "."],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:]


#: The library's folders: what the size rule below covers (scripts, bench and tests are not).
LIBRARY = ("api", "core", "modalities", "trainers", "monitor", "dashboard")
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 80


def _oversized() -> list[str]:
    import ast

    found = []
    for folder in LIBRARY:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ClassDef):
                    limit = MAX_CLASS_LINES
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    limit = MAX_FUNCTION_LINES
                else:
                    continue
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    where = f"{path.relative_to(REPO)}:{node.lineno}"
                    found.append(f"{where} {node.name}: {lines} lines (at most {limit})")
    return found


def test_no_class_over_400_lines_and_no_function_over_80():
    """Small units with one job (docs/design.md): a class past 400 lines or a function past
    80 is a sign of two jobs in one; split it at its seams."""
    assert _oversized() == []
