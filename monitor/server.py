"""Running the daemon: the Monitor, its background threads and uvicorn, with a clean shutdown.

uvicorn turns SIGTERM and SIGINT into a graceful shutdown: it stops accepting connections,
finishes the requests in flight (each commits before it answers), and then the lifespan below
stops the evaluator and tail threads and closes the store.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from omnitune.monitor.config import MonitorConfig
from omnitune.monitor.engine import Monitor
from omnitune.monitor.store import StoreError, unusable

logger = logging.getLogger("omnitune.monitor")


class Evaluator(threading.Thread):
    """Re-evaluates the detectors every `drift.interval_s` and applies retention."""

    def __init__(self, monitor: Monitor) -> None:
        super().__init__(name="omnitune-evaluator", daemon=True)
        self.monitor = monitor
        self.stopping = threading.Event()

    def run(self) -> None:
        config = self.monitor.config
        since_retention = config.store.retention_interval_s
        while True:
            try:
                if since_retention >= config.store.retention_interval_s:
                    deleted = self.monitor.enforce_retention()
                    if deleted:
                        logger.info("retention deleted %d events", deleted)
                    since_retention = 0.0
                self.monitor.evaluate()
            except Exception:
                logger.exception("evaluation failed; retrying")
            if self.stopping.wait(config.drift.interval_s):
                return
            since_retention += config.drift.interval_s

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)


def build_app(config: MonitorConfig):  # -> Starlette
    """The ASGI app with its lifespan: threads start on startup and stop on shutdown."""
    from omnitune.monitor.app import create_app
    from omnitune.monitor.tail import TailThread

    try:
        monitor = Monitor(config)
    except sqlite3.DatabaseError as exc:  # a damaged page read while rebuilding the windows
        raise StoreError(unusable(config.store.path, str(exc))) from None
    threads: list = []

    @asynccontextmanager
    async def lifespan(app) -> AsyncIterator[None]:
        threads.append(Evaluator(monitor))
        if config.tail.paths:
            threads.append(TailThread(monitor, config.tail.paths, config.tail.poll_s))
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            for thread in threads:
                thread.stop()
            monitor.evaluate()
            monitor.close()
            logger.info("monitor stopped; store closed")

    app = create_app(monitor, lifespan)
    app.state.monitor = monitor
    return app


def bind(host: str, port: int, field: str = "server.port") -> tuple[socket.socket, str]:
    """A listening socket on (host, port; 0 picks a free one) and its URL. Connections queue
    from here on, before uvicorn starts accepting, so the printed URL is ready at once. A port
    already taken is a ConfigError naming `field` (exit 2), not a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        from omnitune.core.errors import ConfigError

        raise ConfigError(
            f"{field}: cannot listen on {host}:{port} ({exc.strerror}); is another process "
            "using it? Stop it, or pick another port (--port, 0 for a free one)"
        ) from None
    sock.listen(2048)
    bound, chosen = sock.getsockname()[:2]
    shown = f"[{bound}]" if family == socket.AF_INET6 else bound
    return sock, f"http://{shown}:{chosen}"


def serve(config: MonitorConfig) -> int:
    """Bind, print the address, and serve until SIGTERM/SIGINT."""
    import uvicorn

    app = build_app(config)
    sock, url = bind(config.server.host, config.server.port)
    print(
        f"omnitune monitor: listening on {url} "
        f"(store {config.store.path}, models {', '.join(config.models)})",
        flush=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
    )
    server.run(sockets=[sock])
    print("omnitune monitor: stopped", file=sys.stderr, flush=True)
    return 0
