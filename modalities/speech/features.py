"""Log-mel features, computed once per file and cached on disk.

Decoding, resampling and the mel transform are most of a small speech model's step. The cache
keys each file by its absolute path, size, modification time and the feature extractor's
settings, so an edited file or a different extractor never reads stale features.

Whisper pads every clip to its window and clamps the log-mel floor at (max - 8), so the padded
tail of a short clip is one repeated value. The cache stores the frames up to the last one that
differs from that floor, plus the floor; `load()` rebuilds the full window bit for bit. A 1.5 s
clip in a 30 s window takes 5% of the space.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omnitune.modalities.speech.audio import audio_features, read_audio

CACHE_VERSION = 3


@dataclass(frozen=True)
class ClipInfo:
    """What the reader keeps about a file instead of its samples (a few scalars and a path)."""

    duration: float
    rms: float
    cache_file: str | None = None  # the trimmed features (.npy); None when caching is off
    floor: float = 0.0  # the value of the padded tail
    frames: int = 0  # the full window's length in frames


def extract(extractor: Any, samples: np.ndarray) -> np.ndarray:
    """Features of one clip, [n_mels, frames] float32, exactly as the extractor pads them."""
    features = extractor(samples, sampling_rate=extractor.sampling_rate, return_tensors="np")
    return np.asarray(features.input_features[0], dtype=np.float32)


class FeatureCache:
    """Per-file features on disk under `folder/<extractor digest>/`; `folder=None` disables it.

    Each clip is two files: `<key>.npy` (the trimmed features: a plain array, so a batch reads
    it in tens of microseconds) and `<key>.json` (duration, RMS, the tail's value, the window
    length and the drift-profile row), written last: a clip counts as cached once its JSON
    exists.
    """

    def __init__(self, folder: Path | None, extractor: Any) -> None:
        self.extractor = extractor
        self.rate = extractor.sampling_rate
        settings = json.dumps(
            {"v": CACHE_VERSION, **extractor.to_dict()}, sort_keys=True, default=str
        )
        digest = hashlib.sha1(settings.encode()).hexdigest()[:16]
        self.folder = None if folder is None else Path(folder) / digest

    def describe(self, path: Path) -> tuple[ClipInfo, np.ndarray | None]:
        """What is known about `path`, writing its features on a cache miss.

        Returns the decoded samples too when they were decoded (a miss, or caching off).
        Raises AudioProblem for files that cannot be used.
        """
        if self.folder is None:
            samples = read_audio(path, self.rate)
            return ClipInfo(len(samples) / self.rate, _rms(samples)), samples
        key = self.folder / self._key(path)
        meta = key.with_suffix(".json")
        if meta.exists():
            try:
                stored = json.loads(meta.read_text())
                return ClipInfo(**{k: stored[k] for k in _INFO_FIELDS}), None
            except (OSError, ValueError, KeyError, TypeError):
                meta.unlink(missing_ok=True)  # torn or foreign: compute it again
        samples = read_audio(path, self.rate)
        features = extract(self.extractor, samples)
        floor = float(features.min())
        differs = np.flatnonzero((features != floor).any(axis=0))
        kept = features[:, : (differs[-1] + 1 if len(differs) else 0)]
        info = ClipInfo(
            duration=len(samples) / self.rate,
            rms=_rms(samples),
            cache_file=str(key.with_suffix(".npy")),
            floor=floor,
            frames=int(features.shape[1]),
        )
        _atomic_write(key.with_suffix(".npy"), lambda out: np.save(out, kept))
        record = {k: getattr(info, k) for k in _INFO_FIELDS}
        # The reference profile's row, so writing reference.json decodes nothing again.
        record["profile"] = audio_features(samples, self.rate)
        _atomic_write(meta, lambda out: out.write(json.dumps(record).encode()))
        return info, samples

    def _key(self, path: Path) -> str:
        resolved = path.resolve()
        stat = resolved.stat()
        identity = f"{resolved}\0{stat.st_size}\0{stat.st_mtime_ns}\0{PROFILE_FEATURES_VERSION}"
        return hashlib.sha1(identity.encode()).hexdigest()


_INFO_FIELDS = ("duration", "rms", "cache_file", "floor", "frames")
#: Bumped when `audio_features` changes, so cached profile rows are recomputed.
PROFILE_FEATURES_VERSION = 2


def load_features(cache_file: str, floor: float, frames: int) -> np.ndarray:
    """The full, padded feature window of a cached clip, equal to a fresh `extract()`."""
    kept = np.load(cache_file)
    full = np.full((kept.shape[0], frames), floor, dtype=np.float32)
    full[:, : kept.shape[1]] = kept
    return full


def example_features(example: dict[str, Any], extractor: Any) -> np.ndarray:
    """An example's feature window: from the cache when it has an entry, else computed (also
    when the entry was deleted since the dataset was prepared: caches get cleaned)."""
    if example.get("features"):
        try:
            return load_features(example["features"], example["floor"], example["frames"])
        except FileNotFoundError:
            pass
    return extract(extractor, read_audio(example["audio"], extractor.sampling_rate))


def read_profile_row(cache_file: str) -> dict[str, float]:
    """A cached clip's drift-profile features (`audio_features`), stored when it was cached."""
    return json.loads(Path(cache_file).with_suffix(".json").read_text())["profile"]


def _atomic_write(target: Path, write: Any) -> None:
    """Write to a temporary file, then rename: a reader never sees half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    with os.fdopen(handle, "wb") as out:
        write(out)
    os.replace(temporary, target)


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples)))) if len(samples) else 0.0
