"""Synthesise the shipped speech demo corpus with Debian's espeak-ng (run once; output committed).

    sudo apt-get install espeak-ng        # 1.51 was used for the committed files
    .venv/bin/python scripts/make_speech_corpus.py [--out modalities/speech/corpus]

Two domains, each with train/test splits and a JSONL manifest per split
(`{"audio", "text", "speaker", "domain", "duration"}`):

- `base`: six espeak-ng voices (accent + voice variant), clean.
- `shift`: two voices never heard in `base`, mixed with background noise at 8-14 dB SNR:
  what a deployed model meets when the callers change.

Utterances are digit strings ("four one seven") and short commands ("turn on the light"),
spoken at several speeds and pitches, trimmed of leading and trailing silence, resampled to
16 kHz mono and written as 16-bit FLAC. Everything is drawn from a fixed seed, so the same
espeak-ng version writes the same corpus; the committed copy stays under 10 MB.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

RATE = 16_000
MAX_SECONDS = 1.9  # the tiny Whisper's window is 2 s
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COMMANDS = [
    "turn on the light",
    "turn off the light",
    "open the door",
    "close the door",
    "play music",
    "stop the music",
    "call home",
    "go left",
    "go right",
    "volume up",
    "volume down",
    "what time is it",
]
#: espeak-ng voice = accent + "+" + voice variant (`espeak-ng --voices=variant` lists them).
VOICES = {
    "base": ["en-us+m1", "en-us+f2", "en-gb+m3", "en-gb-x-rp+f4", "en-gb-scotland+m2", "en-029+f1"],
    "shift": ["en-us-nyc+croak", "en-gb-x-gbcwmd+f5"],
}
SPEEDS = [140, 160, 180]  # words per minute
PITCHES = [35, 50, 65]  # espeak-ng's 0-99 scale
SIZES = {
    ("base", "train"): 220,
    ("base", "test"): 40,
    ("shift", "train"): 80,
    ("shift", "test"): 40,
}
SHIFT_SNR_DB = (8.0, 14.0)


def sentence(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return " ".join(rng.choice(DIGITS) for _ in range(rng.randint(2, 4)))
    return rng.choice(COMMANDS)


def speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng's WAV -> mono float32 at 16 kHz, silence trimmed."""
    import soundfile

    from omnitune.modalities.speech.audio import resample

    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "speech.wav"  # --stdout's streamed WAV header has no length
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text],
            check=True,
            capture_output=True,
        )
        samples, rate = soundfile.read(wav, dtype="float32", always_2d=True)
    mono = resample(samples.mean(axis=1), rate, RATE)
    return trim(mono)


def trim(samples: np.ndarray, threshold: float = 0.01, margin_s: float = 0.05) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples) > threshold)
    if len(loud) == 0:
        return samples
    margin = int(margin_s * RATE)
    return samples[max(0, loud[0] - margin) : loud[-1] + margin]


def background_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Brown-ish noise plus a mains hum: a room, not a lab."""
    brown = np.cumsum(rng.normal(size=n))
    brown -= np.convolve(brown, np.ones(400) / 400, mode="same")  # keep it from drifting
    hum = np.sin(2 * np.pi * rng.choice([50.0, 60.0]) * np.arange(n) / RATE)
    noise = brown / (np.std(brown) + 1e-9) + 0.3 * hum
    return noise.astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    speech_power = np.mean(np.square(speech))
    noise_power = np.mean(np.square(noise))
    scale = np.sqrt(speech_power / (noise_power * 10 ** (snr_db / 10)))
    mixed = speech + scale * noise
    return (mixed / max(1.0, float(np.max(np.abs(mixed))) / 0.99)).astype(np.float32)


def build(out: Path, seed: int) -> dict[str, int]:
    import soundfile

    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: sudo apt-get install espeak-ng")
    rng = random.Random(seed)
    noise_rng = np.random.default_rng(seed)
    counts = {}
    for (domain, split), size in SIZES.items():
        folder = out / domain / split
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        rows = []
        while len(rows) < size:
            voice = VOICES[domain][len(rows) % len(VOICES[domain])]
            text = sentence(rng)
            speed, pitch = rng.choice(SPEEDS), rng.choice(PITCHES)
            samples = speak(text, voice, speed, pitch)
            if len(samples) / RATE > MAX_SECONDS:
                continue  # too long for the 2-s window: draw another sentence
            if domain == "shift":
                snr = rng.uniform(*SHIFT_SNR_DB)
                samples = mix_at_snr(samples, background_noise(len(samples), noise_rng), snr)
            name = f"{domain}-{split}-{len(rows):04d}.flac"
            soundfile.write(folder / name, samples, RATE, subtype="PCM_16", format="FLAC")
            rows.append(
                {
                    "audio": f"{split}/{name}",
                    "text": text,
                    "speaker": voice,
                    "domain": domain,
                    "duration": round(len(samples) / RATE, 3),
                }
            )
        manifest = out / domain / f"{split}.jsonl"
        manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
        counts[f"{domain}/{split}"] = len(rows)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "modalities" / "speech" / "corpus",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = build(args.out, args.seed)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(json.dumps({"written": counts, "megabytes": round(size / 1e6, 2), "out": str(args.out)}))


if __name__ == "__main__":
    main()
