"""The rollout path the online objectives (GRPO, PPO) share: sample, decode, score, re-score.

`sample` asks the modality for each prompt's generation inputs (`Modality.prompt_batch`: chat
prompts for text; conversations with their images for vision-language), samples
`num_generations` completions per prompt with the current policy (eval mode, KV cache on,
seeded, the caller's RNG left as it was), cuts each after its first end-of-sequence token and
decodes them. `score_tokens` runs a model over prompt + completion and returns the
completions' per-token log-probabilities under the distribution they were sampled from
(logits / temperature), with each token's entropy and, when asked, the last hidden states
(PPO's value head reads them). Positions follow the attention mask, as `generate()` gives
them, so left padding does not shift a prompt.

A vision-language processor's placeholder tokens (`<image>`, `<|video_pad|>`, ...) are never
sampled and have no probability in the scored distribution: a completion holding one would
ask the model for image features it was not given, and the re-scoring forward would fail.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omnitune.trainers.config import RunConfig

#: Model families whose forward builds its own (multimodal rotary) positions from the inputs.
OWN_POSITIONS = frozenset({"qwen2_vl", "qwen2_5_vl", "qwen3_vl"})


@dataclass
class Rollout:
    """One batch of sampled completions: `rows` holds the data row of each completion (each
    prompt's row repeated `num_generations` times, in order)."""

    prompt_ids: Any
    prompt_mask: Any
    completion_ids: Any
    completion_mask: Any
    extras: dict[str, Any]  # the prompt's other model inputs (pixel_values, ...)
    texts: list[str]
    rows: list[dict[str, Any]]
    generation_seconds: float = 0.0
    suppressed: tuple[int, ...] = ()  # token ids never sampled (media placeholders)

    @property
    def width(self) -> int:
        return self.completion_ids.shape[1]


def sample(
    policy: Any,
    processor: Any,
    modality: Any,
    items: list[dict[str, Any]],
    config: RunConfig,
    seed: int,
) -> Rollout:
    """`config.objective.num_generations` sampled completions for each item's prompt."""
    import torch

    section = config.objective
    rows = [item for item in items for _ in range(section.num_generations)]
    started = time.perf_counter()
    inputs = modality.prompt_batch(processor, rows, config)
    device = next(policy.parameters()).device
    inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
    tokenizer = tokenizer_of(processor)
    suppressed = media_token_ids(processor)
    was_training = policy.training
    policy.eval()
    rng_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            output = policy.generate(
                **inputs,
                do_sample=True,
                temperature=section.temperature,
                top_p=section.top_p,
                top_k=0,  # transformers' default top-k of 50 would sample another distribution
                max_new_tokens=section.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                suppress_tokens=list(suppressed) or None,
                use_cache=True,
            )
    finally:
        torch.set_rng_state(rng_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
        policy.train(was_training)
    prompt_ids, prompt_mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
    completion = output[:, prompt_ids.shape[1] :]
    completion_mask = _up_to_first_end(completion, tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(
        completion.masked_fill(completion_mask == 0, tokenizer.pad_token_id),
        skip_special_tokens=True,
    )
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion,
        completion_mask=completion_mask,
        extras=inputs,
        texts=texts,
        rows=rows,
        generation_seconds=time.perf_counter() - started,
        suppressed=suppressed,
    )


@dataclass
class Scored:
    logps: Any  # (completions, width): log-probability of each completion token
    entropy: Any  # (completions, width): the sampling distribution's entropy, no gradient
    hidden: Any = None  # (completions, width, hidden): the states that predicted each token


def score_tokens(
    model: Any,
    rollout: Rollout,
    temperature: float,
    rows: Any = None,
    hidden: bool = False,
    chunked: bool = False,
) -> Scored:
    """Per-token log-probabilities of the completions (of `rows`, an index tensor, or all);
    `chunked`: through the head in chunks of positions (trainers/chunked_loss.py)."""
    import torch

    from omnitune.trainers.chunked_loss import IGNORE, position_logps

    ids, inputs = _inputs(model, rollout, rows)
    width = rollout.width
    targets = torch.full_like(ids, IGNORE)
    targets[:, -width - 1 : -1] = ids[:, -width:]
    scores = position_logps(
        model,
        {**inputs, "output_hidden_states": hidden},
        targets,
        chunked,
        temperature,
        rollout.suppressed,
        with_entropy=True,
    )
    states = scores.output.hidden_states[-1][:, -width - 1 : -1] if hidden else None
    return Scored(
        logps=scores.logps[:, -width - 1 : -1],
        entropy=scores.entropy[:, -width - 1 : -1],
        hidden=states,
    )


def completion_logits(model: Any, rollout: Rollout) -> Any:
    """The logits [completions, width, vocabulary] that predict each completion token (on-policy
    distillation compares the student's and the teacher's over the whole vocabulary)."""
    _, inputs = _inputs(model, rollout, None)
    return model(**inputs).logits[:, -rollout.width - 1 : -1]


def _inputs(model: Any, rollout: Rollout, rows: Any) -> tuple[Any, dict[str, Any]]:
    """The ids of prompt + completion (of `rows`, or all) and the model inputs that read them."""
    import torch

    pick = slice(None) if rows is None else rows
    ids = torch.cat([rollout.prompt_ids[pick], rollout.completion_ids[pick]], dim=1)
    mask = torch.cat([rollout.prompt_mask[pick], rollout.completion_mask[pick]], dim=1)
    inputs = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
    for name, value in rollout.extras.items():
        value = _rows_of(name, value, rows, rollout.prompt_ids.shape[0])
        inputs[name] = _extend(value, rollout.prompt_ids[pick].shape, rollout.width)
    if _model_type(model) not in OWN_POSITIONS:
        inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, inputs


def masked_mean(values: Any, mask: Any) -> Any:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def rollout_seed(seed: int, indices: list[int]) -> int:
    """The sampling seed of the batch `indices` in a run seeded `seed`: a resumed run draws
    the same completions for the same step."""
    return (seed * 1_000_003 + zlib.crc32(repr(indices).encode())) % (2**31)


def online_metric_directions(modality: Any) -> dict[str, str]:
    """GRPO's and PPO's selection metrics: the modality's generated metric (held-out exact
    match, VQA accuracy) first, then its own (loss, perplexity, ...)."""
    return {**modality.pair_metric_directions, **modality.metric_directions}


def media_token_ids(processor: Any) -> tuple[int, ...]:
    """The processor's image/video/audio placeholder token ids (none for a text tokenizer):
    whatever `*_token_id` attribute of the processor or its tokenizer names a medium, less the
    end, padding and start tokens."""
    tokenizer = tokenizer_of(processor)
    keep = {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id}
    found: set[int] = set()
    for owner in {id(processor): processor, id(tokenizer): tokenizer}.values():
        for name in dir(owner):
            if not name.endswith("token_id") or name.startswith("_"):
                continue
            if not any(medium in name for medium in ("image", "video", "audio", "vision")):
                continue
            try:
                value = getattr(owner, name)
            except Exception:  # a property that cannot answer names no token
                continue
            if isinstance(value, int) and value >= 0 and value not in keep:
                found.add(value)
    return tuple(sorted(found))


def tokenizer_of(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def reward_label(name: str) -> str:
    """A reward function's name as a metric suffix (`reward_<label>`)."""
    return name.replace(":", "_").replace(".", "_").replace("/", "_")


def _up_to_first_end(completion: Any, eos_token_id: int) -> Any:
    import torch

    is_end = completion == eos_token_id
    first_end = torch.where(
        is_end.any(1),
        is_end.float().argmax(1),
        torch.full_like(is_end[:, 0], completion.shape[1], dtype=torch.long),
    )
    positions = torch.arange(completion.shape[1], device=completion.device).unsqueeze(0)
    return (positions <= first_end.unsqueeze(1)).long()


def _rows_of(name: str, value: Any, rows: Any, total: int) -> Any:
    """The minibatch `rows` of a prompt field that has one row per completion."""
    if rows is None or not hasattr(value, "shape"):
        return value
    if value.shape[0] == total:
        return value[rows]
    from omnitune.core.errors import ConfigError

    raise ConfigError(
        f"objective.ppo_minibatches: this model's {name} is not one row per sample, so a "
        "rollout cannot be split into minibatches; set objective.ppo_minibatches=1"
    )


def _extend(value: Any, prompt_shape: Any, width: int) -> Any:
    """A per-token prompt field (Qwen2-VL's mm_token_type_ids) padded with zeros over the
    completion; image tensors pass through."""
    import torch

    per_token = hasattr(value, "shape") and value.dim() == 2
    if per_token and tuple(value.shape) == tuple(prompt_shape[:2]):
        return torch.cat([value, value.new_zeros(value.shape[0], width)], dim=1)
    return value


def _model_type(model: Any) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)
