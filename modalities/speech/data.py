"""Reading speech datasets: manifests, folders of audio with transcripts, Hugging Face datasets.

Sources (`data.train` / `data.eval`):

- a JSONL or CSV manifest: rows with `audio` (path, relative to the manifest's folder unless
  absolute) and `text`; optional `speaker`, `language`, `domain`, `duration`;
- a folder: `metadata.jsonl` / `metadata.csv` with a `file_name` column (the `audiofolder`
  layout of HF datasets), or else one transcript `NAME.txt` beside each `NAME.wav|flac|ogg|mp3`;
- a Hugging Face dataset: `hf:NAME` or `hf:NAME:SPLIT` (from the local hub cache: nothing is
  downloaded at run time), or a folder written by `Dataset.save_to_disk`. Its Audio column is
  read undecoded (path or bytes) and decoded here with soundfile, like every other source.

A path to a file that does not exist is an error naming the manifest line (the manifest is
wrong). A file that exists but is unreadable, empty, silent or longer than the window is
skipped and counted by reason. Examples hold paths, never samples: features are computed once
into the on-disk cache and read back per batch, so memory does not grow with the dataset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omnitune.modalities.base import Examples
from omnitune.modalities.speech.audio import AudioProblem, check_clip
from omnitune.modalities.speech.features import FeatureCache, default_cache_root
from omnitune.modalities.speech.options import SpeechOptions, speech_options
from omnitune.trainers.errors import DataError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
EXTRA_FIELDS = ("speaker", "language", "domain")


def feature_cache(processor: Any, options: SpeechOptions) -> FeatureCache:
    folder = None
    if options.feature_cache:
        folder = Path(options.cache_dir) if options.cache_dir else default_cache_root()
        folder = folder / "speech-features"
    return FeatureCache(folder, processor.feature_extractor)


def read_speech_dataset(source: str, config: Any, processor: Any, training: bool) -> Examples:
    options = speech_options(config)
    extractor = processor.feature_extractor
    max_seconds = options.max_seconds or float(extractor.chunk_length)
    cache = feature_cache(processor, options)
    group_field = config.data.balance.by
    examples = Examples(items=[], source=source)
    for where, base, record in _records(source, options, examples):
        audio, text = record.get(options.audio_column), record.get(options.text_column)
        if not audio or not isinstance(text, str):
            examples.skipped["no audio or text field"] += 1
            continue
        path = Path(str(audio))
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise DataError(f"{where}: audio file {path} does not exist")
        try:
            info, _ = cache.describe(path)
            check_clip(info.duration, info.rms, max_seconds)
        except AudioProblem as problem:
            examples.skipped[problem.reason] += 1
            continue
        item: dict[str, Any] = {"audio": str(path), "text": text.strip()}
        if info.cache_file:
            item.update(features=info.cache_file, floor=info.floor, frames=info.frames)
        for key in EXTRA_FIELDS:
            if record.get(key) not in (None, ""):
                item[key] = str(record[key])
        examples.add(item, record, group_field, length=info.duration)
    return examples


def _records(
    source: str, options: SpeechOptions, examples: Examples
) -> Iterator[tuple[str, Path, dict[str, Any]]]:
    """`(where, base folder for relative paths, record)` for each row of any source form."""
    if source.startswith("hf:"):
        yield from _hf_records(source, _load_hub_dataset(source), options)
        return
    path = Path(source)
    if path.is_dir():
        if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
            from datasets import load_from_disk

            yield from _hf_records(source, load_from_disk(str(path)), options)
            return
        yield from _folder_records(path, options, examples)
        return
    for line, record in examples.usable_records():
        yield f"{source}:{line}", path.parent, record


def _folder_records(
    folder: Path, options: SpeechOptions, examples: Examples
) -> Iterator[tuple[str, Path, dict[str, Any]]]:
    for name in ("metadata.jsonl", "metadata.csv"):
        metadata = folder / name
        if metadata.is_file():
            rows = Examples(items=[], source=str(metadata))
            for line, record in rows.usable_records():
                if "file_name" in record and options.audio_column not in record:
                    record[options.audio_column] = record["file_name"]
                for text_name in ("transcription", "sentence"):
                    if options.text_column not in record and text_name in record:
                        record[options.text_column] = record[text_name]
                yield f"{metadata}:{line}", folder, record
            examples.skipped.update(rows.skipped)
            return
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no metadata.jsonl/.csv and no audio files")
    for audio in files:
        transcript = audio.with_suffix(".txt")
        if not transcript.is_file():
            examples.skipped["no transcript file"] += 1
            continue
        record = {
            options.audio_column: str(audio),
            options.text_column: transcript.read_text(encoding="utf-8").strip(),
        }
        yield str(audio), folder, record


def _load_hub_dataset(source: str) -> Any:
    from datasets import load_dataset

    _, name, *rest = source.split(":")
    split = rest[0] if rest else "train"
    try:
        return load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many types; the message is what helps
        raise DataError(f"{source}: cannot load the dataset offline: {exc}") from None


def _hf_records(
    source: str, dataset: Any, options: SpeechOptions
) -> Iterator[tuple[str, Path, dict[str, Any]]]:
    """Rows of a `datasets` Dataset with its Audio column undecoded; in-memory audio bytes are
    written once to the cache folder, so every example is a path like any other source's."""
    from datasets import Audio

    column = options.audio_column
    if column not in dataset.column_names:
        raise DataError(
            f"{source}: no '{column}' column (columns: {', '.join(dataset.column_names)}); "
            "set data.options.audio_column"
        )
    dataset = dataset.cast_column(column, Audio(decode=False))
    spill = (Path(options.cache_dir) if options.cache_dir else default_cache_root()) / "hf-audio"
    for index, row in enumerate(dataset):
        audio = row[column] or {}
        path = audio.get("path")
        if audio.get("bytes"):
            digest = hashlib.sha1(audio["bytes"]).hexdigest()
            suffix = Path(path).suffix if path else ".wav"
            target = spill / f"{digest}{suffix}"
            if not target.exists():
                spill.mkdir(parents=True, exist_ok=True)
                target.write_bytes(audio["bytes"])
            path = str(target)
        yield f"{source}[{index}]", Path("."), {**row, column: path}
