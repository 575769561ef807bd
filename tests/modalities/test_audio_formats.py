"""Audio the trainer reads: every format, subtype, channel count and rate libsndfile reads gives
the features of its 16-kHz mono rendering; empty, truncated, non-audio, silent, non-finite and
over-long files are skipped and counted, never a traceback (issue 18, media inputs)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from omnitune.modalities.speech.audio import AudioProblem, audio_features, read_audio, resample
from tests import reliability
from tests.conftest import run_cli

pytestmark = pytest.mark.reliability

CORPUS = Path(__file__).resolve().parents[2] / "modalities" / "speech" / "corpus"
RATES = [8_000, 11_025, 16_000, 22_050, 44_100, 48_000, 96_000]
#: (format, subtype, rates it can hold, largest mean |difference| of Whisper log-mel features,
#: scale of the profile tolerances below): lossless formats differ by quantisation only, lossy
#: codecs by their coding noise, 8-bit PCM by a white noise floor 48 dB down (it lifts the
#: spectral centroid of the quiet frames)
FORMATS = [
    ("WAV", "PCM_16", RATES, 0.03, 1.0),
    ("WAV", "PCM_24", RATES, 0.03, 1.0),
    ("WAV", "PCM_32", RATES, 0.03, 1.0),
    ("WAV", "FLOAT", RATES, 0.03, 1.0),
    ("WAV", "DOUBLE", RATES, 0.03, 1.0),
    ("WAV", "PCM_U8", RATES, 0.25, 3.0),
    ("FLAC", "PCM_16", RATES, 0.03, 1.0),
    ("FLAC", "PCM_24", RATES, 0.03, 1.0),
    ("OGG", "VORBIS", RATES, 0.12, 1.0),
    ("OGG", "OPUS", [8_000, 16_000, 48_000], 0.12, 1.0),
    ("MP3", "MPEG_LAYER_III", RATES[:-1], 0.1, 1.0),  # MPEG audio stops at 48 kHz
]
#: Largest difference of each drift-profile feature (the monitor compares them with production).
PROFILE_TOLERANCE = {
    "duration_s": 0.01,
    "rms_dbfs": 0.3,
    "silence_ratio": 0.05,
    "zero_crossing_rate": 0.05,
    "spectral_centroid_hz": 60.0,
    "snr_db": 1.5,
}


@pytest.fixture(scope="module")
def extractor(tiny_model):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model("whisper")).feature_extractor


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """A shipped espeak-ng utterance at 16 kHz, band-limited below 3.4 kHz so that every rate
    from 8 kHz holds all of it (what an 8-kHz file cannot hold is not a reading error)."""
    import torch
    import torchaudio.functional as F

    samples, rate = soundfile.read(sorted((CORPUS / "base" / "train").glob("*.flac"))[0])
    at16 = torch.from_numpy(resample(samples.astype(np.float32), rate, 16_000))
    for _ in range(2):
        at16 = F.lowpass_biquad(at16, 16_000, 3_400.0)
    limited = at16.numpy()
    return (0.5 * limited / np.abs(limited).max()).astype(np.float32)


def log_mel(extractor, samples: np.ndarray, frames: int) -> np.ndarray:
    features = extractor(samples, sampling_rate=16_000, return_tensors="np").input_features[0]
    return features[:, :frames]


def test_every_format_rate_and_layout_gives_the_16khz_mono_features(extractor, speech, tmp_path):
    frames = int(np.ceil(len(speech) / 160))  # Whisper's 10 ms hop
    expected, profile = log_mel(extractor, speech, frames), audio_features(speech, 16_000)
    rows, failures, files = [], [], 0
    for container, subtype, rates, tolerance, scale in FORMATS:
        worst, worst_profile = 0.0, {k: 0.0 for k in PROFILE_TOLERANCE}
        for rate in rates:
            at_rate = resample(speech, 16_000, rate)
            for channels in (1, 2):
                # Stereo: the two channels differ (a quieter right channel), as recordings do.
                data = at_rate if channels == 1 else np.stack([at_rate, 0.6 * at_rate], axis=1)
                path = tmp_path / f"{subtype}-{rate}-{channels}.{container.lower()}"
                soundfile.write(path, data, rate, format=container, subtype=subtype)
                files += 1
                read = read_audio(path, 16_000)
                if channels == 2:
                    read = read / 0.8  # the down-mix is the channels' mean
                difference = float(np.abs(log_mel(extractor, read, frames) - expected).mean())
                worst = max(worst, difference)
                if difference > tolerance:
                    failures.append((path.name, difference))
                got = audio_features(read, 16_000)
                for key, limit in PROFILE_TOLERANCE.items():
                    off = abs(got[key] - profile[key])
                    worst_profile[key] = max(worst_profile[key], off)
                    if off > limit * scale:
                        failures.append((path.name, key, off))
        rows.append(
            {
                "format": f"{container} {subtype}",
                "rates (kHz)": ", ".join(f"{r / 1000:g}" for r in rates),
                "files": len(rates) * 2,
                "log-mel mean abs diff (worst)": round(worst, 4),
                "tolerance": tolerance,
                "RMS dB diff (worst)": round(worst_profile["rms_dbfs"], 3),
                "centroid Hz diff (worst)": round(worst_profile["spectral_centroid_hz"], 1),
            }
        )
    assert not failures, failures
    reliability.record(
        "audio-formats",
        "Audio formats read as their 16-kHz mono rendering",
        f"{files} files: one espeak-ng utterance (band-limited below 3.4 kHz) written in each "
        "format and subtype libsndfile writes here, at each rate from 8 to 96 kHz, mono and "
        "stereo, then read by the trainer's reader and compared with the 16-kHz mono original: "
        "Whisper log-mel features (mean absolute difference over the utterance's frames) and "
        "the drift-profile features the monitor compares.",
        rows,
    )


def bad_files(folder: Path, speech: np.ndarray, window_s: float = 30.0) -> dict[str, str]:
    """Files a dataset can hold that must be skipped, each with the reason it is counted under."""
    folder.mkdir(parents=True, exist_ok=True)
    whole: dict[str, bytes] = {}
    for container in ("WAV", "FLAC", "MP3"):
        buffer = io.BytesIO()
        soundfile.write(buffer, speech, 16_000, format=container)
        whole[container] = buffer.getvalue()
    png = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(png, "PNG")
    contents = {
        "empty.wav": (b"", "empty audio"),
        "no-frames.wav": (_wav_without_frames(), "empty audio"),
        "text.wav": (b"this is a transcript, not audio\n" * 10, "unreadable audio"),
        "picture.mp3": (png.getvalue(), "unreadable audio"),
        "noise-bytes.flac": (np.random.default_rng(0).bytes(8000), "unreadable audio"),
        "cut.wav": (whole["WAV"][: len(whole["WAV"]) // 2], "truncated audio"),
        "cut.flac": (whole["FLAC"][: len(whole["FLAC"]) // 2], "truncated audio"),
        "cut.mp3": (whole["MP3"][: len(whole["MP3"]) // 2], "truncated audio"),
    }
    reasons = {}
    for name, (content, reason) in contents.items():
        (folder / name).write_bytes(content)
        reasons[name] = reason
    soundfile.write(folder / "silent.wav", np.zeros(16_000, np.float32), 16_000)
    reasons["silent.wav"] = "silent audio"
    nan = speech.copy()
    nan[100] = np.nan
    soundfile.write(folder / "nan.wav", nan, 16_000, subtype="FLOAT")
    reasons["nan.wav"] = "non-finite audio"
    repeats = int(window_s * 16_000 / len(speech)) + 2
    soundfile.write(folder / "long.flac", np.tile(speech, repeats), 16_000)
    reasons["long.flac"] = f"longer than {window_s:g} s"
    return reasons


def _wav_without_frames() -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(0, np.float32), 16_000, format="WAV")
    return buffer.getvalue()


def test_unusable_files_are_refused_with_their_reason(speech, tmp_path):
    from omnitune.modalities.speech.audio import check_clip

    reasons = bad_files(tmp_path, speech)
    seen = {}
    for name in reasons:
        try:
            samples = read_audio(tmp_path / name, 16_000)
            check_clip(len(samples) / 16_000, float(np.sqrt(np.mean(samples**2))), 30.0)
            seen[name] = "read"
        except AudioProblem as problem:
            seen[name] = problem.reason
    assert seen == reasons
    # An upload held in memory is judged the same way as a file.
    with pytest.raises(AudioProblem, match="truncated audio"):
        read_audio(io.BytesIO((tmp_path / "cut.wav").read_bytes()), 16_000)


@pytest.mark.slow
def test_eval_skips_and_counts_bad_files_and_names_the_line_of_a_missing_one(
    tiny_model, speech, tmp_path
):
    """`omnitune eval` over a manifest of good and bad files: the bad ones are counted by
    reason in its summary; a row naming a file that is not there stops it with exit 1 and the
    manifest's line (the manifest is wrong, not the audio)."""
    from transformers import AutoProcessor

    window = AutoProcessor.from_pretrained(tiny_model("whisper")).feature_extractor.chunk_length
    folder = tmp_path / "data"
    reasons = bad_files(folder, speech, window_s=float(window))
    rows = [{"audio": name, "text": "bad"} for name in reasons]
    for index in range(3):
        soundfile.write(folder / f"good{index}.wav", speech, 16_000)
        rows.append({"audio": f"good{index}.wav", "text": "hello"})
    rows.append({"audio": "good0.wav"})  # no transcript
    manifest = folder / "manifest.jsonl"
    lines = [json.dumps(row) for row in rows] + ['{"audio": "good1.wav", "text": ']  # cut row
    manifest.write_text("\n".join(lines) + "\n")
    result = run_cli(
        "eval",
        str(tiny_model("whisper")),
        "--data",
        str(manifest),
        "data.options.language=en",
        "eval.generation.max_new_tokens=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    counts = {reason: list(reasons.values()).count(reason) for reason in set(reasons.values())}
    for reason, count in counts.items():
        assert f"{count} {reason}" in output, (reason, output[-3000:])
    assert "3 examples" in output and "1 no audio or text field" in output

    manifest.write_text(manifest.read_text() + json.dumps({"audio": "gone.wav", "text": "x"}))
    missing = run_cli("eval", str(tiny_model("whisper")), "--data", str(manifest))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert f"{manifest}:{len(lines) + 1}: audio file" in missing.stderr
    assert "gone.wav does not exist" in missing.stderr
    reliability.record(
        "audio-bad-files",
        "Unusable audio files in a dataset",
        "`omnitune eval` over a manifest of 3 good clips and these files: each is skipped and "
        "counted under its reason in the run's summary; none ends the evaluation. A manifest "
        "row naming a missing file stops it with exit 1 (a data error) and "
        "`FILE:LINE: audio file ... does not exist`.",
        [{"file": name, "skipped as": reason} for name, reason in reasons.items()],
    )
