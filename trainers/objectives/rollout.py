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

import contextlib
import time
import zlib
from collections.abc import Iterator
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
    #: samples per prompt when the rows of each group share one prompt that scoring may
    #: prefill once (text); 1: every row is scored whole
    group: int = 1

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
    group = section.num_generations
    rows = [item for item in items for _ in range(group)]
    started = time.perf_counter()
    device = next(policy.parameters()).device
    tokenizer = tokenizer_of(processor)
    suppressed = media_token_ids(processor)
    shared = shares_prompts(policy, modality)
    # A shared prompt is encoded (and prefilled) once for its whole group.
    inputs = modality.prompt_batch(processor, items if shared else rows, config)
    inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
    was_training = policy.training
    policy.eval()
    rng_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    torch.manual_seed(seed)
    try:
        with torch.no_grad(), adapter_merged(policy, shared):
            if shared:
                completion = sample_shared_prompts(
                    policy,
                    inputs["input_ids"],
                    inputs["attention_mask"],
                    group,
                    section,
                    suppressed,
                    end_token_ids(policy, tokenizer),
                    tokenizer.pad_token_id,
                )
                inputs = {k: v.repeat_interleave(group, 0) for k, v in inputs.items()}
            else:
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
                completion = output[:, inputs["input_ids"].shape[1] :]
    finally:
        torch.set_rng_state(rng_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
        policy.train(was_training)
    prompt_ids, prompt_mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
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
        group=group if shared else 1,
    )


@contextlib.contextmanager
def adapter_merged(policy: Any, wanted: bool = True) -> Iterator[None]:
    """A LoRA-family adapter merged into its base weights for the length of a rollout: each
    decoding step then runs one matmul per adapted layer instead of three (3.5% more
    completions/s on the GRPO bench, whose steps are mostly decoding). The adapted layers'
    base weights are copied first and put back exactly after, so merging and unmerging never
    drift the frozen weights (in bf16 they would). Nothing happens for a model without an
    adapter, a quantized base or a method peft cannot merge."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in policy.modules() if isinstance(m, BaseTunerLayer)] if wanted else []
    bases = [list(m.get_base_layer().parameters(recurse=False)) for m in layers]
    floating = (torch.float32, torch.bfloat16, torch.float16)
    if not layers or any(p.dtype not in floating for group in bases for p in group):
        yield
        return
    saved = [[p.detach().clone() for p in group] for group in bases]
    try:
        policy.merge_adapter()
    except (NotImplementedError, ValueError, TypeError, AttributeError):
        yield  # a method peft cannot merge: sample through the adapter
        return
    try:
        yield
    finally:
        policy.unmerge_adapter()
        with torch.no_grad():
            for group, copies in zip(bases, saved, strict=True):
                for parameter, copy in zip(group, copies, strict=True):
                    parameter.copy_(copy)


def shares_prompts(policy: Any, modality: Any) -> bool:
    """Whether the group's samples share one prefilled prompt: text prompts of a causal LM
    whose forward takes a KV cache as it is. Media prompts (their pixel tensors are not one
    row per prompt in every family) and prompt-learning adapters (PEFT prepends virtual
    tokens on every call) sample through `generate()` with each prompt repeated."""
    if modality.name != "text":
        return False
    peft_config = getattr(policy, "active_peft_config", None)
    return not getattr(peft_config, "is_prompt_learning", False)


def end_token_ids(policy: Any, tokenizer: Any) -> list[int]:
    """The tokens that end a sample, as `generate()` reads them: the generation config's
    end-of-sequence ids, else the tokenizer's."""
    configured = getattr(getattr(policy, "generation_config", None), "eos_token_id", None)
    if configured is None:
        configured = tokenizer.eos_token_id
    return [configured] if isinstance(configured, int) else list(configured)


def sample_shared_prompts(
    policy: Any,
    prompt_ids: Any,
    prompt_mask: Any,
    group: int,
    section: Any,
    suppressed: tuple[int, ...],
    end_ids: list[int],
    pad_id: int,
) -> Any:
    """`group` samples of each left-padded prompt: the prompts are prefilled once and their
    KV cache repeated for the group, then each step decodes one token for every sample.
    Sampling is `generate()`'s (suppressed tokens, temperature, top-p, multinomial draws in the
    same order, finished rows padded, a stop when all have ended), so the same seed draws the
    same completions; only the prompts' share of the work is done once instead of `group`
    times. Returns the completion ids [prompts x group, width]."""
    import torch

    positions = (prompt_mask.cumsum(-1) - 1).masked_fill(prompt_mask == 0, 1)
    output = policy(
        input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True
    )
    cache = output.past_key_values
    cache.batch_repeat_interleave(group)
    logits = output.logits[:, -1].float().repeat_interleave(group, 0)
    del output
    mask = prompt_mask.repeat_interleave(group, 0)
    last_position = positions[:, -1:].repeat_interleave(group, 0)
    ends = torch.tensor(end_ids, device=logits.device)
    unfinished = torch.ones(logits.shape[0], dtype=torch.long, device=logits.device)
    processors = _sampling_processors(
        suppressed, section.temperature, section.top_p, str(logits.device)
    )
    drawn = []
    for step in range(section.max_new_tokens):
        scores = processors(None, logits)  # none of these processors reads the input ids
        tokens = draw(torch.softmax(scores, dim=-1))
        tokens = tokens * unfinished + pad_id * (1 - unfinished)
        drawn.append(tokens)
        unfinished = unfinished & ~torch.isin(tokens, ends)
        if not unfinished.any() or step == section.max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        last_position = last_position + 1
        output = policy(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=last_position,
            past_key_values=cache,
            use_cache=True,
        )
        logits = output.logits[:, -1].float()
        del output
    return torch.stack(drawn, dim=1)


