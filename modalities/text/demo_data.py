"""A small, learnable chat task for demos and tests: digit words in, numerals out.

`seven three` -> `7 3`. Deterministic for a seed; each row also carries a `length` field
(`short` for one digit, `long` otherwise), an imbalanced label to balance on.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_chat(rng: random.Random) -> dict[str, Any]:
    digits = [rng.randrange(10) for _ in range(rng.randint(1, 3))]
    return {
        "messages": [
            {"role": "user", "content": " ".join(WORDS[d] for d in digits)},
            {"role": "assistant", "content": " ".join(map(str, digits))},
        ],
        "length": "short" if len(digits) == 1 else "long",
    }


def write_digit_chat(folder: Path, train: int = 256, test: int = 48, seed: int = 0) -> dict:
    """Write train.jsonl and test.jsonl under `folder`; returns {"train": path, "eval": path}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = {"train": folder / "train.jsonl", "eval": folder / "test.jsonl"}
    for split, count in (("train", train), ("eval", test)):
        rows = [json.dumps(digit_chat(rng)) for _ in range(count)]
        paths[split].write_text("\n".join(rows) + "\n")
    return paths
