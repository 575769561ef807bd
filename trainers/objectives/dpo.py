"""Direct Preference Optimization (Rafailov et al., 2023), with its IPO variant.

With r(y) = beta * (log pi(y|x) - log pi_ref(y|x)) the implicit reward of an answer and
d = r(chosen) - r(rejected):
- sigmoid (DPO): loss = -(1 - eps) log sigmoid(d) - eps log sigmoid(-d), where eps is
  `objective.label_smoothing`, the assumed share of flipped labels (cDPO); eps = 0 is DPO;
- ipo (Azar et al., 2023): loss = (d' - 1 / (2 beta))^2, where d' is the same difference of
  log-ratios with each answer's log-probability averaged over its tokens, unscaled by beta.
The reference policy is the model before training: the adapter disabled, a frozen copy, or
log-probabilities precomputed once (`omnitune.trainers.objectives.reference`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from omnitune.trainers.objectives.options import NAME_HELP, ReferenceOptions
from omnitune.trainers.objectives.preference import preference_objective, reward_metrics


class DpoOptions(ReferenceOptions):
    """`objective.name: dpo`: the implicit reward's scale, the loss and its reference."""

    name: Literal["dpo"] = Field("dpo", description=NAME_HELP)
    dpo_loss: Literal["sigmoid", "ipo"] = Field(
        "sigmoid",
        description="The loss: sigmoid (the DPO paper) or ipo (squared, per-token averaged).",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="Sigmoid loss: the assumed share of pairs whose labels are flipped.",
    )


def dpo_terms(
    logps: Any, counts: Any, reference: Any, section: DpoOptions, batch: dict[str, Any]
) -> tuple[Any, dict]:
    import torch.nn.functional as F

    half = logps.shape[0] // 2
    ratios = logps - reference
    chosen, rejected = section.beta * ratios[:half], section.beta * ratios[half:]
    if section.dpo_loss == "ipo":
        averaged = ratios / counts.clamp(min=1)
        gap = averaged[:half] - averaged[half:]
        losses = (gap - 1 / (2 * section.beta)) ** 2
    else:
        margin = chosen - rejected
        eps = section.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(margin) - eps * F.logsigmoid(-margin)
    loss = losses.mean()
    return loss, {"loss": loss, **reward_metrics(chosen, rejected, logps)}


OBJECTIVE = preference_objective("dpo", dpo_terms, needs_reference=True, options=DpoOptions)
