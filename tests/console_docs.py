"""The console sessions of README.md and docs/*.md, run as tests (collected by Sybil).

Each ```console block is a transcript: `$ command` lines (a trailing `\\` continues one),
each followed by the output the doc shows. Sybil finds the blocks and runs them in document
order; every document gets a fresh copy of the repository (its tracked and untracked, not
ignored, files) with the project's virtualenv first on PATH, so a doc cannot lean on what an
earlier doc or the developer's tree left behind. A command ending in `&` starts in the
background (its shown lines are waited for; a `--port N` is waited for until it accepts
connections) and runs until the document ends or a `$ kill %N` line stops it (jobs numbered as
a shell numbers them), as in one terminal read top to bottom. The copy's `.venv` is the
project's own (a link), as a reader has it after `make demo`. The sessions' `omnitune` is a
shim that runs each command as a process forked from the tests' fork server, torch already
imported (tests/forkserver.py; OMNITUNE_TEST_FRESH_PROCESSES=1 runs the console script itself).

What is checked, line by line:
- every shown line must appear in the output, in the shown order; output lines the doc leaves
  out are allowed (a doc shows what matters: the evaluations, not every progress line);
- `...` inside a line stands for any text; a line of `...` alone says lines were left out;
- log lines are compared without the time stamp they start with (the docs leave it out);
- runs of spaces inside a line count as one (a table's columns are as wide as its values);
- numbers are compared with a tolerance: integers within 10% (so small counts are exact),
  decimals within 10% or 0.05; numbers that measure the machine rather than the software
  (seconds, rates, ports, timestamps, hashes, ids) are not compared;
- a range `0.26–0.35` (an en dash) stands for a figure that comes out of training and so
  depends on the CPU's kernels (AVX-512 or AVX2 sum in another order, and a tiny model's run
  drifts from there): the printed number must lie within it, bounds included;
- a command that exits non-zero fails the test unless the doc shows its error.

A block fenced as ```yaml file=NAME is written to NAME in the copy when the doc reaches it (the
file the text asks the reader to write). `export NAME=VALUE ...` lines set the environment of
the commands after them.

`<!-- skip: next "why" -->` before a block (Sybil's own directive) skips it, with the reason
shown in the test report. A document with `<!-- console: after make demo -->` gets a copy of
the runs of the demo that the test session ran once (tests/test_demo.py), as a reader who
ran `make demo` first has them.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import forkserver

REPO = Path(__file__).resolve().parent.parent
COMMAND_TIMEOUT_S = 600
BACKGROUND_TIMEOUT_S = 120
#: Record mode (for measuring the docs' figures, not for CI): OMNITUNE_DOCS_RECORD=FILE runs
#: every session without failing on what it prints and appends each command's shown lines and
#: actual output to FILE as JSON lines; scripts/docs_figures.py compares such recordings.
RECORD = os.environ.get("OMNITUNE_DOCS_RECORD")

#: Whole tokens that vary from run to run, replaced by a wildcard before comparing.
VOLATILE = [
    r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?",  # timestamps
    r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b",  # uuids
    r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b",  # hashes, ids
    r"(?<=127\.0\.0\.1:)\d+",  # ports
    r"(?<=--port )\d+",
    r"\b1[789]\d{8}(?:\.\d+)?\b",  # unix times
    r"-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?(?= ?(?:s|ms|/s|samples/s|utt/s|MB|kB|MiB|GiB|%\))\b)",
    r"(?<=\()\d[\d,]*(?=/s\))",  # "(972/s)"
]
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")
#: `0.26–0.35` (an en dash between two numbers): a figure that comes out of training, whose
#: value depends on the CPU's kernels; the output's number must lie within the range.
RANGE = re.compile(NUMBER.pattern + "–" + NUMBER.pattern)
WILDCARD = "\x00"


@dataclass
class Command:
    text: str
    expected: list[str] = field(default_factory=list)

    @property
    def background(self) -> bool:
        return re.search(r"(?<!&)&\s*(#.*)?$", self.text) is not None


def parse_session(block: str) -> list[Command]:
    """The commands of a console block with the output lines shown after each."""
    commands: list[Command] = []
    continuing = False
    for line in block.splitlines():
        if continuing:
            commands[-1].text += "\n" + line
            continuing = line.endswith("\\")
        elif line.startswith("$ "):
            commands.append(Command(line[2:]))
            continuing = line.endswith("\\")
        elif commands:
            commands[-1].expected.append(line)
    return commands


#: A number that follows a name ending in "seconds", "per_second" or "_s" (generation_seconds
#: 0.07, 'loop_seconds': 0.21, "latency_s": 0.14) measures the machine too.
TIMING_FIELD = re.compile(r"((?:seconds|per_second|_s)['\"]?:? )-?\d[\d.]*(?:e[-+]?\d+)?")


def _pattern(line: str) -> tuple[re.Pattern[str], list[str]]:
    """A regex for one shown line, and the numbers it shows in order (compared afterwards)."""
    masked = TIMING_FIELD.sub(lambda m: m.group(1) + WILDCARD, line.rstrip())
    for volatile in VOLATILE:
        masked = re.sub(volatile, WILDCARD, masked)
    parts, numbers, position = [], [], 0
    tokens = r"\.\.\.|" + WILDCARD + "|" + RANGE.pattern + "|" + NUMBER.pattern
    for token in re.finditer(tokens, masked):
        parts.append(re.escape(masked[position : token.start()]))
        if token.group() in ("...", WILDCARD):
            parts.append(".*?")
        elif "–" in token.group():
            parts.append(f"({NUMBER.pattern}|nan|inf)")
            numbers.append(token.group())
        else:
            parts.append(f"({NUMBER.pattern}|nan|inf)")
            numbers.append(token.group())
        position = token.end()
    parts.append(re.escape(masked[position:]))
    return re.compile("".join(parts) + r"\s*"), numbers


def _close(shown: str, got: str) -> bool:
    value = float(got.replace(",", ""))
    if math.isnan(value):
        return False
    if RECORD:  # any figure will do: the recording is what is compared
        return True
    if "–" in shown:
        low, high = (float(n.replace(",", "")) for n in shown.split("–"))
        return low <= value <= high
    expected = float(shown.replace(",", ""))
    if "." in shown or "e" in shown:
        return abs(value - expected) <= max(0.1 * abs(expected), 0.05)
    return abs(value - expected) <= 0.1 * abs(expected)


def line_matches(shown: str, actual: str) -> bool:
    """Whether `actual` is the line the doc shows; runs of spaces count as one (a table's
    columns are as wide as the widest value of that run)."""
    pattern, numbers = _pattern(re.sub(r"(?<=\S) {2,}", " ", shown))
    found = pattern.fullmatch(re.sub(r"(?<=\S) {2,}", " ", actual.rstrip()))
    if found is None:
        return False
    return all(_close(s, g) for s, g in zip(numbers, found.groups(), strict=True))


#: The time stamp that starts a log line; the docs show log lines without it.
LOG_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def missing_lines(expected: list[str], output: str) -> list[str]:
    """The shown lines not found in order in `output` (empty: it matches)."""
    actual = [LOG_TIME.sub("", line) for line in output.splitlines()]
    position, missing = 0, []
    for line in expected:
        if not line.strip() or line.strip() == "...":
            continue
        for index in range(position, len(actual)):
            if line_matches(line, actual[index]):
                position = index + 1
                break
        else:
            missing.append(line)
    return missing


class ConsoleSession:
    """A document's shell: its copy of the repository, environment and background jobs."""

    def __init__(self, document: str) -> None:
        self.document = document
        self.root = Path(tempfile.mkdtemp(prefix="omnitune-docs-")) / "repo"
        copy_repository(REPO, self.root)
        venv_bin = Path(sys.executable).parent
        (self.root / ".venv").symlink_to(venv_bin.parent)  # set up, as after `make demo`
        stamp = venv_bin.parent / ".omnitune-installed"
        if stamp.exists():  # `make` in the copy must see the set-up as done, not reinstall
            older = stamp.stat().st_mtime - 1
            for name in ("pyproject.toml", "constraints.txt"):
                os.utime(self.root / name, (older, older))
        path = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"
        if not forkserver.fresh_processes():  # `omnitune` forks from a server with torch loaded
            shims = self.root.parent / "bin"
            forkserver.write_shim(shims, forkserver.shared())
            path = f"{shims}{os.pathsep}{path}"
        self.env = {
            **os.environ,
            "PATH": path,
            "VIRTUAL_ENV": str(venv_bin.parent),
            "HF_HUB_OFFLINE": "1",
            "COLUMNS": "100",
            "NO_COLOR": "1",
            "OMNITUNE_CACHE": str(self.root.parent / "cache"),
        }
        self.jobs: dict[int, subprocess.Popen] = {}  # as a shell numbers them: %1, %2, ...
        self.started = itertools.count(1)  # every background command gets its own log

    def run_block(self, block: str) -> None:
        for command in parse_session(block):
            jobs = re.fullmatch(r"kill((?: %\d+)+)\s*(#.*)?", command.text.strip())
            if command.text.startswith("export "):
                self._export(command.text)
            elif jobs:
                for number in jobs.group(1).split():
                    self._stop(self.jobs.pop(int(number[1:])))
            elif command.background:
                self._start(command)
            else:
                self._run(command)

    def _export(self, line: str) -> None:
        """Apply an `export` line to the commands after it, expanded by bash as typed."""
        dump = subprocess.run(
            ["bash", "-c", f"{line}\nenv -0"],  # on its own line: a comment ends the export
            cwd=self.root,
            env=self.env,
            capture_output=True,
            check=True,
        ).stdout
        self.env = dict(entry.split("=", 1) for entry in dump.decode().split("\0") if "=" in entry)

    def _run(self, command: Command) -> None:
        result = subprocess.run(
            ["bash", "-c", command.text],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        output = result.stdout
        shows_error = any("error" in line for line in command.expected)
        if RECORD:
            self._record(command, output, result.returncode)
            return
        if result.returncode != 0 and not shows_error:
            raise AssertionError(
                f"{self.document}: `{command.text}` exited {result.returncode}:\n{output[-4000:]}"
            )
        self._check(command, output)

    def _start(self, command: Command) -> None:
        log = self.root.parent / f"background-{next(self.started)}.log"
        foreground = re.sub(r"&\s*(#.*)?$", "", command.text).strip()
        process = subprocess.Popen(
            ["bash", "-c", f"exec {foreground}"],
            cwd=self.root,
            env=self.env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.jobs[max(self.jobs, default=0) + 1] = process
        deadline = time.monotonic() + BACKGROUND_TIMEOUT_S
        port = re.search(r"(?:--port[ =]|listen-address=[\d.]+:)(\d+)", command.text)
        while time.monotonic() < deadline:
            output = log.read_text(errors="replace")
            ready = not missing_lines(command.expected, output)
            if ready and port is not None:
                ready = _accepts(int(port.group(1)))
            if ready:
                if RECORD:
                    self._record(command, output, None)
                return
            if process.poll() is not None:
                break
            time.sleep(0.2)
        if RECORD:
            self._record(command, log.read_text(errors="replace"), process.poll())
            return
        self._check(command, log.read_text(errors="replace"))
        raise AssertionError(f"{self.document}: `{command.text}` did not get ready:\n{output}")

    def _record(self, command: Command, output: str, returncode: int | None) -> None:
        import json

        with open(RECORD, "a") as out:
            row = {
                "document": self.document,
                "command": command.text,
                "expected": command.expected,
                "output": output,
                "returncode": returncode,
            }
            out.write(json.dumps(row) + "\n")

    def _check(self, command: Command, output: str) -> None:
        missing = missing_lines(command.expected, output)
        if missing:
            raise AssertionError(
                f"{self.document}: `{command.text}` did not show, in this order:\n"
                + "\n".join(f"  {line}" for line in missing)
                + f"\n--- its output ---\n{output[-6000:]}"
            )

    @staticmethod
    def _stop(process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def close(self) -> None:
        for number in sorted(self.jobs, reverse=True):
            self._stop(self.jobs.pop(number))
        shutil.rmtree(self.root.parent, ignore_errors=True)


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def copy_repository(source: Path, destination: Path) -> None:
    """The files git would check out (tracked, and untracked but not ignored), as a fresh
    clone of the working tree would have them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=source,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        path = source / name
        if path.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def run_demo(tree: Path, *args: str, timeout: float = 2700) -> subprocess.CompletedProcess:
    """`make demo`'s script in `tree` (a copy of the repository) with the project's Python."""
    return subprocess.run(
        [sys.executable, "-m", "scripts.demo", *args],
        cwd=tree,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMNITUNE_CACHE": str(tree.parent / "cache")},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


#: A document whose sessions follow `make demo` says so with this comment.
AFTER_DEMO = "<!-- console: after make demo -->"


def _session(example: Any) -> ConsoleSession:
    session = example.namespace.get("console")
    if session is None:
        session = ConsoleSession(Path(example.path).name)
        if AFTER_DEMO in example.document.text:
            demo = example.namespace["demo_tree"]
            for folder in ("runs/demo", "runs/models"):
                shutil.copytree(demo / folder, session.root / folder, symlinks=True)
        example.namespace["console"] = session
    return session


def evaluate(example: Any) -> None:
    """Sybil evaluator of one console block."""
    _session(example).run_block(example.parsed)


class FileBlockParser:
    """Code blocks fenced as ```LANG file=PATH: the file a reader is asked to write, written
    into the document's copy when the doc reaches it (the commands after it read it)."""

    def __init__(self) -> None:
        from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

        self.lexer = FencedCodeBlockLexer(
            language=r".+", mapping={"language": "arguments", "source": "source"}
        )

    def __call__(self, document: Any) -> Any:
        for region in self.lexer(document):
            found = re.fullmatch(r"\S+\s+file=(\S+)", region.lexemes["arguments"])
            if found:
                region.parsed = (found.group(1), str(region.lexemes["source"]))
                region.evaluator = write_file
                yield region


def write_file(example: Any) -> None:
    name, text = example.parsed
    path = _session(example).root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def teardown(namespace: dict[str, Any]) -> None:
    if "console" in namespace:
        namespace["console"].close()
