"""Synthetic speech for tests: each digit word is a tone of its own pitch, so a tiny Whisper can
learn the mapping in a few dozen steps. Written as 16-bit WAV (and some FLAC) with a manifest."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
RATE = 16_000


def tone_utterance(digits: list[int], rng: random.Random) -> np.ndarray:
    parts = []
    for digit in digits:
        t = np.arange(int(0.25 * RATE)) / RATE
        pitch = 300 + 120 * digit
        parts.append(0.3 * np.sin(2 * np.pi * pitch * t) * np.hanning(len(t)))
        parts.append(np.zeros(int(0.08 * RATE)))
    audio = np.concatenate(parts)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 0.01, len(audio))
    return (audio + noise).astype(np.float32)


def write_tone_corpus(folder: Path, count: int, seed: int, broken: bool = False) -> Path:
    """`count` utterances of 1-3 digits; with `broken`, one corrupt and one silent file too."""
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        digits = [rng.randrange(10) for _ in range(rng.randint(1, 3))]
        name = f"utt{index:04d}.{'flac' if index % 5 == 0 else 'wav'}"
        soundfile.write(folder / name, tone_utterance(digits, rng), RATE)
        rows.append(
            {"audio": name, "text": " ".join(WORDS[d] for d in digits), "speaker": f"s{index % 3}"}
        )
    if broken:
        (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
        soundfile.write(folder / "silent.wav", np.zeros(RATE // 2, dtype=np.float32), RATE)
        rows += [{"audio": "corrupt.wav", "text": "one"}, {"audio": "silent.wav", "text": "two"}]
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest
