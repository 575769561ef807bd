"""Run `omnitune` commands inside the demo's own process.

The demo runs about 40 commands that load torch and transformers; as separate processes, each
one paid for the interpreter and those imports (about 5 s on 2 cores, twice that beside the
test suite), which was half of the demo's time. `run_command` calls the same function the
`omnitune` console script calls (`omnitune.core.cli.main`) with the same arguments, and
passes every line the command writes, on stdout, stderr or through logging, to a callback as
it comes, so the demo can show training progress live and keep the rest in its transcript.

What one process keeps between commands is reset after each: the `omnitune` logger's level
(train raises it to INFO for its progress lines) and torch's thread count (train sets it from
`train.num_threads`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Callable, Sequence

LineSink = Callable[[str], None]


class _LineWriter(io.TextIOBase):
    """A text stream that hands each complete line to `sink` (a carriage return ends a line
    too, as a progress bar's redraw does on a terminal)."""

    def __init__(self, sink: LineSink) -> None:
        self._sink = sink
        self._partial = ""
        # The sink prints: it runs with the streams the command's output was redirected from.
        self._stdout, self._stderr = sys.stdout, sys.stderr

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self._partial += text.replace("\r\n", "\n").replace("\r", "\n")
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def _emit(self, line: str) -> None:
        with contextlib.redirect_stdout(self._stdout), contextlib.redirect_stderr(self._stderr):
            self._sink(line)

    def flush(self) -> None:
        pass

    def close_line(self) -> None:
        if self._partial:
            self._emit(self._partial)
            self._partial = ""


class _CurrentStderr(io.TextIOBase):
    """Whatever `sys.stderr` is at the moment of writing: the logging handler installed once
    follows each command's redirection."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _install_logging_once() -> None:
    """The handler `omnitune.core.cli` would install (basicConfig does nothing once the root
    logger has one), writing to the current stderr."""
    root = logging.getLogger()
    if not any(getattr(h, "_omnitune_demo", False) for h in root.handlers):
        handler = logging.StreamHandler(_CurrentStderr())
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._omnitune_demo = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.setLevel(logging.WARNING)


def run_command(args: Sequence[str], sink: LineSink) -> int:
    """`omnitune ARGS` in this process; its exit status, each output line passed to `sink`."""
    from omnitune.core.cli import main

    _install_logging_once()
    threads = _torch_threads()
    writer = _LineWriter(sink)
    try:
        with contextlib.redirect_stdout(writer), contextlib.redirect_stderr(writer):
            try:
                return main(list(args))
            except SystemExit as exc:  # argparse's usage errors
                return exc.code if isinstance(exc.code, int) else 2
            finally:
                writer.close_line()
    finally:
        logging.getLogger("omnitune").setLevel(logging.NOTSET)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)


def _torch_threads() -> int | None:
    if "torch" not in sys.modules:
        return None
    return sys.modules["torch"].get_num_threads()
