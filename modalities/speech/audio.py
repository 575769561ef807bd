"""Reading audio: soundfile for WAV/FLAC/OGG/MP3, down-mixed to mono, resampled with torchaudio.

torchaudio's own loader needs TorchCodec with the pinned stack, so files are read with soundfile
(libsndfile 1.2 reads MP3 too) and torchaudio is used for its resampling transform only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

#: Below this RMS (about -60 dBFS) a recording counts as silent.
SILENCE_RMS = 1e-3


class AudioProblem(Exception):
    """A file that cannot be used; `reason` is the counter it is skipped under."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_audio(path: str | Path | BinaryIO, sampling_rate: int) -> np.ndarray:
    """Mono float32 samples at `sampling_rate` of a file (or an open binary file, e.g. an
    upload held in memory); raises AudioProblem for unusable audio."""
    import soundfile

    source = path if hasattr(path, "read") else str(path)
    try:
        samples, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, ValueError):
        raise AudioProblem("unreadable audio") from None
    if samples.size == 0:
        raise AudioProblem("empty audio")
    mono = samples.mean(axis=1)
    if rate != sampling_rate:
        mono = resample(mono, rate, sampling_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    import torch
    import torchaudio.functional as F

    return F.resample(torch.from_numpy(samples), rate, target).numpy()


def check_clip(duration: float, rms: float, max_seconds: float) -> None:
    """Raise AudioProblem when a decoded recording is silent or too long for the model."""
    if rms < SILENCE_RMS:
        raise AudioProblem("silent audio")
    if duration > max_seconds:
        raise AudioProblem(f"longer than {max_seconds:g} s")


def audio_features(samples: np.ndarray, sampling_rate: int) -> dict[str, float]:
    """Duration, loudness, silence share, zero-crossing rate, spectral centroid and an SNR
    estimate (the 90th over the 10th percentile of 20 ms frame energies, in dB: speech frames
    over the noise floor between words).

    The same function describes training audio and production requests, so the monitor's
    drift tests compare like with like. Numpy only.
    """
    frame = max(1, sampling_rate // 50)  # 20 ms frames
    usable = samples[: len(samples) // frame * frame]
    frames = usable.reshape(-1, frame) if len(usable) else samples.reshape(1, -1)
    frame_rms = np.sqrt(np.mean(np.square(frames), axis=1))
    rms = float(np.sqrt(np.mean(np.square(samples))))
    spectrum = np.abs(np.fft.rfft(samples))
    frequencies = np.fft.rfftfreq(len(samples), d=1.0 / sampling_rate)
    centroid = float((spectrum * frequencies).sum() / spectrum.sum()) if spectrum.sum() else 0.0
    crossings = np.count_nonzero(np.diff(np.signbit(samples)))
    return {
        "duration_s": len(samples) / sampling_rate,
        "rms_dbfs": 20 * float(np.log10(max(rms, 1e-10))),
        "silence_ratio": float(np.mean(frame_rms < 0.01)),
        "zero_crossing_rate": crossings / max(1, len(samples)),
        "spectral_centroid_hz": centroid,
        "snr_db": estimated_snr_db(frame_rms),
    }


def estimated_snr_db(frame_rms: np.ndarray) -> float:
    loud, quiet = np.percentile(frame_rms, [90, 10])
    return 20 * float(np.log10(max(float(loud), 1e-10) / max(float(quiet), 1e-10)))


def features_of_file(path: str | Path | BinaryIO, sampling_rate: int) -> dict[str, Any]:
    return audio_features(read_audio(path, sampling_rate), sampling_rate)
