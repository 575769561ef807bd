"""Reading audio: soundfile for WAV/FLAC/OGG/MP3, down-mixed to mono, resampled with torchaudio.

torchaudio's own loader needs TorchCodec with the pinned stack, so files are read with soundfile
(libsndfile 1.2 reads MP3 too) and torchaudio is used for its resampling transform only.
"""

from __future__ import annotations

import os
import struct
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
    upload held in memory); raises AudioProblem for unusable audio.

    Reasons: "empty audio" (no bytes or no frames), "unreadable audio" (not a format
    libsndfile opens: text, images, random bytes under an audio suffix), "truncated audio"
    (the header promises more than the file holds: libsndfile reads a cut WAV without a word,
    and a cut FLAC or MP3 fails or stops part-way), "non-finite audio" (NaN or infinity in a
    float file, which would turn the features and the loss into NaN).
    """
    import soundfile

    source: Any = path if hasattr(path, "read") else str(path)
    if isinstance(source, str) and os.path.getsize(source) == 0:
        raise AudioProblem("empty audio")
    try:
        declared = soundfile.info(source).frames
    except (RuntimeError, soundfile.LibsndfileError, ValueError):
        raise AudioProblem("unreadable audio") from None
    if hasattr(source, "seek"):
        source.seek(0)
    try:
        samples, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, ValueError):
        raise AudioProblem("truncated audio") from None
    if samples.size == 0:
        raise AudioProblem("empty audio")
    if _cut_short(source, len(samples), declared):
        raise AudioProblem("truncated audio")
    if not np.isfinite(samples).all():
        raise AudioProblem("non-finite audio")
    mono = samples.mean(axis=1)
    if rate != sampling_rate:
        mono = resample(mono, rate, sampling_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


#: A decoder that stops before this share of the declared frames read a cut file (MP3: the
#: Xing header states the length; an encoder's padding is far below 3%).
_SHORT_READ = 0.97


def _cut_short(source: Any, frames: int, declared: int) -> bool:
    """Whether the file holds less audio than its header declares."""
    if declared > 0 and frames < _SHORT_READ * declared:
        return True
    return _wav_data_missing(source)


def _wav_data_missing(source: Any) -> bool:
    """A RIFF/WAVE file whose `data` chunk declares more bytes than follow it.

    libsndfile shortens such a file's frame count to what is there (its log says "should
    be"), so the cut is only visible in the header: the chunk list is walked here."""
    if hasattr(source, "seek"):
        source.seek(0)
        handle, close = source, False
    else:
        handle, close = open(source, "rb"), True  # noqa: SIM115 (closed below)
    try:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return False
        offset = 12
        while True:
            handle.seek(offset)
            chunk = handle.read(8)
            if len(chunk) < 8:
                return False
            size = struct.unpack("<I", chunk[4:])[0]
            if chunk[:4] == b"data":
                handle.seek(0, os.SEEK_END)
                available = handle.tell() - offset - 8
                # 0 and 0xFFFFFFFF: a header written before the length was known (streams)
                return size not in (0, 0xFFFFFFFF) and available < size
            offset += 8 + size + (size & 1)
    finally:
        if close:
            handle.close()
        else:
            handle.seek(0)


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
