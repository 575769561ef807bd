"""Group Relative Policy Optimization (Shao et al., 2024): rollouts inside the step.

For each prompt of a batch the current policy samples `objective.num_generations`
completions (the adapter's model in eval mode, KV cache on), the reward functions of
`objective.rewards` score them (`omnitune.trainers.rewards`), and each completion's advantage
is its reward minus its group's mean (divided by the group's std unless
`objective.scale_rewards` is off, as Dr. GRPO advises). The loss is the clipped policy-ratio
objective with a KL penalty to the reference policy (the adapter disabled, or a frozen copy for
full fine-tuning; k3 estimator), aggregated per `objective.loss_aggregation`. One policy update
per rollout, so the ratio is 1 when the gradient is taken and the clip never binds: TRL's
default (`num_iterations=1`) as well. Groups whose rewards are all equal carry no signal; they
are skipped and counted. Sampling is seeded from the run's seed and the batch's example
indices, so a resumed run draws the same completions.

Data: the modality's SFT rows (text: chat rows or prompt/completion); the prompt is the
conversation up to the last assistant turn and that turn's text is the `answer` column the
built-in rewards compare with.
"""

from __future__ import annotations

import math
import statistics
import time
import zlib
from typing import Any

from omnitune.trainers.objectives import LossContext, Objective, StepLoss
from omnitune.trainers.objectives.sft import evaluate


def read_prompts(modality: Any, source: str, config: Any, processor: Any, training: bool) -> Any:
    examples = modality.dataset(source, config, processor, training=training)
    keep = [i for i, item in enumerate(examples.items) if "prompt_messages" in item]
    dropped = len(examples) - len(keep)
    if dropped:
        examples.skipped["no prompt and answer (chat or prompt/completion rows)"] += dropped
        examples.items = [examples.items[i] for i in keep]
        examples.lengths = [examples.lengths[i] for i in keep]
        examples.groups = [examples.groups[i] for i in keep]
    examples.noun = "prompts"
    return examples


def prompt_collator(modality: Any, processor: Any, config: Any, training: bool) -> Any:
    if not training:
        return modality.collator(processor, config, training=False)

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"items": items}

    return collate


def make_loss(context: LossContext) -> StepLoss:
    import torch

    config, section = context.config, context.config.objective
    policy, tokenizer = context.model, context.processor

    def step_loss(model: Any, batch: dict[str, Any], indices: list[int]) -> tuple[Any, dict]:
        from omnitune.trainers.rewards import score

        items = batch["items"]
        started = time.perf_counter()
        prompt_ids, prompt_mask, completion_ids, completion_mask = rollout(
            policy, tokenizer, items, section, seed=_seed(config.train.seed, indices)
        )
        generated = time.perf_counter()
        texts = tokenizer.batch_decode(
            completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id),
            skip_special_tokens=True,
        )
        rows = [item for item in items for _ in range(section.num_generations)]
        rewards, per_function, failed = score(section.rewards, texts, rows)
        scored = time.perf_counter()

        advantages, usable, zero_variance = group_advantages(
            rewards, section.num_generations, section.scale_rewards, completion_ids.device
        )
        ids = torch.cat([prompt_ids, completion_ids], dim=1)
        mask = torch.cat([prompt_mask, completion_mask], dim=1)
        width = completion_ids.shape[1]
        logps = completion_logps(model, ids, mask, width, section.temperature)
        with torch.no_grad():
            reference = _reference_logps(context.reference, ids, mask, width, section.temperature)
        ratio = torch.exp(logps - logps.detach())
        clipped = ratio.clamp(1 - section.clip_epsilon, 1 + section.clip_epsilon)
        adv = advantages.unsqueeze(1)
        per_token = -torch.min(ratio * adv, clipped * adv)
        delta = reference - logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + section.kl_coef * kl
        weights = completion_mask.float() * usable.float().unsqueeze(1)
        loss = aggregate(per_token, weights, section)
        lengths = completion_mask.sum(1).float()
        scored_rewards = [r for r in rewards if r is not None]
        metrics = {
            "reward": statistics.fmean(scored_rewards) if scored_rewards else math.nan,
            "reward_std": statistics.stdev(scored_rewards) if len(scored_rewards) > 1 else 0.0,
            **{f"reward_{_label(name)}": value for name, value in per_function.items()},
            "kl": (kl * completion_mask).sum() / completion_mask.sum().clamp(min=1),
            "clip_fraction": ((ratio != clipped).float() * completion_mask).sum()
            / completion_mask.sum().clamp(min=1),
            "completion_length": lengths.mean(),
            "zero_variance_groups": float(zero_variance),
            "reward_failures": float(failed),
            "generation_seconds": generated - started,
            "scoring_seconds": scored - generated,
        }
        return loss, {k: torch.as_tensor(v).detach() for k, v in metrics.items()}

    return step_loss


