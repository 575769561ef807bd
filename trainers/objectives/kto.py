"""Kahneman-Tversky Optimization (Ethayarajh et al., 2024): alignment from unpaired feedback.

Each row is one answer with a verdict (thumbs up or down), not a pair: what the monitor's
labels give (`omnitune monitor export` writes them under `kto/`). With r(y) = log pi(y|x) -
log pi_ref(y|x) an answer's log-ratio and z0 the reference point,
- a desirable answer costs w_d * (1 - sigmoid(beta * (r - z0))),
- an undesirable one costs w_u * (1 - sigmoid(beta * (z0 - r))),
and the loss is the mean over the batch's answers (the paper's eq. 7; TRL's `KTOTrainer`
computes the same). z0 estimates KL(pi || pi_ref) from answers paired with other rows' prompts
(`modalities.preference.mismatched_partners`): the batch's mean log-ratio of those mismatched
answers, clamped at 0 and detached, so that it sets the point the rewards are judged from but
is not itself trained. Within a batch of one process (TRL averages it over processes).

The paper advises weights with w_d * desirable / (w_u * undesirable) between 1 and 4/3; a run
whose data and weights fall outside says so once, with the weight that would fit.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from omnitune.modalities.preference import UNPAIRED_SIDES
from omnitune.trainers.objectives.options import NAME_HELP, ReferenceOptions
from omnitune.trainers.objectives.preference import preference_objective, read_unpaired

if TYPE_CHECKING:
    from omnitune.modalities.base import Examples, Modality
    from omnitune.trainers.config import RunConfig

log = logging.getLogger("omnitune.train")

#: The paper's advised range of (w_d * desirable) / (w_u * undesirable).
BALANCE_RANGE = (1.0, 4 / 3)

#: What best checkpoints may select on; the loss first (the default): label accuracy moves in
#: steps of one answer and sits near one half while desirable answers the model already gives
#: cannot gain much reward, so it is a coarse choice on small eval sets.
DIRECTIONS = {
    "loss": "min",
    "label_accuracy": "max",
    "reward_margin": "max",
    "reward_desirable": "max",
    "reward_undesirable": "min",
    "logp_desirable": "max",
    "logp_undesirable": "min",
}


class KtoOptions(ReferenceOptions):
    """`objective.name: kto`: the rewards' scale, the weights of the two verdicts and the
    reference."""

    name: Literal["kto"] = Field("kto", description=NAME_HELP)
    desirable_weight: float = Field(
        1.0, gt=0, description="Weight of a desirable answer's loss (thumbs up)."
    )
    undesirable_weight: float = Field(
        1.0, gt=0, description="Weight of an undesirable answer's loss (thumbs down)."
    )


def kto_terms(
    logps: Any, counts: Any, reference: Any, section: KtoOptions, batch: dict[str, Any]
) -> tuple[Any, dict]:
    import torch

    half = logps.shape[0] // 2
    ratios = logps - reference
    answered, mismatched = ratios[:half], ratios[half:]
    z0 = mismatched.mean().detach().clamp(min=0)
    desirable = batch["desirable"].to(logps.device)
    rewards = section.beta * (answered - z0)
    # 1 - sigmoid(x) = sigmoid(-x): a desirable answer's reward is pushed up, an undesirable
    # one's down, each relative to z0.
    signed = torch.where(desirable, rewards, -rewards)
    weights = torch.where(
        desirable,
        torch.full_like(rewards, section.desirable_weight),
        torch.full_like(rewards, section.undesirable_weight),
    )
    loss = (weights * torch.sigmoid(-signed)).mean()
    metrics = {
        "loss": loss,
        "kl": z0,
        # An answer is on its label's side when its reward beats the reference point (desirable)
        # or falls short of it (undesirable): the analogue of DPO's reward accuracy.
        "label_accuracy": (signed > 0).float().mean(),
    }
    implicit = section.beta * answered.detach()
    for verdict, rows in (("desirable", desirable), ("undesirable", ~desirable)):
        if rows.any():
            metrics[f"reward_{verdict}"] = implicit[rows].mean()
            metrics[f"logp_{verdict}"] = logps[:half][rows].detach().mean()
    if "reward_desirable" in metrics and "reward_undesirable" in metrics:
        metrics["reward_margin"] = metrics["reward_desirable"] - metrics["reward_undesirable"]
    return loss, metrics


def read_answers(
    modality: Modality, source: str, config: RunConfig, processor: Any, training: bool
) -> Examples:
    """The modality's unpaired answers; for the training set, a warning when the verdicts'
    weighted balance is outside the paper's advised range."""
    answers = read_unpaired(modality, source, config, processor, training)
    if training and len(answers):
        _check_balance(answers, config.objective)
    return answers


def _check_balance(answers: Examples, section: KtoOptions) -> None:
    desirable = sum(1 for item in answers.items if item["desirable"])
    undesirable = len(answers) - desirable
    if not desirable or not undesirable:
        only, missing = ("desirable", "undesirable") if desirable else ("undesirable", "desirable")
        log.warning(
            "objective kto: every training answer is %s (none %s); KTO still trains, but "
            "judges answers on one side of its reference point only",
            only,
            missing,
        )
        return
    balance = section.desirable_weight * desirable / (section.undesirable_weight * undesirable)
    low, high = BALANCE_RANGE
    if low <= balance <= high:
        return
    fitting = section.undesirable_weight * undesirable / desirable
    log.warning(
        "objective kto: %d desirable and %d undesirable answers weigh %.2f:1 with these weights; "
        "the KTO paper advises 1:1 to 4:3 (e.g. objective.desirable_weight=%.2f)",
        desirable,
        undesirable,
        balance,
        fitting * (1 if balance < low else high),
    )


OBJECTIVE = preference_objective(
    "kto",
    kto_terms,
    needs_reference=True,
    options=KtoOptions,
    directions=DIRECTIONS,
    reads=("labelled answers", read_answers, UNPAIRED_SIDES),
    pooled=True,
)
