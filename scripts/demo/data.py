"""Demo-only data: preference pairs made from the demo's own chat model's mistakes.

The sample datasets themselves (digit chats, digit images) are the library's
(`omnitune data sample`, `omnitune.modalities.*.sample_data`); this builds on them.
"""

from __future__ import annotations

import random
from pathlib import Path

from omnitune.modalities.text.sample_data import digit_pair, write_splits


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
    rng = random.Random(seed)

    def answer_with_the_model(rows: list[dict]) -> None:
        prompts = [[{"role": "user", "content": r["prompt"]}] for r in rows]
        for row, answer in zip(
            rows, answer_prompts(model, tokenizer, prompts, config), strict=True
        ):
            answer = " ".join(answer.split())
            if answer and answer != row["chosen"]:
                row["rejected"] = answer

    counts = {"train": train, "eval": test}
    return write_splits(folder, counts, lambda: digit_pair(rng, sizes), answer_with_the_model)
