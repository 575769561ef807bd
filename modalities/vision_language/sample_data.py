"""Real handwritten digits from scikit-learn's bundled `load_digits` (1,797 8x8 images, no
download), rendered as 32x32 PNGs with a question and its answer. Deterministic.

Two domains: `base` (white ink on black, as the set comes) and `shift` (dark ink on a tinted
background with sensor noise: scans from another device), for the adapt-to-a-shift demo.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np


def write_digit_vqa(
    folder: Path, start: int, count: int, broken: bool = False, domain: str = "base"
) -> Path:
    """Images `start` .. `start + count` of the set, and `data.jsonl` of image/question/answer
    rows; with `broken`, one truncated PNG too (for testing that it is skipped and counted)."""
    if domain not in {"base", "shift"}:
        raise ValueError(f"domain: '{domain}' is not base or shift")
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(start, start + count):
        pixels = (digits.images[index] * (255 / 16)).astype(np.uint8)
        image = Image.fromarray(pixels).resize((32, 32), Image.Resampling.NEAREST).convert("RGB")
        if domain == "shift":
            image = Image.fromarray(_shifted(np.asarray(image), index))
        name = f"digit{index:04d}.png"
        image.save(folder / name)
        rows.append(
            {
                "image": name,
                "question": "Which digit is this?",
                "answer": str(int(digits.target[index])),
                "domain": domain,
            }
        )
    if broken:
        (folder / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage")
        rows.append({"image": "truncated.png", "question": "Which digit is this?", "answer": "1"})
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _shifted(rgb: np.ndarray, index: int) -> np.ndarray:
    """Dark ink on a random pastel background, with Gaussian noise (seeded by the index)."""
    rng = np.random.default_rng(index)
    ink = rgb.astype(np.float32) / 255.0
    background = rng.uniform(0.6, 1.0, size=3)
    colour = background * (1.0 - ink)  # the digit is dark where the original was bright
    colour += rng.normal(0.0, 0.08, size=colour.shape)
    return (np.clip(colour, 0.0, 1.0) * 255).astype(np.uint8)


#: Digits a reader confuses with each other: the rejected answers of the preference pairs.
LOOKALIKES = {0: 6, 1: 7, 2: 7, 3: 8, 4: 9, 5: 6, 6: 5, 7: 1, 8: 3, 9: 4}


def write_digit_vqa_pairs(folder: Path, start: int, count: int, domain: str = "base") -> Path:
    """The digits of `write_digit_vqa` as preference pairs, `pairs.jsonl` beside the images:
    the right digit chosen, a look-alike (3 for 8, 7 for 1, ...) rejected."""
    data = write_digit_vqa(folder, start, count, domain=domain)
    rows = []
    for line in data.read_text().splitlines():
        row = json.loads(line)
        rows.append(
            {
                "image": row["image"],
                "prompt": row["question"],
                "chosen": row["answer"],
                "rejected": str(LOOKALIKES[int(row["answer"])]),
            }
        )
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_digit_vqa_feedback(
    folder: Path, start: int, count: int, domain: str = "base", desirable: float = 0.5
) -> Path:
    """The digits of `write_digit_vqa` as unpaired feedback (KTO's rows), `feedback.jsonl`
    beside the images: the right digit labelled desirable, or a look-alike labelled not, a
    `desirable` share of them right (seeded by `start`)."""
    data = write_digit_vqa(folder, start, count, domain=domain)
    rng = random.Random(start)
    rows = []
    for line in data.read_text().splitlines():
        row = json.loads(line)
        good = rng.random() < desirable
        answer = row["answer"] if good else str(LOOKALIKES[int(row["answer"])])
        rows.append(
            {"image": row["image"], "prompt": row["question"], "completion": answer, "label": good}
        )
    path = folder / "feedback.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
