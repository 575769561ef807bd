"""Hugging Face `datasets` as data sources, shared by the speech and vision-language readers.

`hf:NAME` or `hf:NAME:SPLIT` loads from the local hub cache (nothing is downloaded at run
time); a folder written by `Dataset.save_to_disk` loads with `load_from_disk`. Media columns
(Audio, Image) are read undecoded: a file path, or bytes that are written once to the cache
folder under their content hash, so every example downstream is a path like any other source's
and memory does not hold the media.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omnitune.core.errors import DataError


def is_hf_source(source: str) -> bool:
    path = Path(source)
    saved = path.is_dir() and (path / "state.json").is_file()
    return source.startswith("hf:") or (saved and (path / "dataset_info.json").is_file())


def hf_rows(
    source: str, media_columns: dict[str, Any], spill: Path, option: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    """`(where, row)` for each row, each media column (name -> undecoded feature, e.g.
    `Audio(decode=False)`) replaced by a file path (or a list of them for list columns).
    Columns the dataset lacks are left out; none present is an error naming `option`, the
    config key that names the column."""
    media_columns_wanted = list(media_columns)
    dataset = _load(source)
    media_columns = {c: f for c, f in media_columns.items() if c in dataset.column_names}
    if not media_columns:
        wanted = " or ".join(f"'{c}'" for c in media_columns_wanted)
        raise DataError(
            f"{source}: no {wanted} column (columns: {', '.join(dataset.column_names)}); "
            f"set {option}"
        )
    for column, feature in media_columns.items():
        current = dataset.features[column]
        if isinstance(current, list) or hasattr(current, "feature"):  # a list of media
            dataset = dataset.cast_column(column, [feature])
        else:
            dataset = dataset.cast_column(column, feature)
    for index, row in enumerate(dataset):
        for column in media_columns:
            value = row[column]
            row[column] = (
                [_as_path(v, spill) for v in value]
                if isinstance(value, list)
                else _as_path(value, spill)
            )
        yield f"{source}[{index}]", row


def hf_plain_rows(source: str) -> Iterator[dict[str, Any]]:
    """Each row of a dataset without media columns (text, preference pairs) as a dict."""
    yield from _load(source)


def hf_fingerprint(source: str) -> str:
    """What identifies the dataset's content: `datasets`' own fingerprint of the loaded
    dataset (from its cache files or its `save_to_disk` state), so an unchanged dataset keys
    the same prepared cache entry and a new version of it another."""
    return f"{source}@{_load(source)._fingerprint}"


def load_hf(source: str) -> Any:
    """The dataset of an `hf:NAME[:SPLIT]` source or a `save_to_disk` folder (memory-mapped)."""
    return _load(source)


def _load(source: str) -> Any:
    from datasets import load_dataset, load_from_disk

    if not source.startswith("hf:"):
        return load_from_disk(source)
    _, name, *rest = source.split(":")
    try:
        return load_dataset(name, split=rest[0] if rest else "train")
    except Exception as exc:  # datasets raises many types; its message is what helps
        raise DataError(f"{source}: cannot load the dataset offline: {exc}") from None


def _as_path(media: dict[str, Any] | None, spill: Path) -> str | None:
    if not media:
        return None
    path = media.get("path")
    if media.get("bytes"):
        digest = hashlib.sha1(media["bytes"]).hexdigest()
        target = spill / f"{digest}{Path(path).suffix if path else ''}"
        if not target.exists():
            spill.mkdir(parents=True, exist_ok=True)
            target.write_bytes(media["bytes"])
        return str(target)
    return path
