"""The docs sessions' `omnitune` shim (tests/forkserver.py) behaves as the console script does:
its output, exit status and signals are the command's (here beside the daemon's config)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from tests import forkserver
from tests.conftest import offline_env


def _shim(tmp_path: Path) -> Path:
    return forkserver.write_shim(tmp_path / "bin", forkserver.shared())


def test_the_shim_gives_the_commands_output_and_exit_status(tmp_path: Path) -> None:
    shim = _shim(tmp_path)
    shown = subprocess.run(
        [shim, "monitor", "serve", "--help"], capture_output=True, text=True, env=offline_env()
    )
    assert shown.returncode == 0
    assert "omnitune monitor serve --config configs/monitor.yaml" in shown.stdout

    refused = subprocess.run(
        [shim, "train", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=offline_env(),
    )
    assert refused.returncode == 2
    assert "missing.yaml: no such config file" in refused.stderr
    assert refused.stdout == ""


def test_sigterm_to_the_shim_stops_the_command(tmp_path: Path, monitor_config) -> None:
    port = _free_port()
    config = monitor_config()
    daemon = _serve(tmp_path, "monitor", "serve", "--config", str(config), "--port", str(port))
    try:
        _wait_until_served(daemon, port, 60)
        daemon.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then re-raises the signal: the console script dies of it, as here
        assert daemon.wait(timeout=30) == -signal.SIGTERM
        assert not _accepts(port)
    finally:
        if daemon.poll() is None:
            daemon.kill()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(tmp_path: Path, *argv: str) -> subprocess.Popen:
    """`omnitune ARGV` through the shim, in the background."""
    return subprocess.Popen(
        [_shim(tmp_path), *argv],
        cwd=tmp_path,
        env=offline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_until_served(process: subprocess.Popen, port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not _accepts(port):
        assert process.poll() is None and time.monotonic() < deadline, "did not start"
        time.sleep(0.2)


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_a_command_that_execs_another_program_is_waited_for(tmp_path: Path) -> None:
    """`omnitune dashboard` becomes Streamlit (exec): the shim runs as long as Streamlit does,
    and a SIGTERM to it stops Streamlit (no server left behind when a docs session ends)."""
    port = _free_port()
    dashboard = _serve(tmp_path, "dashboard", "--port", str(port), "--runs", str(tmp_path))
    try:
        _wait_until_served(dashboard, port, 90)
        time.sleep(1)
        assert dashboard.poll() is None, "the shim ended while Streamlit runs"
        dashboard.send_signal(signal.SIGTERM)
        dashboard.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _accepts(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _accepts(port), "Streamlit still serves after the shim was stopped"
    finally:
        if dashboard.poll() is None:
            dashboard.kill()
