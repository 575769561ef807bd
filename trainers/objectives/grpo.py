"""Group Relative Policy Optimization (Shao et al., 2024): rollouts inside the step.

For each prompt of a batch the current policy samples `objective.num_generations`
completions (`rollout.sample`: the adapter's model in eval mode, KV cache on), the reward
functions of `objective.rewards` score them (`omnitune.trainers.rewards`), and each
completion's advantage is its reward minus its group's mean (divided by the group's std unless
`objective.scale_rewards` is off, as Dr. GRPO advises). The loss is the clipped policy-ratio
objective with a KL penalty to the reference policy (the adapter disabled, or a frozen copy for
full fine-tuning; k3 estimator), aggregated per `objective.loss_aggregation`. One policy update
per rollout, so the ratio is 1 when the gradient is taken and the clip never binds: TRL's
default (`num_iterations=1`) as well. Groups whose rewards are all equal carry no signal; they
are skipped and counted. Sampling is seeded from the run's seed and the batch's example
indices, so a resumed run draws the same completions.

Data: the modality's SFT rows that end in an answer (text: chat rows or prompt/completion;
vision-language: image conversations or image/question/answer rows); the prompt is the
conversation up to the last assistant turn and that turn's text is the `answer` column the
built-in rewards compare with.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from omnitune.trainers.chunked_loss import chunking_wanted
from omnitune.trainers.objectives import LossContext, Objective, StepLoss
from omnitune.trainers.objectives.options import NAME_HELP, SamplingOptions
from omnitune.trainers.objectives.rollout import (
    Rollout,
    masked_mean,
    online_metric_directions,
    reward_label,
    rollout_seed,
    sample,
    score_tokens,
)
from omnitune.trainers.objectives.sft import evaluate

if TYPE_CHECKING:
    from omnitune.trainers.config import RunConfig


def read_prompts(
    modality: Any, source: str, config: RunConfig, processor: Any, training: bool
) -> Any:
    """The modality's examples that end in an answer: their prompts are what is sampled."""
    examples = modality.dataset(source, config, processor, training=training)
    keep = [i for i, item in enumerate(examples.items) if "answer" in item]
    dropped = len(examples) - len(keep)
    if dropped:
        examples.skipped["no prompt and answer (chat or prompt/completion rows)"] += dropped
        examples.items = [examples.items[i] for i in keep]
        examples.lengths = [examples.lengths[i] for i in keep]
        examples.groups = [examples.groups[i] for i in keep]
    examples.noun = "prompts"
    return examples


def prompt_collator(modality: Any, processor: Any, config: RunConfig, training: bool) -> Any:
    """Training batches are the items themselves (the rollout encodes their prompts);
    evaluation batches are the modality's SFT batches (held-out loss)."""
    if not training:
        return modality.collator(processor, config, training=False)

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"items": items}

    return collate


def rollout_and_score(context: LossContext, batch: dict[str, Any], indices: list[int]) -> tuple:
    """The step's rollout, each completion's total reward (None: a reward function failed on
    it), and the reward metrics: mean/std of the totals and of each function."""
    from omnitune.trainers.rewards import score

    config = context.config
    rollout = sample(
        context.model,
        context.processor,
        context.modality,
        batch["items"],
        config,
        seed=rollout_seed(config.train.seed, indices),
    )
    started = time.perf_counter()
    rewards, per_function, failed = score(config.objective.rewards, rollout.texts, rollout.rows)
    scored = [r for r in rewards if r is not None]
    metrics = {
        "reward": statistics.fmean(scored) if scored else math.nan,
        "reward_std": statistics.stdev(scored) if len(scored) > 1 else 0.0,
        **{f"reward_{reward_label(name)}": value for name, value in per_function.items()},
        "reward_failures": float(failed),
        "generation_seconds": rollout.generation_seconds,
        "scoring_seconds": time.perf_counter() - started,
    }
    return rollout, rewards, metrics


