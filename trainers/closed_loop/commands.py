"""`omnitune loop retune | gate | promote | rollback | versions`: the closed loop as commands.

Standard library only at import (the kernel builds every command tree on the monitor-only
install too); each handler imports what it runs."""

from __future__ import annotations

import argparse
from typing import Any

from omnitune.core.cli import accept_overrides, accept_token, help_of, with_example


def add_commands(commands: Any) -> None:
    loop = commands.add_parser(
        "loop", help="retune a served model on labelled captures, gate it, promote or roll back"
    )
    actions = loop.add_subparsers(dest="loop_command", metavar="ACTION")
    _add_retune(actions)
    _add_gate(actions)
    _add_registry_actions(actions)
    _add_watch(actions)
    loop.set_defaults(handler=help_of(loop))


def _add_retune(actions: Any) -> None:
    retune = actions.add_parser(
        "retune", help="train a challenger on labelled captures mixed with replayed data"
    )
    retune.add_argument("champion", help="the serving model's run folder")
    retune.add_argument(
        "--labels",
        required=True,
        help="an `omnitune monitor export` folder, or a daemon URL (with --model)",
    )
    retune.add_argument("--model", help="the monitored model's name (labels from a daemon URL)")
    accept_token(retune, "the daemon's bearer token (labels from a daemon URL)")
    retune.add_argument("--out", help="the challenger's run folder (default: CHAMPION-challenger)")
    retune.add_argument("--settings", help="YAML file with loop: and gate: sections")
    accept_overrides(
        retune,
        "omnitune loop retune runs/assistant --labels labels/assistant loop.replay_ratio=0.5 "
        "train.max_steps=40",
    )
    retune.set_defaults(handler=_retune, log_progress=True)


def _add_gate(actions: Any) -> None:
    gate = actions.add_parser(
        "gate", help="score champion and challenger example by example; exit 0 promote, 3 reject"
    )
    gate.add_argument("champion", help="the serving run folder")
    gate.add_argument("challenger", help="the candidate run folder")
    gate.add_argument(
        "--captures",
        help="held-out labelled captures (default: the split the challenger's retune named)",
    )
    gate.add_argument("--out", help="where gate.json and gate.md go (default: CHALLENGER/gate)")
    gate.add_argument("--settings", help="YAML file with a gate: section")
    accept_overrides(
        gate,
        "omnitune loop gate runs/assistant runs/assistant-challenger gate.min_gain=0.05",
    )
    gate.set_defaults(handler=_gate)


def _add_registry_actions(actions: Any) -> None:
    for name, text in (
        ("promote", "make a gated run the serving version (and give the daemon its reference)"),
        ("rollback", "serve the previous version again"),
        ("versions", "list a model's versions: which serves, how each got in"),
    ):
        action = actions.add_parser(name, help=text)
        if name == "promote":
            action.add_argument("run", help="the run folder to serve")
            action.add_argument("--model", required=True, help="the served model's name")
            action.add_argument(
                "--force", action="store_true", help="promote over a rejecting gate (recorded)"
            )
            action.add_argument(
                "--canary",
                type=float,
                metavar="SHARE",
                help="serve it as a canary to this share of calls (0-1) beside the serving "
                "version, through the proxy (--proxy); promote again without it to serve it",
            )
            action.add_argument("--upstream", help="the canary's server (http://HOST:PORT)")
            action.add_argument(
                "--served-as", help="the model name the upstream serves the canary's adapter as"
            )
        else:
            action.add_argument("model", help="the served model's name")
        action.add_argument(
            "--registry", default="registry", help="the registry folder (default: registry)"
        )
        if name != "versions":
            action.add_argument(
                "--daemon", help="the monitor daemon's URL: it reloads the reference"
            )
            action.add_argument(
                "--proxy", help="the recording proxy's URL: it starts or stops the canary"
            )
            accept_token(action, "the daemon's (and proxy's) bearer token")
        else:
            action.add_argument("--json", action="store_true", help="print versions.json")
        with_example(
            action,
            {
                "promote": "omnitune loop promote runs/assistant-challenger --model assistant "
                "--daemon http://127.0.0.1:9108  # token from $OMNITUNE_TOKEN",
                "rollback": "omnitune loop rollback assistant --daemon http://127.0.0.1:9108",
                "versions": "omnitune loop versions assistant",
            }[name],
        )
        action.set_defaults(
            handler={"promote": _promote, "rollback": _rollback, "versions": _versions}[name]
        )


def _add_watch(actions: Any) -> None:
    watch = actions.add_parser(
        "watch", help="run retune, gate and a canary when Alertmanager reports drift (webhook)"
    )
    watch.add_argument(
        "--settings", required=True, help="YAML with watch: (models, daemon, proxy), loop:, gate:"
    )
    accept_overrides(
        watch, "omnitune loop watch --settings configs/loop/watch.yaml watch.port=9110"
    )
    watch.set_defaults(handler=_watch, log_progress=True)


