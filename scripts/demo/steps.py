"""Finished `make demo` steps are reused while their inputs are unchanged.

A step names the files and folders it reads (configs, data, the models of earlier steps) and
the outputs it must leave. Its key is a hash of the omnitune source and pins, the step's
name, and the contents of every file under its inputs (size and modification time for files
over 4 MiB, such as model weights). When a step
finishes, its key, the lines it printed and what it measured are written to
`runs/demo/.steps/NAME.json`; a later demo whose key matches and whose outputs exist prints
those lines again instead of running the step. A re-run step rewrites its outputs, so the
steps that read them (their inputs changed) run again too: editing a config re-runs that
training and what depends on it, editing omnitune's code re-runs everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: What every step depends on: omnitune's code and the pinned packages.
CODE = (
    "api",
    "core",
    "modalities",
    "trainers",
    "monitor",
    "scripts",
    "pyproject.toml",
    "constraints.txt",
)


@dataclass
class StepRecord:
    key: str
    lines: list[str]
    result: dict[str, Any]
    seconds: float
    finished_unix: float


@dataclass
class Steps:
    """Runs demo steps, or replays them when their key is unchanged."""

    repo: Path
    folder: Path
    total: int  # how many steps a whole demo runs: the k of "[k/total]"
    force: bool = False
    reused: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    _lines: list[str] | None = None
    _code_key: str | None = None

    def say(self, text: str = "") -> None:
        """Print a line of the demo's transcript (kept with the running step)."""
        print(text, flush=True)
        if self._lines is not None:
            self._lines.append(text)

    def run(
        self,
        name: str,
        inputs: Iterable[str | Path],
        outputs: Iterable[str | Path],
        action: Callable[[], dict[str, Any] | None],
    ) -> dict[str, Any]:
        """`action()`'s result, from this run or from the last one with the same key."""
        key = self.key(name, inputs)
        number = f"[{len(self.ran) + len(self.reused) + 1}/{self.total}] {name}"
        record_path = self.folder / f"{name}.json"
        record = self._load(record_path)
        outputs = [self.repo / path for path in outputs]
        if (
            not self.force
            and record is not None
            and record.key == key
            and all(path.exists() for path in outputs)
        ):
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.finished_unix))
            print(
                f"\n{number}: reused, inputs unchanged since {when} (it took "
                f"{record.seconds:.0f} s)",
                flush=True,
            )
            for line in record.lines:
                print(line, flush=True)
            self.reused.append(name)
            return record.result
        record_path.unlink(missing_ok=True)  # a step that fails leaves no stale record
        print(f"\n{number} ...", flush=True)
        self._lines = []
        started = time.perf_counter()
        try:
            result = action() or {}
        finally:
            lines, self._lines = self._lines, None
        seconds = time.perf_counter() - started
        print(f"{number}: done in {seconds:.0f} s", flush=True)
        record = StepRecord(key, lines, result, seconds, time.time())
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = record_path.with_suffix(".partial")
        partial.write_text(json.dumps(record.__dict__, indent=1))
        partial.replace(record_path)
        self.ran.append(name)
        return result

    def seconds(self, name: str) -> float | None:
        record = self._load(self.folder / f"{name}.json")
        return None if record is None else record.seconds

    def key(self, name: str, inputs: Iterable[str | Path]) -> str:
        digest = hashlib.sha256(f"{name}\0{self.code_key()}".encode())
        for path in sorted(str(p) for p in inputs):
            digest.update(f"\0{path}\0{fingerprint(self.repo / path)}".encode())
        return digest.hexdigest()

    def code_key(self) -> str:
        """Hash of omnitune's source files, the demo's own and the pins (content, not times:
        a fresh checkout of the same commit keeps its finished steps)."""
        if self._code_key is None:
            digest = hashlib.sha256(sys.version.encode())
            for top in CODE:
                root = self.repo / top
                files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
                for path in files:
                    if path.is_file():
                        digest.update(str(path.relative_to(self.repo)).encode() + b"\0")
                        digest.update(path.read_bytes())
            self._code_key = digest.hexdigest()
        return self._code_key

    @staticmethod
    def _load(path: Path) -> StepRecord | None:
        try:
            return StepRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


#: Files up to this size are keyed by content (a checkout or copy that keeps the bytes keeps
#: the key); larger ones (model weights) by size and modification time.
HASHED_BYTES = 4 * 1024 * 1024


def fingerprint(path: Path) -> str:
    """A key of `path`'s contents, or of every file under it (a folder)."""
    if path.is_file():
        return _file_key(path)
    if not path.is_dir():
        return "missing"
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = Path(root, name)
            digest.update(f"{full.relative_to(path)}:{_file_key(full)}\0".encode())
    return digest.hexdigest()


def _file_key(path: Path) -> str:
    stat = path.stat()
    if stat.st_size <= HASHED_BYTES:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return f"{stat.st_size}:{stat.st_mtime_ns}"