def make_loss(context: LossContext) -> StepLoss:
    import torch

    section = context.config.objective
    chunked = chunking_wanted(context.model, context.config.train.chunked_loss)

    def step_loss(model: Any, batch: dict[str, Any], indices: list[int]) -> tuple[Any, dict]:
        rollout, rewards, metrics = rollout_and_score(context, batch, indices)
        device = rollout.completion_ids.device
        advantages, usable, zero_variance = group_advantages(
            rewards, section.num_generations, section.scale_rewards, device
        )
        policy = score_tokens(model, rollout, section.temperature, chunked=chunked)
        with torch.no_grad():
            reference = reference_logps(
                context.reference, rollout, section.temperature, chunked=chunked
            )
        logps, mask = policy.logps, rollout.completion_mask
        ratio = torch.exp(logps - logps.detach())
        clipped = ratio.clamp(1 - section.clip_epsilon, 1 + section.clip_epsilon)
        adv = advantages.unsqueeze(1)
        per_token = -torch.min(ratio * adv, clipped * adv)
        kl = k3_kl(logps, reference)
        per_token = per_token + section.kl_coef * kl
        weights = mask.float() * usable.float().unsqueeze(1)
        loss = aggregate(per_token, weights, section)
        metrics |= {
            "kl": masked_mean(kl, mask),
            "clip_fraction": masked_mean((ratio != clipped).float(), mask),
            "entropy": masked_mean(policy.entropy, mask),
            "completion_length": mask.sum(1).float().mean(),
            "zero_variance_groups": float(zero_variance),
        }
        return loss, {k: torch.as_tensor(v).detach() for k, v in metrics.items()}

    return step_loss


def reference_logps(
    reference: Any, rollout: Rollout, temperature: float, rows: Any = None, chunked: bool = False
) -> Any:
    """The completions' per-token log-probabilities under the reference policy."""
    with reference.scoring() as model:
        scored = score_tokens(
            model, rollout, temperature, rows=rows, chunked=chunked, entropy=False
        )
        return scored.logps


def k3_kl(logps: Any, reference: Any) -> Any:
    """Per-token KL(policy || reference), Schulman's unbiased, always-positive k3 estimator."""
    import torch

    delta = reference - logps
    return torch.exp(delta) - delta - 1


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


def aggregate(per_token: Any, weights: Any, section: GrpoOptions) -> Any:
    if section.loss_aggregation == "token":
        return (per_token * weights).sum() / weights.sum().clamp(min=1)
    if section.loss_aggregation == "dr_grpo":
        return (per_token * weights).sum() / (weights.shape[0] * section.max_new_tokens)
    per_sequence = (per_token * weights).sum(1) / weights.sum(1).clamp(min=1)
    trained = (weights.sum(1) > 0).float()
    return (per_sequence * trained).sum() / trained.sum().clamp(min=1)


class GrpoOptions(SamplingOptions):
    """`objective.name: grpo`: the sampling options, and how a group's losses are summed."""

    name: Literal["grpo"] = Field("grpo", description=NAME_HELP)
    scale_rewards: bool = Field(
        True, description="Divide advantages by the group's reward std (off: Dr. GRPO)."
    )
    loss_aggregation: Literal["sequence", "token", "dr_grpo"] = Field(
        "sequence",
        description=(
            "sequence (each completion's mean token loss, averaged: the GRPO paper), "
            "token (every token weighs the same: DAPO), dr_grpo (summed per completion over "
            "a constant max_new_tokens: Dr. GRPO)."
        ),
    )

    @field_validator("num_generations")
    @classmethod
    def _a_group(cls, count: int) -> int:
        if count < 2:
            raise ValueError(
                "GRPO compares completions within a group; sample at least 2 per prompt"
            )
        return count


OBJECTIVE = Objective(
    name="grpo",
    reads="prompts",
    modalities=frozenset({"text", "vision_language"}),
    needs_reference=True,
    data=read_prompts,
    collator=prompt_collator,
    loss=make_loss,
    evaluate=evaluate,
    metric_directions=online_metric_directions,
    options=GrpoOptions,
)