def _retune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from omnitune.trainers.closed_loop.labels import export_from_daemon
    from omnitune.trainers.closed_loop.retune import plan_retune
    from omnitune.trainers.closed_loop.settings import load_settings, split_overrides

    ours, run_overrides = split_overrides(args.overrides)
    settings = load_settings(args.settings, ours)
    champion = Path(args.champion)
    out = Path(args.out) if args.out else None
    labels = args.labels
    if "://" in labels:
        target = (out or champion.parent / f"{champion.name}-labels") / "labels"
        labels = str(export_from_daemon(labels, args.model, target, args.token))
    plan = plan_retune(champion, Path(labels), settings, run_overrides, out)
    replay = (
        f"{plan.mix.replayed} replayed from the champion's data ({plan.mix.replay_available} there)"
        if settings.loop.replay_ratio > 0
        else "no replay (loop.replay_ratio=0)"
    )
    print(
        f"{plan.run_dir}: {plan.mix.labelled} labelled rows + {replay}; gate slice "
        f"{plan.held_out} ({plan.held_out_rows} rows); provenance in {plan.mix.provenance}"
    )
    from omnitune.trainers.commands import describe_result
    from omnitune.trainers.loop import train

    result = train(plan.config)
    if result.main_process:
        print(describe_result(result))
    return 0


def _gate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from omnitune.trainers.closed_loop.gate import (
        GATE_DIR,
        REJECTED,
        plain_table,
        run_gate,
        table_rows,
        write_report,
    )
    from omnitune.trainers.closed_loop.settings import load_settings, split_overrides

    ours, rest = split_overrides(args.overrides)
    if rest:
        from omnitune.core.errors import UsageError

        raise UsageError(f"{rest[0]}: the gate takes gate.* settings only")
    settings = load_settings(args.settings, ours).gate
    challenger = Path(args.challenger)
    report = run_gate(Path(args.champion), challenger, args.captures, settings)
    as_json, _ = write_report(report, Path(args.out) if args.out else challenger / GATE_DIR)
    print(plain_table(table_rows(report)))
    for reason in report.reasons:
        print(f"  {reason}")
    print(f"{report.decision}: report in {as_json.parent}/gate.md")
    return 0 if report.promoted else REJECTED


def _daemon(args: argparse.Namespace) -> Any:
    if not getattr(args, "daemon", None):
        return None
    from omnitune.trainers.closed_loop.services import Daemon

    return Daemon(args.daemon, args.token)


def _proxy(args: argparse.Namespace) -> Any:
    if not getattr(args, "proxy", None):
        return None
    from omnitune.trainers.closed_loop.services import Proxy

    return Proxy(args.proxy, args.token)


def _promote(args: argparse.Namespace) -> int:
    from pathlib import Path

    from omnitune.core.errors import UsageError
    from omnitune.trainers.closed_loop.registry import Canary, Registry, promote

    canary = None
    if args.canary is not None:
        if not 0.0 <= args.canary <= 1.0:
            raise UsageError(f"--canary: {args.canary} is not a share from 0 to 1")
        if args.proxy and not (args.upstream or args.served_as):
            raise UsageError("--upstream: a canary needs its server (or --served-as NAME)")
        canary = Canary(args.canary, args.upstream, args.served_as)
    registry = Registry(Path(args.registry), args.model)
    version, how = promote(
        registry, Path(args.run), _daemon(args), args.force, canary, _proxy(args)
    )
    if canary is not None:
        routed = f"; {args.proxy} routes {canary.share:.0%} of calls to it" if args.proxy else ""
        print(f"{args.model} {version} is the canary: {args.run} ({how}){routed}")
        return 0
    told = f"; {args.daemon} measures drift against its reference" if args.daemon else ""
    print(f"{args.model} {version} serves {args.run} ({how}){told}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from pathlib import Path

    from omnitune.trainers.closed_loop.registry import Registry, rollback

    registry = Registry(Path(args.registry), args.model)
    canary = registry.state().get("canary")
    old, new = rollback(registry, _daemon(args), _proxy(args))
    if canary:
        print(f"{args.model}: canary {old} withdrawn; {new} serves every call")
        return 0
    told = f"; {args.daemon} measures drift against its reference" if args.daemon else ""
    print(f"{args.model}: rolled back from {old} to {new}{told}")
    return 0


def _versions(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from omnitune.trainers.closed_loop.gate import shown
    from omnitune.trainers.closed_loop.registry import Registry

    state = Registry(Path(args.registry), args.model).state()
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    if not state["versions"]:
        print(f"{args.model}: no versions in {args.registry}")
        return 0
    for name, version in state["versions"].items():
        if name == state["serving"]:
            mark = "*"
        elif name == state.get("canary"):
            mark = "~"
        else:
            mark = " "
        stamp = version.get("promoted_at") or version.get("canary_since")
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(stamp))
        print(f"{mark} {name}  {when} UTC  {version['how']:<28}  {shown(version['run'])}")
    print("(* serves; ~ canary)")
    return 0


def _watch(args: argparse.Namespace) -> int:
    from omnitune.trainers.closed_loop.settings import load_settings
    from omnitune.trainers.closed_loop.watch import Watcher, serve

    settings = load_settings(args.settings, args.overrides)
    serve(Watcher(settings))
    return 0
