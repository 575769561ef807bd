"""A small, learnable chat task for demos and tests: digit words in, numerals out.

`seven three` -> `7 3`. Deterministic for a seed; each row also carries a `length` field
(`short` for one digit, `long` otherwise), an imbalanced label to balance on. Preference pairs
for the same task (`write_digit_pairs`) choose the right numerals over a plausible wrong answer.
"""

from __future__ import annotations

import json
import random
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


def write_digit_chat(
    folder: Path,
    train: int = 256,
    test: int = 48,
    seed: int = 0,
    sizes: tuple[int, int] = (1, 3),
) -> dict:
    """Write train.jsonl and test.jsonl under `folder` (numbers of `sizes` digits); returns
    {"train": path, "eval": path}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = {"train": folder / "train.jsonl", "eval": folder / "test.jsonl"}
    for split, count in (("train", train), ("eval", test)):
        rows = [json.dumps(digit_chat(rng, sizes)) for _ in range(count)]
        paths[split].write_text("\n".join(rows) + "\n")
    return paths


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
    folder: Path,
    train: int = 256,
    test: int = 48,
    seed: int = 0,
    sizes: tuple[int, int] = (1, 3),
) -> dict:
    """Write preference pairs `train.jsonl` and `test.jsonl` (prompt/chosen/rejected) under
    `folder`, numbers of `sizes` digits; returns {"train": path, "eval": path}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = {"train": folder / "train.jsonl", "eval": folder / "test.jsonl"}
    for split, count in (("train", train), ("eval", test)):
        rows = [json.dumps(digit_pair(rng, sizes)) for _ in range(count)]
        paths[split].write_text("\n".join(rows) + "\n")
    return paths


def write_model_pairs(
    model_dir: Path,
    folder: Path,
    train: int = 1024,
    test: int = 64,
    seed: int = 1,
    sizes: tuple[int, int] = (1, 5),
) -> dict:
    """Preference pairs whose rejected answers are the model's own mistakes ("on-policy"):
    the model answers every prompt greedily; where it is wrong, its answer is the rejected
    one, elsewhere a plausible wrong answer is made up. Needs torch and transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from omnitune.modalities.text.generation import answer_prompts
    from omnitune.trainers.config import RunConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = RunConfig.model_validate(
        {
            "model": {"name_or_path": str(model_dir), "modality": "text"},
            "data": {"train": "unused"},
            "train": {"max_steps": 1},
            "eval": {"batch_size": 64, "generation": {"max_new_tokens": 16}},
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = {"train": folder / "train.jsonl", "eval": folder / "test.jsonl"}
    for split, count in (("train", train), ("eval", test)):
        rows = [digit_pair(rng, sizes) for _ in range(count)]
        prompts = [[{"role": "user", "content": r["prompt"]}] for r in rows]
        for row, answer in zip(
            rows, answer_prompts(model, tokenizer, prompts, config), strict=True
        ):
            answer = " ".join(answer.split())
            if answer and answer != row["chosen"]:
                row["rejected"] = answer
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths
