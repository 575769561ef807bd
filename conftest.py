"""Collects the console sessions of README.md and docs/*.md as tests (tests/console_docs.py),
and runs `make demo` once for them and tests/test_demo.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser, SkipParser

from tests.console_docs import REPO, FileBlockParser, copy_repository, run_demo, teardown
from tests.console_docs import evaluate as run_console_block

pytest_collect_file = Sybil(
    parsers=[
        CodeBlockParser(language="console", evaluator=run_console_block),
        FileBlockParser(),
        SkipParser(),
    ],
    patterns=["README.md", "docs/*.md"],
    teardown=teardown,
    fixtures=["demo_tree"],
).pytest()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Doc sessions run commands for minutes: `slow` (make test-fast leaves them out)."""
    for item in items:
        if item.path.suffix == ".md":
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def demo_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh copy of the repository after `make demo`; its output in demo-first-run.log.
    OMNITUNE_TEST_DEMO_TREE names such a tree to reuse while working on docs (CI sets none)."""
    if os.environ.get("OMNITUNE_TEST_DEMO_TREE"):
        return Path(os.environ["OMNITUNE_TEST_DEMO_TREE"])
    tree = tmp_path_factory.mktemp("demo") / "repo"
    copy_repository(REPO, tree)
    result = run_demo(tree)
    (tree / "demo-first-run.log").write_text(result.stdout + result.stderr)
    if os.environ.get("OMNITUNE_DOCS_RECORD"):  # measuring the docs' figures: keep the demo's
        Path(os.environ["OMNITUNE_DOCS_RECORD"] + ".demo.log").write_text(result.stdout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return tree
