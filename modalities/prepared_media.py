"""Speech and vision-language datasets checked once, in parallel, and kept in Arrow.

Both readers check every row before training: a speech clip is decoded (its features cached,
its duration measured), an image is opened and the sample's length in tokens measured with its
image tokens. For 10^5 rows that is minutes of work, and it used to run in one process on every
run and every resume. Here a modality supplies a `RowCheck` (one row in, a `Checked` out); each
row is checked by a `datasets.map` worker (`data.num_proc`), and the results (the example's
fields, its length, balancing group and skip reason, and the size and modification time of
every media file it names) are saved under $OMNITUNE_CACHE/prepared/KIND/KEY by
`prepared.prepare`. KEY covers the manifest's content and everything the check depends on; the
media files are covered by their stamps: when any file's size or mtime has changed, the entry is
built again (features already in the feature cache are not computed twice).

Sources the Arrow path does not take (hub datasets, `data.cache: false`) are checked row by row
by the same `RowCheck`, so both paths keep, skip and count the same rows.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from omnitune.core.errors import DataError
from omnitune.modalities.base import Examples

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings

#: Rows per worker process: a row costs milliseconds (a decode, an image opened), so a few
#: hundred rows already pay for starting a process.
ROWS_PER_PROCESS = 200
#: The columns every prepared media dataset has besides the modality's item fields.
BOOKKEEPING = ("length", "group", "skip", "media", "stamps")

Records = Iterable[tuple[str, Path, dict[str, Any]]]


@dataclass
class Checked:
    """One row's verdict: the example to keep (None: skipped for `reason`), its length (seconds
    or tokens) and the media files it named (stamped, so a changed file rebuilds the cache)."""

    item: dict[str, Any] | None
    length: float = 0.0
    reason: str = ""
    media: list[str] = field(default_factory=list)


class RowCheck(Protocol):
    """A modality's check of one row; raises DataError when the row means the data is wrong
    (a file it names does not exist), which stops the run naming the row."""

    def __call__(self, where: str, base: Path, record: dict[str, Any]) -> Checked: ...


@dataclass(frozen=True)
class ItemSchema:
    """How a modality's examples are stored: Arrow features of the item fields, and which of
    them hold JSON text (nested values such as chat messages)."""

    features: dict[str, Any]
    json_columns: tuple[str, ...] = ()


def read_checked(
    source: str, records: Callable[[Examples], Records], check: RowCheck, group_field: str | None
) -> Examples:
    """The rows of `source` checked one by one in this process (hub datasets, no cache)."""
    examples = Examples(items=[], source=source)
    for where, base, record in records(examples):
        verdict = check(where, base, record)
        if verdict.item is None:
            examples.skip(verdict.reason, verdict.media[0] if verdict.media else where)
            continue
        examples.add(verdict.item, record, group_field, length=verdict.length)
    return examples


def read_media_dataset(
    kind: str,
    source: str,
    config: RunSettings,
    records: Callable[[Examples], Records],
    check: RowCheck,
    schema: Callable[[], ItemSchema],
    settings: dict[str, Any],
    cache_dir: str | None = None,
) -> Examples:
    """A modality's rows of `source`: through the prepared cache when `data.cache` is on (and
    the source exists), else checked row by row. `schema()` is asked only for the cache."""
    group_field = config.data.balance.by
    if not (config.data.cache and preparable(source)):
        return read_checked(source, records, check, group_field)
    return read_prepared_media(
        kind,
        source,
        settings,
        records,
        check,
        schema(),
        group_field,
        config.data.num_proc,
        cache_dir=cache_dir,
    )


def read_prepared_media(
    kind: str,
    source: str,
    settings: dict[str, Any],
    records: Callable[[Examples], Records],
    check: RowCheck,
    schema: ItemSchema,
    group_field: str | None,
    num_proc: int | None,
    cache_dir: str | None = None,
) -> Examples:
    """The checked rows of `source` from the prepared cache, built first when missing or when a
    media file changed. `settings` holds what the check depends on (options, processor)."""
    import numpy as np

    from omnitune.modalities.prepared import ArrowItems, prepare

    key = {"kind": kind, "content": source_fingerprint(source), "group": group_field, **settings}

    def build(scratch: Path) -> tuple[Any, Counter[str], int]:
        return _build(source, records, check, schema, group_field, num_proc, scratch)

    prepared = prepare(kind, key, build, cache_dir=cache_dir, still_valid=media_unchanged)
    how = f"prepared in {prepared.seconds:.1f} s" if prepared.built else "from cache"
    if prepared.dataset is None:
        return Examples(items=[], source=source, skipped=prepared.skipped, origin=how)
    full = prepared.dataset
    table = full.data  # pyarrow, read as stored (datasets' numpy format gives float32)
    reasons = np.asarray(table.column("skip").to_pylist(), dtype=object)
    rows = np.flatnonzero(reasons == "")
    files = _skipped_files(table, reasons)
    if not len(rows):
        return Examples(
            items=[], source=source, skipped=prepared.skipped, origin=how, skipped_files=files
        )
    kept = full.select(rows)
    groups = np.asarray(table.column("group").to_pylist(), dtype=object)[rows]
    return Examples(
        items=ArrowItems(kept.select_columns(list(schema.features)), schema.json_columns),
        source=source,
        skipped=prepared.skipped,
        groups=groups if group_field else np.full(len(rows), None, dtype=object),
        lengths=table.column("length").to_numpy()[rows],
        origin=f"{how}: {prepared.path}",
        skipped_files=files,
    )


def _skipped_files(table: Any, reasons: Any) -> dict[str, list[str]]:
    """reason -> the media files of the rows skipped for it (rows that named none are left
    out: their count is in `skipped`)."""
    import numpy as np

    files: dict[str, list[str]] = {}
    skipped = np.flatnonzero(reasons != "")
    if not len(skipped):
        return files
    media = table.column("media").take(skipped).to_pylist()
    for index, named in zip(skipped, media, strict=True):
        if named:
            files.setdefault(str(reasons[index]), []).append(os.path.normpath(named[0]))
    return files


def preparable(source: str) -> bool:
    """Whether the Arrow path reads `source`: a local manifest file or folder, a hub dataset
    (`hf:`) or a `save_to_disk` folder (a missing file is left to the reader, which names it)."""
    from omnitune.modalities.hf_sources import is_hf_source

    return is_hf_source(source) or Path(source).exists()


def source_fingerprint(source: str) -> str:
    """A manifest file's content digest; for a folder, its files' names, sizes and mtimes
    (hashing every clip of a folder of audio would cost what the cache saves; the clips are
    stamped row by row anyway); for a hub dataset, `datasets`' own fingerprint of it."""
    import hashlib

    from omnitune.modalities.hf_sources import hf_fingerprint, is_hf_source
    from omnitune.modalities.prepared import content_fingerprint

    if is_hf_source(source):
        return hf_fingerprint(source)
    path = Path(source)
    if not path.is_dir():
        return content_fingerprint(source)
    listing = sorted(
        (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in path.rglob("*")
        if p.is_file()
    )
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def stamp(path: str) -> str:
    try:
        info = os.stat(path)
    except OSError:
        return "missing"
    return f"{info.st_size}:{info.st_mtime_ns}"


def media_unchanged(dataset: Any) -> bool:
    """Whether every media file a prepared dataset names still has the size and mtime it had
    when the dataset was built (one stat per file: ~0.2 s per 10^5 files here)."""
    if dataset is None:
        return True
    columns = dataset.select_columns(["media", "stamps"])
    for start in range(0, len(columns), 10_000):
        batch = columns[start : start + 10_000]
        for paths, stamps in zip(batch["media"], batch["stamps"], strict=True):
            if any(stamp(p) != s for p, s in zip(paths, stamps, strict=True)):
                return False
    return True


def _build(
    source: str,
    records: Callable[[Examples], Records],
    check: RowCheck,
    schema: ItemSchema,
    group_field: str | None,
    num_proc: int | None,
    scratch: Path,
) -> tuple[Any, Counter[str], int]:
    import datasets
    import numpy as np

    from omnitune.modalities.prepared import available_cores

    listing = Examples(items=[], source=source)  # counts rows that do not even parse
    raw: dict[str, list[Any]] = {"where": [], "base": [], "record": []}
    for where, base, record in records(listing):
        raw["where"].append(where)
        raw["base"].append(str(base))
        raw["record"].append(json.dumps(record, default=str))
    rows = datasets.Dataset.from_dict(raw)
    del raw
    workers = num_proc or min(available_cores(), max(1, len(rows) // ROWS_PER_PROCESS))
    checked = rows.map(
        _CheckRows(check, schema, group_field),
        batched=True,
        batch_size=50,
        num_proc=workers if workers > 1 and len(rows) > 1 else None,
        remove_columns=rows.column_names,
        features=_features(schema),
        cache_file_name=str(scratch / "checked.arrow"),
        desc=f"checking {Path(source).name}",
    )
    reasons = checked.with_format("numpy")["skip"][:].astype(str)
    failed = np.flatnonzero(np.char.startswith(reasons, "error:"))
    if len(failed):  # the first bad row in file order, as the row-by-row reader reports it
        raise DataError(str(reasons[int(failed[0])]).removeprefix("error:"))
    skipped = listing.skipped + Counter(str(r) for r in reasons if r)
    return checked, skipped, 0


def _features(schema: ItemSchema) -> Any:
    from datasets import Features, Sequence, Value

    return Features(
        {
            **schema.features,
            "length": Value("float64"),
            "group": Value("string"),
            "skip": Value("string"),
            "media": Sequence(Value("string")),
            "stamps": Sequence(Value("string")),
        }
    )


class _CheckRows:
    """`datasets.map` function: raw rows (where, base, record JSON) to checked rows."""

    def __init__(self, check: RowCheck, schema: ItemSchema, group_field: str | None) -> None:
        self.check, self.schema, self.group_field = check, schema, group_field
        self.creator = os.getpid()

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if os.getpid() != self.creator:  # a forked map worker (data.num_proc > 1)
            from omnitune.modalities.prepared import single_threaded_torch

            single_threaded_torch()
        out: dict[str, list[Any]] = {name: [] for name in (*self.schema.features, *BOOKKEEPING)}
        for where, base, text in zip(batch["where"], batch["base"], batch["record"], strict=True):
            record = json.loads(text)
            try:
                verdict = self.check(where, Path(base), record)
            except DataError as error:
                verdict = Checked(None, reason=f"error:{error}")
            item = verdict.item or {}
            for name in self.schema.features:
                value = item.get(name)
                if name in self.schema.json_columns and value is not None:
                    value = json.dumps(value)
                out[name].append(value)
            grouped = self.group_field is not None and self.group_field in record
            out["length"].append(float(verdict.length))
            out["group"].append(str(record[self.group_field]) if grouped else None)
            out["skip"].append(verdict.reason if verdict.item is None else "")
            out["media"].append(verdict.media)
            out["stamps"].append([stamp(p) for p in verdict.media])
        return out
