"""`omnitune loop watch`: the loop started by an alert.

Alertmanager posts its webhook (JSON, `alerts[]` with labels) to `POST /alerts`. For a firing
alert named in `watch.alerts` (the shipped `OmnituneInputDrift`) on a model in
`watch.models`, a round starts in the background, one at a time per model:

1. export the model's labels from the daemon (`omnitune monitor export`), again every
   `watch.poll_s` until `loop.min_labels` training rows are there (or `watch.max_wait_s`
   passes: outcome `not_enough_labels`);
2. `omnitune loop retune` the serving version's run on them;
3. `omnitune loop gate` the challenger against it;
4. on a pass, `omnitune loop promote` it as a canary through the proxy (or in full, when
   `watch.promote: full`); a person promotes a canary in full, or withdraws it.

Each step is the command itself, run as a child process (its output in the round's folder):
the watcher does what a person at a shell would, and a crash in one round cannot take the
watcher down. Rounds are appended to `WORKDIR/rounds.jsonl`; `GET /v1/rounds` lists them,
`GET /metrics` counts them (`omnitune_loop_runs_total{model,outcome}`) and holds the last
gate's differences and the canary share. The answer to Alertmanager comes at once (it retries
a slow webhook), whatever the round does after.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from omnitune.core.errors import MissingDependencyError
from omnitune.trainers.closed_loop.labels import count_rows, export_kind
from omnitune.trainers.closed_loop.registry import Registry
from omnitune.trainers.closed_loop.settings import LoopSettings, WatchedModel
from omnitune.trainers.config import load_run_config

logger = logging.getLogger("omnitune.loop")


class Watcher:
    """The rounds, their metrics and the webhook's handling (no HTTP here)."""

    def __init__(self, settings: LoopSettings, settings_file: Path | None = None) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge
        except ImportError:
            raise MissingDependencyError(
                "omnitune loop watch needs prometheus-client: pip install 'omnitune[monitor]'"
            ) from None
        self.settings = settings
        self.workdir = Path(settings.watch.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.settings_file = self.workdir / "settings.yaml"
        self.settings_file.write_text(
            yaml.safe_dump({k: settings.model_dump(mode="json")[k] for k in ("loop", "gate")})
        )
        self.lock = threading.Lock()
        self.active: dict[str, threading.Thread] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.runs = Counter(
            "omnitune_loop_runs",
            "Loop rounds by model and outcome (canary, promoted, rejected, not_enough_labels, "
            "failed).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.gain = Gauge(
            "omnitune_loop_gate_gain",
            "The last gate's gain of the challenger over the champion (positive: better), by "
            "slice and metric.",
            ["model", "slice", "metric"],
            registry=self.registry,
        )
        self.canary_share = Gauge(
            "omnitune_loop_canary_share",
            "Share of calls the model's canary serves (0: none).",
            ["model"],
            registry=self.registry,
        )
        self.alerts_seen = Counter(
            "omnitune_loop_alerts",
            "Alerts received on the webhook, by model and whether they started a round.",
            ["model", "started"],
            registry=self.registry,
        )

    # The webhook.

    def receive(self, payload: Any) -> dict[str, Any]:
        """Start a round for each firing, watched alert (ValueError: not a webhook body)."""
        if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
            raise ValueError("body: not an Alertmanager webhook (no 'alerts' list)")
        started, ignored = [], []
        for alert in payload["alerts"]:
            labels = alert.get("labels") if isinstance(alert, dict) else None
            if not isinstance(labels, dict):
                raise ValueError("alerts[]: an alert without labels")
            model, name = labels.get("model"), labels.get("alertname")
            firing = alert.get("status", payload.get("status")) == "firing"
            if not firing or name not in self.settings.watch.alerts:
                continue
            if model not in self.settings.watch.models:
                ignored.append(f"{model}: not in watch.models")
                continue
            if self.start(model, labels):
                started.append(model)
                self.alerts_seen.labels(model, "yes").inc()
            else:
                ignored.append(f"{model}: a round is running")
                self.alerts_seen.labels(model, "no").inc()
        return {"started": started, "ignored": ignored}

    def start(self, model: str, labels: dict[str, str]) -> bool:
        with self.lock:
            running = self.active.get(model)
            if running is not None and running.is_alive():
                return False
            thread = threading.Thread(
                target=self._round, args=(model, labels), name=f"loop-{model}", daemon=True
            )
            self.active[model] = thread
            thread.start()
            return True

    def wait(self, timeout: float | None = None) -> None:
        for thread in list(self.active.values()):
            thread.join(timeout)

    # A round.

    def _round(self, model: str, labels: dict[str, str]) -> None:
        watched = self.settings.watch.models[model]
        folder = self.workdir / model / time.strftime("round-%Y%m%d-%H%M%S")
        folder.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {
            "model": model,
            "alert": labels,
            "folder": str(folder),
            "started": time.time(),
        }
        try:
            record.update(self._run_round(model, watched, folder))
        except Exception as exc:  # a round's failure is reported, never the watcher's end
            logger.exception("%s: loop round failed", model)
            record.update(outcome="failed", error=str(exc))
        record["ended"] = time.time()
        self.runs.labels(model, record["outcome"]).inc()
        with self.lock, (self.workdir / "rounds.jsonl").open("a") as rounds:
            rounds.write(json.dumps(record) + "\n")
        logger.info("%s: loop round ended: %s", model, record["outcome"])

    def _run_round(self, model: str, watched: WatchedModel, folder: Path) -> dict[str, Any]:
        champion = self._champion(model, watched)
        objective = load_run_config(champion / "config.yaml").objective.name
        labels = folder / "labels"
        train_rows = labels / export_kind(objective) / "train.jsonl"
        deadline = time.monotonic() + self.settings.watch.max_wait_s
        needed = self.settings.loop.min_labels
        while True:
            self._step(folder, "export", "monitor", "export", model, "--url", watched.daemon,
                       "--out", str(labels), "--held-out", "0.2")  # fmt: skip
            have = count_rows(train_rows) if train_rows.is_file() else 0
            if have >= needed:
                break
            if time.monotonic() + self.settings.watch.poll_s > deadline:
                return {"outcome": "not_enough_labels", "labels": have}
            logger.info("%s: %d labelled rows of %d needed; waiting", model, have, needed)
            time.sleep(self.settings.watch.poll_s)
        challenger = folder / "challenger"
        self._step(folder, "retune", "loop", "retune", str(champion), "--labels", str(labels),
                   "--out", str(challenger), "--settings", str(self.settings_file),
                   *watched.overrides)  # fmt: skip
        code = self._step(folder, "gate", "loop", "gate", str(champion), str(challenger),
                          "--settings", str(self.settings_file), allowed=(0, 3))  # fmt: skip
        report = json.loads((challenger / "gate" / "gate.json").read_text())
        for slice_name, part in report["slices"].items():
            for metric, difference in part["metrics"].items():
                self.gain.labels(model, slice_name, metric).set(difference["gain"])
        result = {"labels": have, "champion": str(champion), "challenger": str(challenger),
                  "gate": report["decision"], "reasons": report["reasons"]}  # fmt: skip
        if code == 3:
            return {**result, "outcome": "rejected"}
        reach = ["--model", model, "--registry", watched.registry, "--daemon", watched.daemon]
        if watched.proxy:
            reach += ["--proxy", watched.proxy]
        if self.settings.watch.promote == "canary" and watched.proxy:
            canary = ["--canary", str(watched.canary_share)]
            if watched.canary_upstream:
                canary += ["--upstream", watched.canary_upstream]
            if watched.canary_served_as:
                canary += ["--served-as", watched.canary_served_as]
            self._step(folder, "promote", "loop", "promote", str(challenger), *reach, *canary)
            self.canary_share.labels(model).set(watched.canary_share)
            return {**result, "outcome": "canary"}
        self._step(folder, "promote", "loop", "promote", str(challenger), *reach)
        self.canary_share.labels(model).set(0)
        return {**result, "outcome": "promoted"}

    def _champion(self, model: str, watched: WatchedModel) -> Path:
        serving = Registry(Path(watched.registry), model).serving()
        if serving is not None:
            return Path(serving[1]["run"])
        if watched.champion is None:
            raise ValueError(
                f"watch.models.{model}.champion: the registry has no version of {model} yet; "
                "name the serving run"
            )
        return Path(watched.champion)

    def _step(self, folder: Path, name: str, *args: str, allowed: tuple[int, ...] = (0,)) -> int:
        """`omnitune ARGS` as a child process, its output in FOLDER/NAME.log."""
        command = [sys.executable, "-m", "omnitune", *args]
        with (folder / f"{name}.log").open("w") as log:
            log.write("$ omnitune " + " ".join(args) + "\n")
            log.flush()
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
        if code not in allowed:
            tail = (folder / f"{name}.log").read_text().strip().splitlines()[-1:]
            raise RuntimeError(f"omnitune {args[0]} {args[1]} exited {code}: {' '.join(tail)}")
        return code

    def rounds(self) -> list[dict[str, Any]]:
        path = self.workdir / "rounds.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def serve(watcher: Watcher) -> None:
    """Listen on watch.host:watch.port until SIGTERM/SIGINT; print the address first."""
    from prometheus_client import generate_latest

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: Any, kind: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            if self.path != "/alerts":
                return self._answer(404, {"error": f"no such endpoint: {self.path}"})
            length = int(self.headers.get("content-length") or 0)
            if length > 1 << 20:
                return self._answer(413, {"error": "webhook body larger than 1 MiB"})
            try:
                payload = json.loads(self.rfile.read(length) or b"null")
                return self._answer(200, watcher.receive(payload))
            except ValueError as exc:
                return self._answer(400, {"error": str(exc)})

        def do_GET(self) -> None:
            if self.path == "/metrics":
                return self._answer(200, generate_latest(watcher.registry), "text/plain")
            if self.path == "/healthz":
                return self._answer(200, {"status": "ok"})
            if self.path == "/v1/rounds":
                return self._answer(200, {"rounds": watcher.rounds()})
            return self._answer(404, {"error": f"no such endpoint: {self.path}"})

        def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per round
            pass

    section = watcher.settings.watch
    server = ThreadingHTTPServer((section.host, section.port), Handler)
    host, port = server.server_address[:2]
    print(
        f"omnitune loop watch: listening on http://{host}:{port}/alerts for "
        f"{', '.join(section.alerts)} on {', '.join(section.models) or 'no models'}",
        flush=True,
    )
    import signal

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        watcher.wait(timeout=5)
