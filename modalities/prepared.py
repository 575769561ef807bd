"""Preprocessed datasets in Arrow, built once per (data, processor, settings) and memory-mapped.

Reading a source used to mean re-parsing and re-tokenising every row, one at a time, on every
run and every resume, and keeping each example as Python lists. Here a modality's preprocessing
runs through Hugging Face `datasets` (`map` with `num_proc` workers), the result is saved with
`save_to_disk` under `$OMNITUNE_CACHE/prepared/KIND/KEY/`, and later runs open it memory-mapped
in well under a second. KEY hashes everything that changes the result: the source's content,
the processor (tokenizer vocabulary, chat template, special tokens), the modality's settings
(max_length, overlong policy, loss masking...) and `PREPARED_VERSION`. A change to any of them
builds a new entry; an unchanged source is never read again.

An entry is a folder written under a temporary name and renamed into place with its
`meta.json` (skip counts, truncations, rows, build time), so a killed build leaves nothing a
later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnitune.modalities.base import default_cache_root

#: Bumped when a modality's preprocessing changes what it writes.
PREPARED_VERSION = 1
#: Rows per worker below which extra processes cost more (start-up, pickling the tokenizer)
#: than they save.
ROWS_PER_PROCESS = 20_000


@dataclass
class Prepared:
    """A preprocessed dataset and what its build counted."""

    dataset: Any  # datasets.Dataset, memory-mapped; None when no row was usable
    path: Path
    skipped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    built: bool = False  # True when this call built it, False when it came from the cache
    seconds: float = 0.0


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def workers_for(rows: int, num_proc: int | None) -> int | None:
    """`num_proc` for `datasets.map`: the configured count, else the cores the work can use.
    None means in-process (datasets' own spelling of one worker)."""
    if num_proc is not None:
        count = num_proc
    else:
        count = min(available_cores(), max(1, rows // ROWS_PER_PROCESS))
    return count if count > 1 else None


def content_fingerprint(source: str) -> str:
    """A hash of a local file's bytes (or a folder's files), or of a hub source's name.

    Hashing reads every byte (about 0.4 s for 150 MB here), so the digest of a file is
    remembered under its path, size, modification time and inode in the cache's
    `fingerprints.json`: an unchanged file is not read again, a changed one is."""
    path = Path(source)
    if not path.exists():
        return hashlib.sha256(source.encode()).hexdigest()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    identity = json.dumps(
        [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns, f.stat().st_ino] for f in files]
    )
    remembered = prepared_root() / "fingerprints.json"
    try:
        known = json.loads(remembered.read_text())
    except (OSError, ValueError):
        known = {}
    if identity in known:
        return known[identity]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda h=handle: h.read(8 * 1024 * 1024), b""):
                digest.update(chunk)
    known[identity] = digest.hexdigest()
    remembered.parent.mkdir(parents=True, exist_ok=True)
    temporary = remembered.with_name(f".fingerprints-{os.getpid()}.json")
    temporary.write_text(json.dumps(dict(list(known.items())[-1000:])))
    os.replace(temporary, remembered)
    return known[identity]


def processor_fingerprint(processor: Any) -> str:
    """What of a tokenizer or processor decides the ids: vocabulary and merges, added tokens,
    chat template, special tokens, and the processor's own settings."""
    tokenizer = getattr(processor, "tokenizer", processor)
    parts: dict[str, Any] = {"class": type(processor).__name__}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        parts["tokenizer"] = hashlib.sha256(backend.to_str().encode()).hexdigest()
    elif hasattr(tokenizer, "get_vocab"):
        parts["vocab"] = sorted(tokenizer.get_vocab().items())
    parts["chat_template"] = getattr(tokenizer, "chat_template", None)
    parts["special"] = str(getattr(tokenizer, "special_tokens_map", {}))
    # A feature extractor passed alone is its own "tokenizer" here: its settings (window, mel
    # bins) decide the stored features, so they are part of the key too.
    if hasattr(processor, "to_dict") and (processor is not tokenizer or backend is None):
        parts["processor"] = processor.to_dict()
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(settings: dict[str, Any]) -> str:
    text = json.dumps({"v": PREPARED_VERSION, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def prepared_root(cache_dir: str | None = None) -> Path:
    return (Path(cache_dir) if cache_dir else default_cache_root()) / "prepared"


def prepare(
    kind: str,
    settings: dict[str, Any],
    build: Callable[[Path], tuple[Any, Counter[str], int]],
    cache_dir: str | None = None,
    still_valid: Callable[[Any], bool] | None = None,
) -> Prepared:
    """The prepared dataset for `settings`, from the cache or built by `build(scratch)`.

    `build` returns (dataset, skip counts, truncated count); it may write intermediate files
    under `scratch`, which is removed afterwards. `still_valid(dataset)` is asked of a cached
    entry (media files it names unchanged); False builds it again."""
    import datasets

    target = prepared_root(cache_dir) / kind / cache_key(settings)
    meta = target / "meta.json"
    if meta.is_file():
        try:
            info = json.loads(meta.read_text())
            dataset = datasets.load_from_disk(str(target / "data")) if info["rows"] else None
            if still_valid is None or still_valid(dataset):
                return Prepared(dataset, target, Counter(info["skipped"]), info["truncated"])
            shutil.rmtree(target, ignore_errors=True)
        except (OSError, ValueError, KeyError, FileNotFoundError):
            shutil.rmtree(target, ignore_errors=True)  # torn or foreign: build it again
    started = time.perf_counter()
    staging = target.with_name(f".staging-{target.name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _build_in_child(lambda: _write_entry(kind, settings, build, staging, target, started))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    info = json.loads(meta.read_text())
    dataset = datasets.load_from_disk(str(target / "data")) if info["rows"] else None
    return Prepared(
        dataset,
        target,
        Counter(info["skipped"]),
        info["truncated"],
        built=True,
        seconds=time.perf_counter() - started,
    )


def _write_entry(
    kind: str,
    settings: dict[str, Any],
    build: Callable[[Path], tuple[Any, Counter[str], int]],
    staging: Path,
    target: Path,
    started: float,
) -> None:
    """Build into `staging`, then rename it to `target` with its meta.json."""
    dataset, skipped, truncated = build(staging / "scratch")
    if len(dataset):  # Arrow cannot save a selection of no rows; nothing to keep anyway
        dataset.save_to_disk(str(staging / "data"))
    (staging / "meta.json").write_text(
        json.dumps(
            {
                "kind": kind,
                "rows": len(dataset),
                "skipped": dict(skipped),
                "truncated": truncated,
                "build_seconds": round(time.perf_counter() - started, 3),
                "settings": settings,
            },
            indent=1,
            default=str,
        )
    )
    shutil.rmtree(staging / "scratch", ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def single_threaded_torch() -> None:
    """In a forked process, keep torch off OpenMP: a parent that ran a parallel torch op (model
    loading, a feature extractor) leaves GNU OpenMP's thread pool unusable in its forks, and
    the next parallel op there waits forever (seen: Whisper's STFT in a forked check). With one
    thread, torch runs every op inline without entering OpenMP."""
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _build_in_child(work: Callable[[], None]) -> None:
    """Run `work` in a forked child process and wait for it; an OmnituneError it raises is
    raised here again (same type, same message), any other failure as a DataError.

    Building reads the whole source and writes the whole dataset through memory maps and
    Arrow buffers: at 10^6 text rows the process's peak memory rose 300 MB (most of it file
    pages, freed only when the process ends). Built in a child, none of it stays in the
    training process, which then opens the result like a cached run (+185 MB at 10^6 rows)."""
    import multiprocessing
    import pickle
    import traceback

    from omnitune.core.errors import DataError, OmnituneError

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child() -> None:
        try:
            single_threaded_torch()
            work()
            send.send(None)
        except OmnituneError as error:
            send.send(pickle.dumps(error))
        except BaseException as error:  # reported to the parent, which raises it
            send.send(pickle.dumps(DataError(f"preparing the data failed: {error!r}")))
            traceback.print_exc()

    process = context.Process(target=child, name="omnitune-prepare")
    process.start()
    send.close()
    try:
        outcome = receive.recv()
    except EOFError:  # the child died without a word (killed, out of memory)
        outcome = pickle.dumps(DataError("preparing the data failed: its process was killed"))
    finally:
        process.join()
    if outcome is not None:
        raise pickle.loads(outcome)


class ArrowItems(Sequence):
    """A memory-mapped dataset read as a sequence of example dicts, the shape the collators
    and metrics take; columns named in `json_columns` hold JSON text and are decoded."""

    def __init__(self, dataset: Any, json_columns: tuple[str, ...] = ()) -> None:
        self.dataset = dataset
        self.json_columns = json_columns

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self._decode(self.dataset[int(index)])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for start in range(0, len(self), 1000):
            batch = self.dataset[start : start + 1000]
            columns = list(batch)
            for values in zip(*(batch[c] for c in columns), strict=True):
                yield self._decode(dict(zip(columns, values, strict=True)))

    def _decode(self, row: dict[str, Any]) -> dict[str, Any]:
        for column in self.json_columns:
            if row.get(column):
                row[column] = json.loads(row[column])
            else:
                row.pop(column, None)
        return {k: v for k, v in row.items() if v is not None}
