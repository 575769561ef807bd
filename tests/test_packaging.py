"""Packaging: one `omnitune` import namespace, complete wheels, and a torch-free monitor extra."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

CODE_FOLDERS = ("modalities", "trainers", "monitor", "dashboard")


@pytest.fixture(scope="module")
def build_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The built wheel, and what the build printed."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), "."],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    (built,) = out.glob("omnitune-*.whl")
    return built, result.stdout + result.stderr


@pytest.fixture(scope="module")
def wheel(build_output: tuple[Path, str]) -> Path:
    return build_output[0]


@pytest.mark.slow
def test_the_build_prints_no_packaging_warning(build_output):
    """`make demo`'s set-up once printed ~300 lines of setuptools warnings about data folders
    (dashboard pages, the speech corpus) missing from the packages list."""
    _, printed = build_output
    assert "absent from the packages configuration" not in printed, printed[-3000:]
    assert "BuildBackendWarning" not in printed


def _packages_in_tree() -> set[str]:
    found = set()
    for folder in CODE_FOLDERS:
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO).as_posix()
            found.add(f"omnitune/{relative}/__init__.py")
    found.add("omnitune/__init__.py")  # the Python API, from the folder api/
    return found


@pytest.mark.slow
def test_wheel_holds_every_package_under_the_omnitune_namespace(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = _packages_in_tree() - names
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"omnitune", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "omnitune/modalities/assets/tiny_corpus.txt" in names
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))
    )
    assert b"omnitune = omnitune.core.cli:main" in entry_points


@pytest.mark.slow
def test_monitor_extra_installs_without_torch_and_the_cli_runs(wheel, tmp_path):
    venv = tmp_path / "monitor-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    install = subprocess.run([*pip, f"{wheel}[monitor]"], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]

    python = str(venv / "bin" / "python")
    probe = subprocess.run(
        [
            python,
            "-c",
            "import importlib.util as u, omnitune, omnitune.monitor, omnitune.trainers.config;"
            "print([m for m in ('torch', 'transformers', 'streamlit') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]", "the monitor extra must not pull in heavy libraries"

    help_text = subprocess.run(
        [str(venv / "bin" / "omnitune"), "--help"], capture_output=True, text=True
    )
    assert help_text.returncode == 0 and "config" in help_text.stdout
    config = subprocess.run(
        [str(venv / "bin" / "omnitune"), "config", "check", str(REPO / "configs/text-lora.yaml")],
        capture_output=True,
        text=True,
    )
    assert config.returncode == 0, config.stderr

    needs_torch = subprocess.run(
        [str(venv / "bin" / "omnitune"), "models", "build-tiny", "text", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert needs_torch.returncode == 2
    assert needs_torch.stderr.strip() == (
        "omnitune: error: this command needs the 'torch' package: pip install 'omnitune[train]'"
    )

    # The daemon itself serves from this torch-free install.
    from omnitune.monitor import traffic

    reference = traffic.write_reference(tmp_path / "reference.json")
    monitor_config = tmp_path / "monitor.yaml"
    monitor_config.write_text(
        f"store: {{path: {tmp_path / 'events.sqlite'}}}\n"
        f"models: {{assistant: {{modality: text, reference: {reference}}}}}\n"
        f"capture: {{dir: null}}\n"
    )
    daemon = subprocess.Popen(
        [
            str(venv / "bin" / "omnitune"),
            "monitor",
            "serve",
            "--config",
            str(monitor_config),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = daemon.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line + daemon.stdout.read()
        url = line.split("listening on ")[1].split()[0]
        import json
        import urllib.request

        body = json.dumps({"model": "assistant", "input": "hello there", "latency_s": 0.1})
        with urllib.request.urlopen(
            urllib.request.Request(f"{url}/v1/events", body.encode()), timeout=30
        ) as answer:
            assert json.loads(answer.read())["accepted"] == 1
        with urllib.request.urlopen(f"{url}/metrics", timeout=30) as answer:
            assert 'omnitune_events_total{adapter="",modality="text",model="assistant"} 1.0' in (
                answer.read().decode()
            )
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
