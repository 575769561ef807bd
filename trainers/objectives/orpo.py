"""Odds Ratio Preference Optimization (Hong et al., 2024): SFT and preference in one loss.

With p(y) = exp(mean token log-probability of y) and odds(y) = p / (1 - p):
loss = NLL(chosen) - beta * log sigmoid(log odds(chosen) - log odds(rejected)).
`objective.beta` is the paper's lambda. No reference model: the NLL term keeps the policy
near the chosen answers. Rewards are beta * mean log-probability, as TRL reports them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from omnitune.trainers.objectives.options import NAME_HELP, ObjectiveOptions
from omnitune.trainers.objectives.preference import (
    DIRECTIONS,
    preference_objective,
    reward_metrics,
)


def orpo_terms(
    logps: Any, counts: Any, reference: Any, section: OrpoOptions, batch: dict[str, Any]
) -> tuple[Any, dict]:
    import torch
    import torch.nn.functional as F

    half = logps.shape[0] // 2
    mean_logps = logps / counts.clamp(min=1)
    # log(1 - p) = log(-expm1(log p)); the clamp keeps a perfectly predicted answer finite.
    log_one_minus = torch.log(-torch.expm1(mean_logps.clamp(max=-1e-6)))
    log_odds = (mean_logps - log_one_minus)[:half] - (mean_logps - log_one_minus)[half:]
    odds_term = -F.logsigmoid(log_odds)
    # The NLL is the chosen answers' mean token loss over all their tokens, as in SFT.
    nll = -logps[:half].sum() / counts[:half].sum().clamp(min=1)
    loss = nll + section.beta * odds_term.mean()
    chosen, rejected = section.beta * mean_logps[:half], section.beta * mean_logps[half:]
    metrics = {
        "loss": loss,
        "nll": nll,
        "log_odds_ratio": log_odds.mean(),
        **reward_metrics(chosen, rejected, logps),
    }
    return loss, metrics


class OrpoOptions(ObjectiveOptions):
    """`objective.name: orpo`: the weight of the odds-ratio term."""

    name: Literal["orpo"] = Field("orpo", description=NAME_HELP)
    truncates: ClassVar[bool] = False
    beta: float = Field(
        0.1, gt=0, description="The weight of the odds-ratio term (the paper's lambda)."
    )


OBJECTIVE = preference_objective(
    "orpo",
    orpo_terms,
    needs_reference=False,
    options=OrpoOptions,
    directions={**DIRECTIONS, "nll": "min", "log_odds_ratio": "max"},
)
