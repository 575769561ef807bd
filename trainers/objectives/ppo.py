"""Proximal Policy Optimization for language models (Schulman et al., 2017; Ziegler et al.,
2019; Ouyang et al., 2022), on the rollout path GRPO uses.

Each step samples completions for the batch's prompts (`rollout.sample`), scores them with
the reward functions of `objective.rewards`, and then trains on that rollout buffer for
`objective.ppo_epochs` passes of `objective.ppo_minibatches` minibatches, one optimizer step
each (the loop's `update`: clipping and the non-finite check as for every objective):

- a value head (one linear layer on the policy's last hidden states, trained with it and saved
  with every checkpoint) estimates the return of each completion token;
- per-token rewards are the sequence reward on the last token, minus `kl_coef` times the
  policy-to-reference log-ratio on every token when `kl_penalty` is `reward` (the KL-shaped
  reward of Ziegler et al.); with `kl_penalty: loss` the reward is left alone and the k3 KL is
  added to the loss as in GRPO;
- advantages by GAE (`gamma`, `gae_lambda`), whitened over the buffer; returns are advantages
  plus the values measured at rollout time;
- the policy loss is the clipped ratio objective against the rollout-time log-probabilities
  (`clip_epsilon`); the value loss is the clipped squared error (`value_clip`), weighted by
  `vf_coef`.

Completions a reward function failed on are left out of every loss (counted). Minibatch order
comes from a generator seeded like the rollout, so a resumed run replays the same updates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from omnitune.trainers.chunked_loss import chunking_wanted
from omnitune.trainers.objectives import LossContext, Objective, StepLoss
from omnitune.trainers.objectives.grpo import (
    k3_kl,
    prompt_collator,
    read_prompts,
    reference_logps,
    rollout_and_score,
)
from omnitune.trainers.objectives.options import NAME_HELP, SamplingOptions
from omnitune.trainers.objectives.rollout import (
    masked_mean,
    online_metric_directions,
    rollout_seed,
    score_tokens,
)
from omnitune.trainers.objectives.sft import evaluate

if TYPE_CHECKING:
    from omnitune.trainers.config import RunConfig


def value_head(model: Any, config: RunConfig) -> dict[str, Any]:
    """The value head: hidden state -> expected return, zero-initialised (every state starts
    at value 0, so the first advantages are the rewards themselves)."""
    import torch

    hidden = model.config.get_text_config().hidden_size
    head = torch.nn.Linear(hidden, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return {"value": head}


def make_loss(context: LossContext) -> StepLoss:
    import torch

    section = context.config.objective
    chunked = chunking_wanted(context.model, context.config.train.chunked_loss)

    def step_loss(model: Any, batch: dict[str, Any], indices: list[int]) -> tuple[Any, dict]:
        head = context.heads["value"]
        rollout, rewards, metrics = rollout_and_score(context, batch, indices)
        mask = rollout.completion_mask.float()
        usable = torch.tensor([r is not None for r in rewards], device=mask.device)
        mask = mask * usable.float().unsqueeze(1)
        sequence_reward = torch.tensor(
            [0.0 if r is None else r for r in rewards], device=mask.device
        )
        with torch.no_grad():
            old = score_tokens(model, rollout, section.temperature, hidden=True, chunked=chunked)
            old_values = head(old.hidden.float()).squeeze(-1)
            reference = reference_logps(
                context.reference, rollout, section.temperature, chunked=chunked
            )
        log_ratio = old.logps - reference
        token_rewards = shaped_rewards(sequence_reward, log_ratio, mask, section)
        advantages, returns = generalised_advantages(
            token_rewards, old_values, mask, section.gamma, section.gae_lambda
        )
        advantages = whiten(advantages, mask)

        generator = torch.Generator().manual_seed(rollout_seed(context.config.train.seed, indices))
        count = len(rewards)
        size = -(-count // section.ppo_minibatches)
        totals: dict[str, list[Any]] = {}
        for _ in range(section.ppo_epochs):
            order = torch.randperm(count, generator=generator).to(mask.device)
            for start in range(0, count, size):
                rows = None if section.ppo_minibatches == 1 else order[start : start + size]
                pick = slice(None) if rows is None else rows
                parts = minibatch_loss(
                    model,
                    head,
                    rollout,
                    rows,
                    old.logps[pick],
                    old_values[pick],
                    advantages[pick],
                    returns[pick],
                    mask[pick],
                    reference[pick],
                    section,
                    chunked,
                )
                context.update(parts["loss"])
                for name, value in parts.items():
                    totals.setdefault(name, []).append(value.detach())
        means = {name: torch.stack(values).mean() for name, values in totals.items()}
        loss = means.pop("loss")
        metrics |= {
            **means,
            "kl": masked_mean(k3_kl(old.logps, reference), mask),
            "entropy": masked_mean(old.entropy, mask),
            "value_mean": masked_mean(old_values, mask),
            "completion_length": rollout.completion_mask.sum(1).float().mean(),
        }
        return loss, {k: torch.as_tensor(v).detach() for k, v in metrics.items()}

    return step_loss


def minibatch_loss(
    model: Any,
    head: Any,
    rollout: Any,
    rows: Any,
    old_logps: Any,
    old_values: Any,
    advantages: Any,
    returns: Any,
    mask: Any,
    reference: Any,
    section: PpoOptions,
    chunked: bool = False,
) -> dict[str, Any]:
    """The clipped policy loss, the clipped value loss and their weighted sum for `rows`."""
    import torch

    current = score_tokens(
        model, rollout, section.temperature, rows=rows, hidden=True, chunked=chunked
    )
    values = head(current.hidden.float()).squeeze(-1)
    ratio = torch.exp(current.logps - old_logps)
    clipped = ratio.clamp(1 - section.clip_epsilon, 1 + section.clip_epsilon)
    policy_loss = masked_mean(-torch.min(ratio * advantages, clipped * advantages), mask)
    values_clipped = old_values + (values - old_values).clamp(
        -section.value_clip, section.value_clip
    )
    value_loss = 0.5 * masked_mean(
        torch.max((values - returns) ** 2, (values_clipped - returns) ** 2), mask
    )
    loss = policy_loss + section.vf_coef * value_loss
    if section.kl_penalty == "loss":
        loss = loss + section.kl_coef * masked_mean(k3_kl(current.logps, reference), mask)
    return {
        "loss": loss,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "clip_fraction": masked_mean((ratio != clipped).float(), mask),
        "approx_kl_update": masked_mean(0.5 * (current.logps - old_logps) ** 2, mask),
    }


def shaped_rewards(sequence_reward: Any, log_ratio: Any, mask: Any, section: PpoOptions) -> Any:
    """Per-token rewards: the sequence's reward on its last token, and with
    `kl_penalty: reward` minus `kl_coef` x log(policy / reference) on every token."""
    import torch

    rewards = torch.zeros_like(mask)
    if section.kl_penalty == "reward":
        rewards = -section.kl_coef * log_ratio * mask
    last = (mask.sum(1) - 1).clamp(min=0).long()
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last] += sequence_reward * (mask.sum(1) > 0).float()
    return rewards


def generalised_advantages(
    rewards: Any, values: Any, mask: Any, gamma: float, lam: float
) -> tuple[Any, Any]:
    """GAE over each completion's tokens (Schulman et al., 2016). Masked positions hold zero
    reward and zero value, so the value after a completion's last token is 0. Returns
    (advantages, returns = advantages + values)."""
    import torch

    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    width = rewards.shape[1]
    for t in reversed(range(width)):
        following = values[:, t + 1] if t + 1 < width else torch.zeros_like(running)
        running = rewards[:, t] + gamma * following - values[:, t] + gamma * lam * running
        advantages[:, t] = running
    return advantages * mask, (advantages + values) * mask


def whiten(values: Any, mask: Any) -> Any:
    """Zero mean, unit variance over the masked entries (the masked-out stay 0)."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * (variance + 1e-8).rsqrt() * mask


