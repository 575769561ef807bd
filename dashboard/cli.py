"""`omnitune dashboard`: launch the Streamlit app on 127.0.0.1 (standard library at import)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from omnitune.core.cli import with_example


def add_commands(commands: Any) -> None:
    """Add `omnitune dashboard` to `commands` (the top-level parser's subparsers)."""
    dashboard = commands.add_parser(
        "dashboard", help="the Streamlit health dashboard over the monitor daemon"
    )
    dashboard.add_argument(
        "--daemon",
        help="the monitor daemon's URL (default http://127.0.0.1:9108 unless only --prometheus "
        "is given)",
    )
    dashboard.add_argument(
        "--prometheus",
        help="a Prometheus server scraping the daemon: the time series then come from PromQL "
        "range queries",
    )
    dashboard.add_argument("--token", help="the daemon's bearer token, if it wants one")
    dashboard.add_argument("--runs", default="runs", help="folder of training runs")
    dashboard.add_argument(
        "--registry", default="registry", help="the loop's registry of served versions"
    )
    dashboard.add_argument("--port", type=int, default=8501)
    dashboard.add_argument("--host", default="127.0.0.1", help="bind address (loopback)")
    with_example(
        dashboard,
        "omnitune dashboard --daemon http://127.0.0.1:9108 --prometheus http://127.0.0.1:9090",
    )
    dashboard.set_defaults(handler=_dashboard)


def _dashboard(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("streamlit") is None:
        raise ModuleNotFoundError("streamlit", name="streamlit")
    app = Path(__file__).resolve().parent / "app.py"
    daemon = args.daemon or ("" if args.prometheus else "http://127.0.0.1:9108")
    env = dict(
        os.environ,
        OMNITUNE_DAEMON_URL=daemon,
        OMNITUNE_PROMETHEUS_URL=args.prometheus or "",
        OMNITUNE_RUNS_DIR=args.runs,
        OMNITUNE_REGISTRY_DIR=args.registry,
    )
    if args.token:
        env["OMNITUNE_DAEMON_TOKEN"] = args.token
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.address",
        args.host,
        "--server.port",
        str(args.port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        # An operator's view: no Deploy button or developer menu.
        "--client.toolbarMode",
        "viewer",
    ]
    sources = ", ".join(
        f"{name} {url}"
        for name, url in (("daemon", daemon), ("Prometheus", args.prometheus))
        if url
    )
    print(f"omnitune dashboard: http://{args.host}:{args.port} ({sources})", flush=True)
    # Become Streamlit (exec), so that a SIGTERM to this process stops the app itself.
    os.execve(sys.executable, command, env)
    return 0  # not reached