def rollout(policy: Any, tokenizer: Any, items: list[dict], section: Any, seed: int) -> tuple:
    """Left-padded prompts (each repeated num_generations times) and the sampled completions,
    cut after their first end-of-sequence token; masks mark real tokens."""
    import torch

    prompts = [item["prompt_messages"] for item in items for _ in range(section.num_generations)]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        inputs = tokenizer.apply_chat_template(
            prompts, add_generation_prompt=True, return_dict=True, return_tensors="pt", padding=True
        )
    finally:
        tokenizer.padding_side = side
    device = next(policy.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    was_training = policy.training
    policy.eval()
    rng_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            output = policy.generate(
                **inputs,
                do_sample=True,
                temperature=section.temperature,
                top_p=section.top_p,
                max_new_tokens=section.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                use_cache=True,
            )
    finally:
        torch.set_rng_state(rng_state)
        policy.train(was_training)
    completion = output[:, inputs["input_ids"].shape[1] :]
    is_end = completion == tokenizer.eos_token_id
    first_end = torch.where(
        is_end.any(1),
        is_end.float().argmax(1),
        torch.full_like(is_end[:, 0], completion.shape[1], dtype=torch.long),
    )
    positions = torch.arange(completion.shape[1], device=device).unsqueeze(0)
    completion_mask = (positions <= first_end.unsqueeze(1)).long()
    return inputs["input_ids"], inputs["attention_mask"], completion, completion_mask


def group_advantages(
    rewards: list[float | None], group: int, scale: bool, device: Any
) -> tuple[Any, Any, int]:
    """Per completion: reward minus the group mean (over the group's scored completions),
    divided by the group std if `scale`; whether the completion trains (scored, in a group
    whose rewards differ); and how many groups were skipped for zero variance."""
    import torch

    advantages = torch.zeros(len(rewards), device=device)
    usable = torch.zeros(len(rewards), dtype=torch.bool, device=device)
    zero_variance = 0
    for start in range(0, len(rewards), group):
        members = [
            (i, r) for i, r in enumerate(rewards[start : start + group], start) if r is not None
        ]
        values = torch.tensor([r for _, r in members], dtype=torch.float32)
        if len(members) < 2 or float(values.max() - values.min()) == 0.0:
            zero_variance += 1
            continue
        centred = values - values.mean()
        if scale:
            centred = centred / (values.std() + 1e-4)
        for (index, _), value in zip(members, centred.tolist(), strict=True):
            advantages[index], usable[index] = value, True
    return advantages, usable, zero_variance


def completion_logps(model: Any, ids: Any, mask: Any, width: int, temperature: float) -> Any:
    """Per-token log-probabilities of the last `width` tokens (the completions) under the
    distribution they were sampled from (logits / temperature), with the positions
    `generate()` gave them (left padding does not count)."""
    from omnitune.trainers.objectives.preference import token_logps

    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
    ).logits
    logits = logits[:, -width - 1 : -1] / temperature
    return token_logps(logits, ids[:, -width:])


def aggregate(per_token: Any, weights: Any, section: Any) -> Any:
    if section.loss_aggregation == "token":
        return (per_token * weights).sum() / weights.sum().clamp(min=1)
    if section.loss_aggregation == "dr_grpo":
        return (per_token * weights).sum() / (weights.shape[0] * section.max_new_tokens)
    per_sequence = (per_token * weights).sum(1) / weights.sum(1).clamp(min=1)
    trained = (weights.sum(1) > 0).float()
    return (per_sequence * trained).sum() / trained.sum().clamp(min=1)


def _reference_logps(reference: Any, ids: Any, mask: Any, width: int, temperature: float) -> Any:
    with reference.scoring() as model:
        return completion_logps(model, ids, mask, width, temperature)


def _seed(seed: int, indices: list[int]) -> int:
    return (seed * 1_000_003 + zlib.crc32(repr(indices).encode())) % (2**31)


def _label(name: str) -> str:
    return name.replace(":", "_").replace(".", "_")


OBJECTIVE = Objective(
    name="grpo",
    reads="prompts",
    modalities=frozenset({"text"}),
    needs_reference=True,
    data=read_prompts,
    collator=prompt_collator,
    loss=make_loss,
    evaluate=evaluate,
    metric_directions=lambda modality: {
        "exact_match": "max",
        **{k: v for k, v in modality.metric_directions.items() if k != "exact_match"},
    },
)
