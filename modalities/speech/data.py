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

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnitune.core.errors import ConfigError, DataError
from omnitune.modalities.base import Examples, default_cache_root
from omnitune.modalities.hf_sources import hf_rows, is_hf_source
from omnitune.modalities.prepared_media import Checked, ItemSchema
from omnitune.modalities.speech.audio import AudioProblem, check_clip
from omnitune.modalities.speech.features import FeatureCache
from omnitune.modalities.speech.options import SpeechOptions, speech_options

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
EXTRA_FIELDS = ("speaker", "language", "domain")


def feature_cache(processor: Any, options: SpeechOptions) -> FeatureCache:
    folder = _cache_root(options) / "speech-features" if options.feature_cache else None
    return FeatureCache(folder, processor.feature_extractor)


def read_speech_dataset(
    source: str, config: RunSettings, processor: Any, training: bool
) -> Examples:
    """The usable clips of `source`: checked in `data.num_proc` processes and kept in the
    prepared (Arrow) cache for manifests and folders when `data.cache` is on, else row by row."""
    from omnitune.modalities.prepared import processor_fingerprint
    from omnitune.modalities.prepared_media import read_media_dataset

    options = speech_options(config)
    return read_media_dataset(
        "speech",
        source,
        config,
        functools.partial(_records, source, options),
        SpeechRowCheck(processor, options),
        _schema,
        {
            "options": options.model_dump(exclude={"augment"}),
            "processor": processor_fingerprint(processor.feature_extractor),
        },
        cache_dir=options.cache_dir,
    )


def _schema() -> ItemSchema:
    """How a checked clip is stored in the prepared cache."""
    from datasets import Value

    return ItemSchema(
        {
            "audio": Value("string"),
            "text": Value("string"),
            "features": Value("string"),
            "floor": Value("float64"),
            "frames": Value("int64"),
            **{name: Value("string") for name in EXTRA_FIELDS},
        }
    )


class SpeechRowCheck:
    """One manifest row to a clip example: the file decoded once (its features cached), too
    long, silent or unreadable clips skipped by reason; a missing file is a DataError."""

    def __init__(self, processor: Any, options: SpeechOptions) -> None:
        extractor = processor.feature_extractor
        self.options = options
        window = float(extractor.chunk_length)
        if options.max_seconds is not None and options.max_seconds > window:
            raise ConfigError(
                f"data.options.max_seconds: {options.max_seconds:g} s is longer than this "
                f"model's input window of {window:g} s (its feature extractor's chunk_length); "
                f"use at most {window:g}, or a model with a longer window (Whisper checkpoints "
                "take 30 s)"
            )
        self.max_seconds = options.max_seconds or window
        self.cache = feature_cache(processor, options)

    def __call__(self, where: str, base: Path, record: dict[str, Any]) -> Checked:
        options = self.options
        audio, text = record.get(options.audio_column), record.get(options.text_column)
        if not audio or not isinstance(text, str):
            return Checked(None, reason="no audio or text field")
        path = Path(str(audio))
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise DataError(f"{where}: audio file {path} does not exist")
        try:
            info, _ = self.cache.describe(path)
            check_clip(info.duration, info.rms, self.max_seconds)
        except AudioProblem as problem:
            return Checked(None, reason=problem.reason, media=[str(path)])
        item: dict[str, Any] = {"audio": str(path), "text": text.strip()}
        if info.cache_file:
            item.update(features=info.cache_file, floor=info.floor, frames=info.frames)
        for key in EXTRA_FIELDS:
            if record.get(key) not in (None, ""):
                item[key] = str(record[key])
        return Checked(item, info.duration, media=[str(path)])


def _records(
    source: str, options: SpeechOptions, examples: Examples
) -> Iterator[tuple[str, Path, dict[str, Any]]]:
    """`(where, base folder for relative paths, record)` for each row of any source form."""
    if is_hf_source(source):
        from datasets import Audio

        spill = _cache_root(options) / "hf-media"
        audio = {options.audio_column: Audio(decode=False)}
        for where, row in hf_rows(source, audio, spill, "data.options.audio_column"):
            yield where, Path("."), row
        return
    path = Path(source)
    if path.is_dir():
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


def _cache_root(options: SpeechOptions) -> Path:
    return Path(options.cache_dir) if options.cache_dir else default_cache_root()