class PpoOptions(SamplingOptions):
    """`objective.name: ppo`: the sampling options, the epochs over each rollout, GAE and the
    value head."""

    name: Literal["ppo"] = Field("ppo", description=NAME_HELP)
    ppo_epochs: int = Field(4, ge=1, le=64, description="Passes over each rollout buffer.")
    ppo_minibatches: int = Field(
        1, ge=1, le=1024, description="Minibatches (optimizer steps) per pass."
    )
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="Discount over tokens.")
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0, description="GAE's lambda.")
    vf_coef: float = Field(0.1, ge=0.0, description="Weight of the value loss.")
    value_clip: float = Field(
        0.2, gt=0, description="How far a value may move from its rollout-time estimate."
    )
    kl_penalty: Literal["reward", "loss"] = Field(
        "reward",
        description=(
            "Where the KL to the reference goes: reward (subtracted from each token's "
            "reward, Ziegler et al.) or loss (k3 KL added to the loss, as in GRPO)."
        ),
    )

    def fits(self, config: RunConfig) -> None:
        super().fits(config)
        if config.train.grad_accum != 1:
            raise ValueError(
                "train.grad_accum: PPO takes its own optimizer steps over each rollout; "
                "use objective.ppo_minibatches to split it, with grad_accum 1"
            )


OBJECTIVE = Objective(
    name="ppo",
    reads="prompts",
    modalities=frozenset({"text", "vision_language"}),
    needs_reference=True,
    data=read_prompts,
    collator=prompt_collator,
    loss=make_loss,
    evaluate=evaluate,
    metric_directions=online_metric_directions,
    heads=value_head,
    applies_updates=True,
    options=PpoOptions,
)
