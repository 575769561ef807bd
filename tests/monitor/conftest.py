"""Fixtures for monitor tests: a real daemon process started through the CLI on loopback."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from omnitune.monitor import traffic
from tests.conftest import OMNITUNE, REPO, offline_env

LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


@dataclass
class Daemon:
    process: subprocess.Popen[str]
    url: str
    config: Path
    token: str | None = None
    output: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Drain the daemon's output, or a full pipe would block it.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def request(
        self, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None
    ) -> tuple[int, Any]:
        """(status, parsed JSON or text) of one HTTP request; never raises on 4xx/5xx."""
        data = body.encode() if isinstance(body, str) else body
        request = urllib.request.Request(self.url + path, data=data, method=method)
        for key, value in {**self.auth(), **(headers or {})}.items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def post(self, events: Any) -> tuple[int, Any]:
        return self.request("POST", "/v1/events", json.dumps(events))

    def status(self) -> dict[str, Any]:
        code, body = self.request("GET", "/v1/status")
        assert code == 200, body
        return body

    def metrics(self) -> str:
        code, body = self.request("GET", "/metrics")
        assert code == 200, body
        return body

    def stored_request_ids(self) -> list[str]:
        """The request_id of every stored event, oldest first, paged through GET /v1/events
        (a list: an id stored twice would show twice)."""
        ids: list[str] = []
        after = 0
        while True:
            code, page = self.request("GET", f"/v1/events?after_id={after}&limit=5000")
            assert code == 200, page
            if not page["events"]:
                return ids
            ids += [event["request_id"] for event in page["events"]]
            after = page["next_after_id"]

    def evaluated(self, timeout: float = 30.0) -> dict[str, Any]:
        """The status after an evaluation that started after this call."""
        asked = time.time()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if (status["evaluated_at"] or 0) > asked:
                return status
            time.sleep(0.05)
        raise AssertionError("no evaluation in time")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=30)


def start_daemon(
    config: Path,
    token: str | None = None,
    timeout: float = 60,
    port: int = 0,
    prefix: tuple[str, ...] = (),
) -> Daemon:
    command = ["monitor", "serve", "--config", str(config), "--port", str(port)]
    return start_listening(command, "/healthz", token, timeout, prefix)


def start_proxy(config: Path, *overrides: str, timeout: float = 60) -> Daemon:
    """`omnitune monitor proxy` on a free loopback port (its `request()` goes through it)."""
    command = ["monitor", "proxy", "--config", str(config), "--port", "0", *overrides]
    return start_listening(command, "/omnitune/healthz", None, timeout)


def start_listening(
    command: list[str],
    health: str,
    token: str | None = None,
    timeout: float = 60,
    prefix: tuple[str, ...] = (),
    **env: str,
) -> Daemon:
    """Run `omnitune COMMAND...` (after `prefix`, e.g. `unshare ...`; with `env` added to the
    environment), wait for its "listening on URL" line and a 200 on `health`."""
    option = "--config" if "--config" in command else "--settings"
    config = Path(command[command.index(option) + 1])
    process = subprocess.Popen(
        [*prefix, str(OMNITUNE), *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=offline_env(**env),
    )
    deadline = time.monotonic() + timeout
    seen = []
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        match = LISTENING.search(line)
        if match:
            daemon = Daemon(process, match.group(1), config, token, seen)
            _wait_healthy(daemon, deadline, health)
            return daemon
    process.kill()
    raise AssertionError(f"{' '.join(command[:2])} did not start:\n" + "".join(seen))


def _wait_healthy(daemon: Daemon, deadline: float, health: str = "/healthz") -> None:
    while time.monotonic() < deadline:
        try:
            if daemon.request("GET", health)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("daemon never answered /healthz")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prometheus_binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `make test` installs Debian's prometheus package")
    return found


class Prometheus:
    """A real Prometheus server process (Debian's package) and the API calls the tests make."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url, self.process, self.log = url, process, log

    def query(self, expr: str) -> list[dict]:
        query = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=10) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as answer:
            return json.loads(answer.read())

    def wait_for(self, expr: str, timeout: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.5)
        raise AssertionError(f"Prometheus never returned a result for {expr}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def start_prometheus(
    target: str,
    folder: Path,
    port: int | None = None,
    alertmanager: str | None = None,
    alerts_fire_at_once: bool = False,
) -> Prometheus:
    """Prometheus on 127.0.0.1 (on `port`, or a free one) scraping the daemon at `target`
    every second, with the shipped configuration's job and alert rules (evaluated every
    second), sending alerts to `alertmanager` (a URL) when given; `alerts_fire_at_once` drops
    the rules' `for:` waits. Started again on the same folder and port, it continues its time
    series."""
    shipped = REPO / "configs" / "prometheus"
    binary = prometheus_binary("prometheus")
    rules = yaml.safe_load((shipped / "omnitune-rules.yml").read_text())
    if alerts_fire_at_once:
        for group in rules["groups"]:
            for rule in group["rules"]:
                rule.pop("for", None)
    (folder / "omnitune-rules.yml").write_text(yaml.safe_dump(rules))
    config = yaml.safe_load((shipped / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["scrape_configs"][0]["static_configs"] = [{"targets": [target.removeprefix("http://")]}]
    if alertmanager is None:
        config.pop("alerting", None)
    else:
        targets = [alertmanager.removeprefix("http://")]
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": targets}]}]}
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = port or free_port()
    log = folder / "prometheus.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if server.get("/api/v1/status/buildinfo")["status"] == "success":
                return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    pytest.fail("Prometheus did not start: " + log.read_text())


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    return traffic.write_reference(tmp_path / "run" / "reference.json")


@pytest.fixture
def monitor_config(tmp_path: Path, reference: Path) -> Callable[..., Path]:
    """`monitor_config(**sections)` writes a daemon config for the synthetic assistant."""

    def write(**sections: dict[str, Any]) -> Path:
        config: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": 0},
            "store": {"path": str(tmp_path / "store" / "events.sqlite")},
            "models": {"assistant": {"modality": "text", "reference": str(reference)}},
            "window": {"size": 400, "min_events": 200},
            "drift": {"interval_s": 0.2},
            "capture": {"dir": str(tmp_path / "capture")},
        }
        for section, values in sections.items():
            if isinstance(values, dict) and isinstance(config.get(section), dict):
                config[section].update(values)
            else:
                config[section] = values
        path = tmp_path / "monitor.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


@pytest.fixture
def daemon(monitor_config: Callable[..., Path]) -> Iterator[Daemon]:
    running = start_daemon(monitor_config())
    yield running
    running.stop()


def answering_upstream(answer: str, delay_s: float = 0.0) -> tuple[str, Callable[[], None]]:
    """An OpenAI-shaped chat server on loopback that always answers `answer` (after
    `delay_s`): a champion or canary whose calls a test can tell apart. (URL, stop)."""
    import asyncio

    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def chat(request):
        body = await request.json()
        if delay_s:
            await asyncio.sleep(delay_s)
        message = {"role": "assistant", "content": answer}
        return JSONResponse(
            {
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [{"index": 0, "message": message}],
            }
        )

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://127.0.0.1:{port}", stop


def start_alertmanager(folder: Path, webhook: str) -> tuple[str, Callable[[], None]]:
    """Debian's Alertmanager on 127.0.0.1 with the shipped routes, its loop receiver pointed
    at `webhook` and its waits cut to a second; clustering off (no gossip port). (URL, stop)."""
    binary = prometheus_binary("prometheus-alertmanager")
    config = yaml.safe_load((REPO / "configs" / "alertmanager" / "alertmanager.yml").read_text())
    config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1m")
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook
    (folder / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = folder / "alertmanager.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'alertmanager.yml'}",
                f"--storage.path={folder / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def stop() -> None:
        process.terminate()
        process.wait(timeout=30)

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=2):
                return url, stop
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.2)
    stop()
    pytest.fail("Alertmanager did not start: " + log.read_text())