def draw(probabilities: Any) -> Any:
    """One token per row from its distribution, by inverse CDF: the first token whose
    cumulative probability exceeds a uniform draw (a token of probability 0 is never drawn).
    The same distribution as `torch.multinomial`, at 1/15 of its CPU time for 64 rows of 512
    tokens (0.05 vs 0.69 ms a call), which at GRPO's group sizes was 8% of a rollout."""
    import torch

    cumulative = probabilities.cumsum(dim=-1)
    uniform = torch.rand_like(cumulative[:, -1:]) * cumulative[:, -1:]
    index = torch.searchsorted(cumulative, uniform, right=True).squeeze(1)
    return index.clamp_(max=probabilities.shape[-1] - 1)


def _sampling_processors(
    suppressed: tuple[int, ...], temperature: float, top_p: float, device: str
) -> Any:
    """transformers' own logits processors, those `generate()` builds for these settings, in
    its order: suppressed tokens, temperature, top-p."""
    from transformers import (
        LogitsProcessorList,
        SuppressTokensLogitsProcessor,
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if suppressed:
        processors.append(SuppressTokensLogitsProcessor(list(suppressed), device=device))
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    return processors


@dataclass
class Scored:
    logps: Any  # (completions, width): log-probability of each completion token
    entropy: Any  # (completions, width): the distribution's entropy, no gradient (or None)
    hidden: Any = None  # (completions, width, hidden): the states that predicted each token


def score_tokens(
    model: Any,
    rollout: Rollout,
    temperature: float,
    rows: Any = None,
    hidden: bool = False,
    chunked: bool = False,
    entropy: bool = True,
) -> Scored:
    """Per-token log-probabilities of the completions (of `rows`, an index tensor, or all);
    `chunked`: through the head in chunks of positions (trainers/chunked_loss.py); `entropy`:
    also each position's entropy (the reference's is never used).

    A rollout whose groups share their prompt (text) is scored in two calls: every prompt but
    its last token once per group, its keys and values repeated for the group's samples
    (gradients flow back through the repeat), then each sample's last prompt token and
    completion over that cache. Same values and gradients as one forward over prompt +
    completion for every sample, with the prompt's work done once instead of `group` times.
    """
    import torch

    from omnitune.trainers.chunked_loss import IGNORE, position_logps

    width = rollout.width
    if rollout.group > 1 and rows is None and rollout.prompt_ids.shape[1] > 1:
        ids, inputs = _inputs_over_shared_prompts(model, rollout)
        targets = torch.full_like(ids, IGNORE)
        targets[:, :width] = rollout.completion_ids
    else:
        ids, inputs = _inputs(model, rollout, rows)
        targets = torch.full_like(ids, IGNORE)
        targets[:, -width - 1 : -1] = ids[:, -width:]
    scores = position_logps(
        model,
        {**inputs, "output_hidden_states": hidden},
        targets,
        chunked,
        temperature,
        rollout.suppressed,
        with_entropy=entropy,
    )
    columns = slice(ids.shape[1] - width - 1, ids.shape[1] - 1)
    states = scores.output.hidden_states[-1][:, columns] if hidden else None
    return Scored(
        logps=scores.logps[:, columns],
        entropy=scores.entropy[:, columns] if entropy else None,
        hidden=states,
    )


def _inputs_over_shared_prompts(model: Any, rollout: Rollout) -> tuple[Any, dict[str, Any]]:
    """Prefill each group's prompt, less its last token, once; the inputs that score every
    sample over that cache: [last prompt token, completion] (their ids, and the model
    inputs)."""
    import torch

    group = rollout.group
    mask = torch.cat([rollout.prompt_mask, rollout.completion_mask], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    prefix = rollout.prompt_ids.shape[1] - 1
    output = model(
        input_ids=rollout.prompt_ids[::group, :prefix],
        attention_mask=rollout.prompt_mask[::group, :prefix],
        position_ids=positions[::group, :prefix],
        use_cache=True,
        **_fewest_logits(model),
    )
    cache = output.past_key_values
    cache.batch_repeat_interleave(group)
    ids = torch.cat([rollout.prompt_ids[:, prefix:], rollout.completion_ids], dim=1)
    return ids, {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions[:, prefix:],
        "past_key_values": cache,
        "use_cache": True,
    }


def _fewest_logits(model: Any) -> dict[str, Any]:
    """`logits_to_keep=1` where the model's forward takes it (a prefill's logits are not
    used: at a 152k vocabulary they would be the largest tensor of the call)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    takes = "logits_to_keep" in inspect.signature(base.forward).parameters
    return {"logits_to_keep": 1} if takes else {}


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
