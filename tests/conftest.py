"""Shared fixtures: the CLI as a subprocess, and tiny offline models built once per test run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import forkserver

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OMNITUNE = BIN / "omnitune"


def offline_env(**extra: str) -> dict[str, str]:
    """The environment of a user with no network: the hub is never contacted."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


@pytest.fixture(autouse=True, scope="session")
def _offline_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests run offline with an empty, private hub cache, as on CI."""
    saved = dict(os.environ)
    home = tmp_path_factory.mktemp("hf-home")
    os.environ.update(
        offline_env(
            HF_HOME=str(home),
            HF_HUB_CACHE=str(home / "hub"),
            OMNITUNE_CACHE=str(tmp_path_factory.mktemp("omnitune-cache")),
        )
    )
    yield
    os.environ.clear()
    os.environ.update(saved)


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 600, fresh: bool = False, **env: str
):
    """Run the `omnitune` command as a user would, in a new process; never raises on failure.

    The process is forked from a server that has imported torch (tests/forkserver.py), which
    saves each call ~3 s of CPU; `fresh=True`, or OMNITUNE_TEST_FRESH_PROCESSES=1 for every
    call, runs the installed console script in a new interpreter instead."""
    if fresh or forkserver.fresh_processes():
        return subprocess.run(
            [str(OMNITUNE), *args],
            cwd=cwd or REPO,
            env=offline_env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    return forkserver.shared().run(list(args), cwd or REPO, offline_env(**env), timeout)


def run_python(code: str, timeout: float = 600, **env: str):
    """Run `code` in a fresh interpreter of the test venv (a new process, nothing cached)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=offline_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`tiny_model(family)` -> folder of that tiny model, built on first use, once per run."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            from omnitune.modalities.tiny import build_tiny

            out = tmp_path_factory.mktemp(f"tiny-{family}")
            built[family] = build_tiny(family, out, seed=0)
        return built[family]

    return get


@pytest.fixture(scope="session")
def text_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The digit-chat task (256 training rows, 48 held out), written once per test run."""
    from omnitune.modalities.text.sample_data import write_digit_chat

    return write_digit_chat(tmp_path_factory.mktemp("text-data"), train=256, test=48, seed=0)


@pytest.fixture(scope="session")
def sft_model(tmp_path_factory, tiny_model, text_data) -> Path:
    """The tiny chat model after 60 steps of SFT: right about a third of the time (where the
    online objectives start from), and answering in numerals (what the proxy tests serve)."""
    from omnitune.trainers.config import RunConfig
    from omnitune.trainers.loop import train

    out = tmp_path_factory.mktemp("sft")
    config = RunConfig.model_validate(
        {
            "model": {"name_or_path": str(tiny_model("text")), "modality": "text"},
            "data": {"train": str(text_data["train"])},
            "peft": {"method": "full"},
            "train": {
                "max_steps": 60,
                "batch_size": 32,
                "lr": 3e-3,
                "lr_schedule": "cosine",
                "warmup_steps": 5,
                "num_threads": 1,
            },
            "output_dir": str(out),
        }
    )
    return train(config).output


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Figures the reliability tests measured go to docs/reliability.md (tests/reliability.py)."""
    from tests import reliability

    reliability.write_page()
