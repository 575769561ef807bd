"""`omnitune monitor serve | replay | status`: the daemon's command line.

Registered into the one `omnitune` command by `omnitune.core.cli`; standard library only at
import time, like the rest of the CLI.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from typing import Any

from omnitune.core.cli import accept_overrides, accept_token, help_of, with_example


def add_commands(commands: Any) -> None:
    """Add `omnitune monitor ...` to `commands` (the top-level parser's subparsers)."""
    monitor = commands.add_parser("monitor", help="the post-deployment monitor daemon")
    actions = monitor.add_subparsers(dest="monitor_command", metavar="ACTION")

    serve = actions.add_parser("serve", help="run the daemon (Prometheus /metrics, event API)")
    serve.add_argument("--config", required=True, help="monitor YAML config")
    serve.add_argument("--host", help="bind address (overrides server.host)")
    serve.add_argument("--port", type=int, help="port (overrides server.port; 0: any free)")
    accept_overrides(serve, "omnitune monitor serve --config configs/monitor.yaml server.port=9200")
    serve.set_defaults(handler=_serve)

    check = actions.add_parser(
        "check",
        help="validate a monitor config (exit 2 and the bad field's path if invalid)",
    )
    check.add_argument("--config", required=True, help="monitor YAML config")
    accept_overrides(
        check, "omnitune monitor check --config configs/monitor.yaml drift.alpha=0.001"
    )
    check.set_defaults(handler=_check)

    proxy = actions.add_parser(
        "proxy",
        help="a recording reverse proxy in front of an OpenAI-compatible server",
        description="Forward every request to the upstream unchanged and record one event per "
        "chat completion, completion and transcription in the daemon.",
    )
    proxy.add_argument("--config", required=True, help="monitor YAML config (its proxy section)")
    proxy.add_argument("--upstream", help="the upstream server's URL (overrides proxy.upstream)")
    proxy.add_argument("--host", help="bind address (overrides proxy.host)")
    proxy.add_argument("--port", type=int, help="port (overrides proxy.port; 0: any free)")
    accept_overrides(
        proxy,
        "omnitune monitor proxy --config configs/monitor.yaml "
        "--upstream http://127.0.0.1:8000 proxy.port=9109",
    )
    proxy.set_defaults(handler=_proxy)

    calibrate = actions.add_parser(
        "calibrate",
        help="calibrate the sequential drift thresholds ahead of serving (cached)",
        description="Simulate each model's drift statistics from its reference and set their "
        "thresholds so that the model's false alarms come every drift.expected_run_events "
        "events; the result is cached next to the reference, where `monitor serve` finds it.",
    )
    calibrate.add_argument("--config", required=True, help="monitor YAML config")
    calibrate.add_argument(
        "--force", action="store_true", help="calibrate again even when a cached result fits"
    )
    accept_overrides(
        calibrate,
        "omnitune monitor calibrate --config configs/monitor.yaml drift.expected_run_events=50000",
    )
    calibrate.set_defaults(handler=_calibrate)

    _add_client_commands(actions)
    _add_label_commands(actions)
    monitor.set_defaults(handler=help_of(monitor))


def _add_client_commands(actions: Any) -> None:
    replay = actions.add_parser("replay", help="send recorded events (JSONL) to a daemon")
    replay.add_argument("file", help="JSONL file of events")
    replay.add_argument("--url", default="http://127.0.0.1:9108", help="the daemon's URL")
    accept_token(replay, "bearer token, if the daemon wants one")
    replay.add_argument(
        "--rate", type=float, default=0.0, help="events per second (0: as fast as possible)"
    )
    replay.add_argument("--batch-size", type=int, default=500)
    replay.add_argument(
        "--now",
        action="store_true",
        help="stamp each event with the time it is sent instead of its recorded ts (a demo or "
        "load test that should look live on the dashboard)",
    )
    with_example(replay, "omnitune monitor replay events.jsonl --rate 200 --now")
    replay.set_defaults(handler=_replay)

    status = actions.add_parser("status", help="a daemon's drift, safety and latency state")
    status.add_argument("--url", default="http://127.0.0.1:9108", help="the daemon's URL")
    accept_token(status, "bearer token, if the daemon wants one")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    with_example(status, "omnitune monitor status --url http://127.0.0.1:9108 --json")
    status.set_defaults(handler=_status)


def _add_label_commands(actions: Any) -> None:
    export = actions.add_parser(
        "export",
        help="write a model's labelled events as training data (SFT rows, DPO pairs, KTO rows)",
    )
    export.add_argument("model", help="the monitored model's name")
    export.add_argument("--out", required=True, help="folder to write (created if missing)")
    export.add_argument("--url", default="http://127.0.0.1:9108", help="the daemon's URL")
    accept_token(export, "bearer token, if the daemon wants one")
    export.add_argument(
        "--held-out", type=float, default=0.1, help="share of requests in test.jsonl (0.1)"
    )
    export.add_argument("--seed", type=int, default=0, help="seed of the split by request")
    with_example(export, "omnitune monitor export assistant --out data/assistant-labels")
    export.set_defaults(handler=_export)

    review = actions.add_parser(
        "review", help="list a model's review queue: unlabelled flagged and captured events"
    )
    review.add_argument("model", help="the monitored model's name")
    review.add_argument("--limit", type=int, default=10, help="events to list (10)")
    review.add_argument("--url", default="http://127.0.0.1:9108", help="the daemon's URL")
    accept_token(review, "bearer token, if the daemon wants one")
    with_example(review, "omnitune monitor review assistant --limit 5")
    review.set_defaults(handler=_review)

    label = actions.add_parser(
        "label", help="label a model's review queue with a teacher model (OpenAI-compatible)"
    )
    label.add_argument("--teacher", required=True, help="the teacher endpoint's base URL")
    label.add_argument("--model", required=True, help="the monitored model whose queue to label")
    label.add_argument(
        "--teacher-model", help="the model id to ask at the teacher endpoint (default: --model)"
    )
    label.add_argument("--teacher-key", help="the teacher endpoint's API key, if it wants one")
    label.add_argument("--url", default="http://127.0.0.1:9108", help="the daemon's URL")
    accept_token(label, "the daemon's bearer token, if it wants one")
    label.add_argument("--limit", type=int, help="stop after this many labels")
    label.add_argument(
        "--rate", type=float, default=0.0, help="teacher calls per second at most (0: no limit)"
    )
    with_example(
        label, "omnitune monitor label --teacher http://127.0.0.1:8000 --model assistant --rate 2"
    )
    label.set_defaults(handler=_label)


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from omnitune.core.errors import UsageError
    from omnitune.monitor.daemon_api import DaemonApi
    from omnitune.monitor.label_export import export_labels

    if not 0.0 <= args.held_out < 1.0:
        raise UsageError(f"--held-out: {args.held_out} is not in [0, 1)")
    api = DaemonApi(args.url, args.token)
    result = export_labels(api, args.model, Path(args.out), args.held_out, args.seed)
    print(
        f"{args.model}: {result.events} labelled events"
        + (f" ({result.unusable} with nothing to train on)" if result.unusable else "")
    )
    for kind, counts in result.rows.items():
        written = ", ".join(str(path) for path in result.files[kind].values())
        print(f"  {kind}: {counts['train']} train, {counts['test']} test ({written})")
    return 0


def _review(args: argparse.Namespace) -> int:
    from omnitune.monitor.daemon_api import DaemonApi

    queue = DaemonApi(args.url, args.token).get("/v1/review", model=args.model, limit=args.limit)
    shown = queue["events"]
    print(f"{args.model}: {queue['queued']} events wait for review; the first {len(shown)}:")
    for event in shown:
        raw = event.get("input")
        text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)
        why = event["reason"] + (f" ({', '.join(event['flags'])})" if event["flags"] else "")
        copies = f" x{event['duplicates']}" if event["duplicates"] > 1 else ""
        print(
            f"  {event['request_id']}  {why}{copies}: {_short(text)!r} -> "
            f"{_short(event.get('output') or '')!r}"
        )
    return 0


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _label(args: argparse.Namespace) -> int:
    from omnitune.monitor.daemon_api import DaemonApi
    from omnitune.monitor.teacher import Teacher, label_queue

    teacher = Teacher(args.teacher, args.teacher_model or args.model, args.teacher_key)
    daemon = DaemonApi(args.url, args.token)
    run = label_queue(daemon, teacher, args.model, limit=args.limit, rate=args.rate)
    for request_id, why in run.skipped.items():
        print(f"skipped {request_id}: {why}", file=sys.stderr)
    skipped = f"; skipped {len(run.skipped)} (left for a person)" if run.skipped else ""
    print(
        f"{args.model}: {run.labelled} labelled by teacher:{teacher.model} in {run.seconds:.1f} s "
        f"({run.agreed} agreed with the model's answer){skipped}"
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from omnitune.monitor.config import load_monitor_config

    config = load_monitor_config(args.config, list(args.overrides))
    models = ", ".join(f"{name} ({model.modality})" for name, model in config.models.items())
    print(
        f"{args.config}: ok (models {models}; listens on {config.server.host}:"
        f"{config.server.port}; {'token required' if config.server.token else 'no token'})"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from omnitune.monitor.config import load_monitor_config

    overrides = list(args.overrides)
    if args.host is not None:
        overrides.append(f"server.host={args.host}")
    if args.port is not None:
        overrides.append(f"server.port={args.port}")
    config = load_monitor_config(args.config, overrides)
    from omnitune.monitor.server import serve

    return serve(config)


def _proxy(args: argparse.Namespace) -> int:
    from omnitune.monitor.config import load_monitor_config

    overrides = list(args.overrides)
    for flag, key in (
        ("upstream", "proxy.upstream"),
        ("host", "proxy.host"),
        ("port", "proxy.port"),
    ):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    config = load_monitor_config(args.config, overrides)
    from omnitune.monitor.proxy import serve_proxy

    return serve_proxy(config)


def _calibrate(args: argparse.Namespace) -> int:
    from omnitune.monitor.calibration import HORIZON_ERTS, RUNS, cache_path
    from omnitune.monitor.config import load_monitor_config
    from omnitune.monitor.reference import load_reference

    config = load_monitor_config(args.config, list(args.overrides))
    from omnitune.monitor.windows import calibrate_model, online_statistics

    drift = config.drift
    print(
        f"ERT {drift.run_events():,} events, windows {drift.windows}, "
        f"blocks of {drift.block_events}"
    )
    for name, section in config.models.items():
        if section.reference is None:
            print(f"{name}: no reference, nothing to calibrate")
            continue
        reference = load_reference(section.reference, section.modality, name)
        features = section.features or reference.names()
        path = cache_path(reference.source)
        if args.force and path is not None:
            path.unlink(missing_ok=True)
        statistics = online_statistics(reference, features)
        calibration, cached = calibrate_model(reference, statistics, drift)
        how = "from the cache, calibrated" if cached else "calibrated"
        print(
            f"{name}: {len(features)} features, {how} in {calibration.seconds:.2f} s; simulated "
            f"mean run {calibration.simulated_run_events:,.0f} events "
            f"({calibration.simulated_alarms} of {RUNS} runs alarmed within {HORIZON_ERTS} ERTs); "
            f"cache {path or 'none'}"
        )
        for feature, limits in sorted(calibration.thresholds.items()):
            shown = ", ".join(f"w{w} {t:.4g}" for w, t in zip(drift.windows, limits, strict=True))
            print(f"  {feature:<24} {shown}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from omnitune.core.errors import UsageError
    from omnitune.modalities.base import read_records
    from omnitune.monitor.client import Client

    if args.rate < 0:
        raise UsageError("--rate must be 0 (as fast as possible) or a positive rate")
    lines = read_records(args.file)
    first = next(lines, None)  # a missing file raises DataError here, before any connection
    path = args.file
    client = Client(args.url, args.token, batch_size=args.batch_size, max_queue=1_000_000)
    start = time.monotonic()
    read = bad = 0
    for line_number, event, problem in itertools.chain([first] if first else [], lines):
        if event is None:
            print(f"{path}:{line_number}: {problem}, skipped", file=sys.stderr)
            bad += 1
            continue
        if args.now:
            event["ts"] = time.time()
        client.log_event(event)
        read += 1
        if args.rate > 0:
            ahead = read / args.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    client.flush(timeout_s=60)
    client.close()
    stats = client.stats()
    elapsed = time.monotonic() - start
    print(
        f"{path}: sent {stats['sent']} of {read} events in {elapsed:.2f} s "
        f"({stats['sent'] / max(elapsed, 1e-9):.0f}/s); dropped {stats['dropped']}, "
        f"invalid lines {bad}"
    )
    return 0 if stats["sent"] == read else 1


def _status(args: argparse.Namespace) -> int:
    from omnitune.monitor.daemon_api import DaemonApi

    status = DaemonApi(args.url, args.token, timeout_s=10).get("/v1/status")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(format_status(status))
    return 0


def format_status(status: dict[str, Any]) -> str:
    lines = [f"store: {status['store']['events']} events in {status['store']['path']}"]
    for name, model in status["models"].items():
        drifted = [f for f, d in model["drift"].items() if d["decision"]["drifted"]]
        calibration = model.get("calibration")
        method = (
            f"sequential, ERT {calibration['expected_run_events']:,} events"
            if calibration
            else model.get("drift_method", "windowed")
        )
        lines.append(
            f"{name} ({model['modality']}): {model['events_total']:.0f} events, window "
            f"{model['window']}, drift ({method}): {', '.join(drifted) if drifted else 'none'}"
        )
        for feature, drift in sorted(model["drift"].items()):
            decision = drift["decision"]
            state = "  DRIFT" if decision["drifted"] else ""
            if decision.get("warning") and not decision["drifted"]:
                state = "  warning (below the materiality gate)"
            if state and decision.get("fired_score") is not None:
                state += (
                    f": fired at {decision['test']} {decision['fired_score']:.4g} > "
                    f"{decision['fired_threshold']:.4g}"
                )
            if state and decision.get("delay_events") is not None:
                state += (
                    f", {decision['delay_events']} events / {decision['delay_s']:.3g} s"
                    " after the change"
                )
            lines.append(
                f"  {feature:<24} {decision['test']} {decision['score']:.4g} "
                f"(threshold {decision['threshold']:.4g}){state}"
            )
        for adapter, latency in model["latency"].items():
            lines.append(
                f"  latency[{adapter or '-'}]: p50 {latency['p50']:.4g} s, p95 "
                f"{latency['p95']:.4g} s, p99 {latency['p99']:.4g} s over {latency['count']}"
            )
        if model["safety"]:
            flags = ", ".join(f"{k} {v:.0f}" for k, v in sorted(model["safety"].items()))
            lines.append(f"  safety flags: {flags}")
    alerts = status["alerts"]
    lines.append(f"alerts: {len(alerts)}")
    for alert in alerts:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(alert["since"]))
        lines.append(f"  [{alert['kind']}] {alert['model']}: {alert['message']} (since {since})")
    return "\n".join(lines)
