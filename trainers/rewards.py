"""Reward functions for online objectives (GRPO, PPO), by name, as modalities and objectives are.

A reward function takes the completions of a batch, the rows they answer (each with the
columns of its data row, `answer` and `prompt` among them) and its config entry, and returns
one float per completion. Built in: `exact_match` (the completion equals the row's answer after
whitespace normalisation), `numeric` (the numbers in the completion equal the answer's),
`regex` (the completion matches `pattern`), `length_penalty` (minus the characters beyond
`max_chars`, scaled), `vqa_match` (VQA answer normalisation: case, punctuation and spacing do
not count), `reward_model` (a sequence-classification checkpoint at `path` scores prompt and
completion, loaded with `from_pretrained` like every model), and a user's function named
`module:function`. The objective's reward is the
weighted sum of its entries. A function that raises, or returns a non-finite value, marks that
completion's reward as failed: the objective counts it and leaves the sample out.
"""

from __future__ import annotations

import functools
import importlib
import math
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from omnitune.core.errors import ConfigError

RewardFunction = Callable[[list[str], list[dict[str, Any]], Any], list[float]]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class RewardSpec(BaseModel):
    """One entry of `objective.rewards`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description=(
            "exact_match, numeric, regex, length_penalty, vqa_match, reward_model, or "
            "module:function."
        )
    )
    weight: float = Field(1.0, description="Weight in the sum of rewards.")
    column: str = Field("answer", description="The row column holding the reference answer.")
    pattern: str | None = Field(None, description="regex: the pattern a completion must match.")
    max_chars: int = Field(200, ge=0, description="length_penalty: characters allowed free.")
    path: str | None = Field(
        None,
        description=(
            "reward_model: folder or hub id of a sequence-classification model (one label: its "
            "logit is the reward; several: the probability of the last label)."
        ),
    )
    batch_size: int = Field(32, ge=1, description="reward_model: completions scored at once.")

    @model_validator(mode="after")
    def _model_has_path(self) -> RewardSpec:
        if self.name == "reward_model" and not self.path:
            raise ValueError("reward_model needs path (a sequence-classification checkpoint)")
        return self

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in REWARDS and ":" not in name:
            raise ValueError(
                f"unknown reward '{name}' (known: {', '.join(REWARDS)}, or module:function)"
            )
        return name


def exact_match(completions: list[str], rows: list[dict], spec: RewardSpec) -> list[float]:
    return [
        float(" ".join(c.split()) == " ".join(str(r[spec.column]).split()))
        for c, r in zip(completions, rows, strict=True)
    ]


def numeric(completions: list[str], rows: list[dict], spec: RewardSpec) -> list[float]:
    return [
        float(NUMBER.findall(c) == NUMBER.findall(str(r[spec.column])))
        for c, r in zip(completions, rows, strict=True)
    ]


def regex(completions: list[str], rows: list[dict], spec: RewardSpec) -> list[float]:
    if not spec.pattern:
        raise ConfigError("objective.rewards: regex needs a pattern")
    compiled = re.compile(spec.pattern)
    return [float(compiled.fullmatch(c.strip()) is not None) for c in completions]


def length_penalty(completions: list[str], rows: list[dict], spec: RewardSpec) -> list[float]:
    return [-max(0, len(c) - spec.max_chars) / max(spec.max_chars, 1) for c in completions]


def vqa_match(completions: list[str], rows: list[dict], spec: RewardSpec) -> list[float]:
    from omnitune.modalities.vision_language.metrics import normalise_answer

    return [
        float(normalise_answer(c) == normalise_answer(str(r[spec.column])))
        for c, r in zip(completions, rows, strict=True)
    ]


def reward_model(completions: list[str], rows: list[dict], spec: RewardSpec) -> list[float]:
    """The checkpoint's score of each (prompt, completion), as a chat when its tokenizer has a
    chat template, else the two texts on separate lines."""
    import torch

    model, tokenizer = _reward_model(spec.path)
    texts = [
        _conversation(tokenizer, str(row.get("prompt", "")), completion)
        for completion, row in zip(completions, rows, strict=True)
    ]
    scores: list[float] = []
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(texts), spec.batch_size):
            chunk = texts[start : start + spec.batch_size]
            inputs = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True)
            logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits.float()
            if logits.shape[-1] == 1:
                scores += logits[:, 0].tolist()
            else:
                scores += logits.softmax(-1)[:, -1].tolist()
    return scores


REWARDS: dict[str, RewardFunction] = {
    "exact_match": exact_match,
    "numeric": numeric,
    "regex": regex,
    "length_penalty": length_penalty,
    "vqa_match": vqa_match,
    "reward_model": reward_model,
}


def resolve(spec: RewardSpec) -> RewardFunction:
    """The function an entry names: a built-in, or `module:function` imported now."""
    if spec.name in REWARDS:
        return REWARDS[spec.name]
    if ":" not in spec.name:
        known = ", ".join(REWARDS)
        raise ConfigError(
            f"objective.rewards: unknown '{spec.name}' (known: {known}, or module:function)"
        )
    module, _, name = spec.name.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"objective.rewards: cannot import '{spec.name}': {exc}") from None


def score(
    specs: list[RewardSpec], completions: list[str], rows: list[dict[str, Any]]
) -> tuple[list[float | None], dict[str, float], int]:
    """Weighted total per completion (None where a function failed for it), each function's
    mean over the completions it scored, and how many completions failed."""
    totals: list[float | None] = [0.0] * len(completions)
    means: dict[str, float] = {}
    for spec in specs:
        function = resolve(spec)
        values = _call(function, completions, rows, spec)
        scored = []
        for at, value in enumerate(values):
            try:
                value = float(value)
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value) or totals[at] is None:
                totals[at] = None
                continue
            totals[at] += spec.weight * value
            scored.append(value)
        means[spec.name] = sum(scored) / len(scored) if scored else math.nan
    return totals, means, sum(t is None for t in totals)


@functools.lru_cache(maxsize=4)
def _reward_model(path: str) -> tuple[Any, Any]:
    """Loaded once per run: the classifier in eval mode on the training device, and its
    tokenizer (given a pad token if it has none, padding on the right)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"objective.rewards: cannot load reward_model {path}: {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Right padding: positions then count from each text's first token, so a completion scores
    # the same alone and in a batch (chat tokenizers often pad left, for generation).
    tokenizer.padding_side = "right"
    model.config.pad_token_id = tokenizer.pad_token_id
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.eval().to(device), tokenizer


def _conversation(tokenizer: Any, prompt: str, completion: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": completion},
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return f"{prompt}\n{completion}"


def _call(
    function: RewardFunction, completions: list[str], rows: list[dict], spec: RewardSpec
) -> list[Any]:
    """The function on the whole batch; where that raises, on each completion alone, so one
    bad sample costs only itself (NaN marks the ones that still fail)."""
    try:
        values = list(function(completions, rows, spec))
        if len(values) == len(completions):
            return values
    except ConfigError:  # the config is wrong (no such reward model): say so, once
        raise
    except Exception:  # a user's function: its failure costs samples, never the run
        pass
    values = []
    for completion, row in zip(completions, rows, strict=True):
        try:
            values.append(next(iter(function([completion], [row], spec))))
        except Exception:
            values.append(math.nan)
    return values
