"""A small, learnable chat task (what `omnitune data sample text` writes): digit words in,
numerals out.

`seven three` -> `7 3`. Deterministic for a seed; each row also carries a `length` field
(`short` for one digit, `long` otherwise), an imbalanced label to balance on. Preference pairs
for the same task (`write_digit_pairs`) choose the right numerals over a plausible wrong answer;
unpaired feedback (`write_digit_feedback`, KTO's rows) labels one answer right or wrong. A
reversal task (`write_digit_reversal`) and a spelling task (`write_digit_spelling`) on the same
tokens are what a merge of two adapters is shown on.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_chat(rng: random.Random, sizes: tuple[int, int] = (1, 3)) -> dict[str, Any]:
    digits = [rng.randrange(10) for _ in range(rng.randint(*sizes))]
    return {
        "messages": [
            {"role": "user", "content": " ".join(WORDS[d] for d in digits)},
            {"role": "assistant", "content": " ".join(map(str, digits))},
        ],
        "length": "short" if len(digits) == 1 else "long",
    }


def write_splits(
    folder: Path,
    counts: dict[str, int],
    make_row: Callable[[], dict[str, Any]],
    finish: Callable[[list[dict[str, Any]]], None] | None = None,
) -> dict[str, Path]:
    """Write `counts["train"]` rows to `folder/train.jsonl`, then `counts["eval"]` to
    `folder/test.jsonl`, each row from `make_row()` (`finish` may amend a split's rows before
    they are written); returns {"train": path, "eval": path}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"train": folder / "train.jsonl", "eval": folder / "test.jsonl"}
    for split, path in paths.items():
        rows = [make_row() for _ in range(counts[split])]
        if finish is not None:
            finish(rows)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths


def write_digit_chat(
    folder: Path, train: int = 256, test: int = 48, seed: int = 0, sizes: tuple[int, int] = (1, 3)
) -> dict[str, Path]:
    """Write train.jsonl and test.jsonl under `folder` (numbers of `sizes` digits); returns
    {"train": path, "eval": path}."""
    rng = random.Random(seed)
    return write_splits(folder, {"train": train, "eval": test}, lambda: digit_chat(rng, sizes))


def digit_reversal(rng: random.Random, sizes: tuple[int, int] = (2, 4)) -> dict[str, Any]:
    """A second task on the same tokens, for merging adapters: numerals in, reversed out
    (`reverse 3 7 1` -> `1 7 3`)."""
    digits = [rng.randrange(10) for _ in range(rng.randint(*sizes))]
    return {
        "messages": [
            {"role": "user", "content": "reverse " + " ".join(map(str, digits))},
            {"role": "assistant", "content": " ".join(map(str, reversed(digits)))},
        ],
    }


def digit_spelling(rng: random.Random, sizes: tuple[int, int] = (2, 4)) -> dict[str, Any]:
    """The other task a merge is shown on: numerals in, digit words out (`spell 3 7` ->
    `three seven`), the digit-chat task backwards."""
    digits = [rng.randrange(10) for _ in range(rng.randint(*sizes))]
    return {
        "messages": [
            {"role": "user", "content": "spell " + " ".join(map(str, digits))},
            {"role": "assistant", "content": " ".join(WORDS[d] for d in digits)},
        ],
    }


def write_digit_spelling(
    folder: Path, train: int = 256, test: int = 48, seed: int = 0, sizes: tuple[int, int] = (2, 4)
) -> dict[str, Path]:
    """The spelling task's train.jsonl and test.jsonl under `folder`."""
    rng = random.Random(seed)
    return write_splits(folder, {"train": train, "eval": test}, lambda: digit_spelling(rng, sizes))


def write_digit_reversal(
    folder: Path, train: int = 256, test: int = 48, seed: int = 0, sizes: tuple[int, int] = (2, 4)
) -> dict[str, Path]:
    """The reversal task's train.jsonl and test.jsonl under `folder`."""
    rng = random.Random(seed)
    return write_splits(folder, {"train": train, "eval": test}, lambda: digit_reversal(rng, sizes))


def wrong_numerals(digits: list[int], rng: random.Random) -> str:
    """A plausible wrong answer: one digit changed, a digit dropped or doubled, or two swapped."""
    wrong = list(digits)
    choices = ["change", "double"] + (["drop", "swap"] if len(digits) > 1 else [])
    kind = rng.choice(choices)
    at = rng.randrange(len(wrong))
    if kind == "change":
        wrong[at] = (wrong[at] + rng.randint(1, 9)) % 10
    elif kind == "double":
        wrong.insert(at, wrong[at])
    elif kind == "drop":
        del wrong[at]
    else:
        other = (at + 1) % len(wrong)
        wrong[at], wrong[other] = wrong[other], wrong[at]
        if wrong == digits:  # swapping equal digits changes nothing
            wrong[at] = (wrong[at] + 1) % 10
    return " ".join(map(str, wrong))


def digit_pair(rng: random.Random, sizes: tuple[int, int] = (1, 3)) -> dict[str, Any]:
    """A preference pair for the digit-chat task: the right numerals chosen, a wrong one not."""
    digits = [rng.randrange(10) for _ in range(rng.randint(*sizes))]
    return {
        "prompt": " ".join(WORDS[d] for d in digits),
        "chosen": " ".join(map(str, digits)),
        "rejected": wrong_numerals(digits, rng),
    }


def write_digit_pairs(
    folder: Path, train: int = 256, test: int = 48, seed: int = 0, sizes: tuple[int, int] = (1, 3)
) -> dict[str, Path]:
    """Write preference pairs `train.jsonl` and `test.jsonl` (prompt/chosen/rejected) under
    `folder`, numbers of `sizes` digits; returns {"train": path, "eval": path}."""
    rng = random.Random(seed)
    return write_splits(folder, {"train": train, "eval": test}, lambda: digit_pair(rng, sizes))


def digit_feedback(rng: random.Random, sizes: tuple[int, int], desirable: float) -> dict:
    """A labelled answer for the digit-chat task: the right numerals (desirable) or wrong ones
    (undesirable), one answer per row as thumbs feedback gives them."""
    pair = digit_pair(rng, sizes)
    good = rng.random() < desirable
    return {
        "prompt": pair["prompt"],
        "completion": pair["chosen"] if good else pair["rejected"],
        "label": good,
    }


def write_digit_feedback(
    folder: Path,
    train: int = 256,
    test: int = 48,
    seed: int = 0,
    sizes: tuple[int, int] = (1, 3),
    desirable: float = 0.5,
) -> dict[str, Path]:
    """Write unpaired feedback `train.jsonl` and `test.jsonl` (prompt/completion/label, KTO's
    rows) under `folder`, a `desirable` share of them right; returns {"train", "eval"} paths."""
    rng = random.Random(seed)
    return write_splits(
        folder, {"train": train, "eval": test}, lambda: digit_feedback(rng, sizes, desirable)
    )
