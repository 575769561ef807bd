"""What DPO and ORPO share: preference pairs, one forward pass for both answers, and metrics.

A batch holds the B chosen rows then the B rejected rows (the modality's `pair_collator`), so
one forward pass scores both answers of every pair. Each answer's score is the sum of its
tokens' log-probabilities under the policy (and, for DPO, under the reference); the objective's
`terms` turn those into the loss and its metrics. Evaluation runs the same terms over the eval
pairs, so the training log and `omnitune eval` report the same quantities.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from omnitune.core.errors import ConfigError
from omnitune.trainers.objectives import LossContext, Objective, StepLoss
from omnitune.trainers.objectives.options import ObjectiveOptions

if TYPE_CHECKING:
    from omnitune.trainers.config import RunConfig

#: (policy logps [2B], answer token counts [2B], reference logps [2B] or None, objective
#: section) -> (loss, {metric: tensor}); chosen rows first, then rejected.
Terms = Callable[[Any, Any, Any, Any], tuple[Any, dict[str, Any]]]

#: Metrics every preference objective reports; what best-checkpoint selection may use.
DIRECTIONS = {
    "reward_accuracy": "max",
    "loss": "min",
    "reward_margin": "max",
    "reward_chosen": "max",
    "reward_rejected": "min",
    "logp_chosen": "max",
    "logp_rejected": "min",
}
MODEL_INPUTS_EXCLUDED = ("labels", "reference_logps")


def read_pairs(
    modality: Any, source: str, config: RunConfig, processor: Any, training: bool
) -> Any:
    if modality.pairs is None:
        raise ConfigError(
            f"objective.name: {config.objective.name} needs preference pairs, which the "
            f"{modality.name} modality does not read"
        )
    return modality.pairs(source, config, processor, training)


def pair_collator(modality: Any, processor: Any, config: RunConfig, training: bool) -> Any:
    return modality.pair_collator(processor, config, training)


def answer_logps(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Summed log-probability of each row's answer tokens, and how many tokens it has."""
    inputs = {k: v for k, v in batch.items() if k not in MODEL_INPUTS_EXCLUDED}
    logits = model(**inputs, use_cache=False).logits
    labels = batch["labels"]
    # Prompt tuning prepends virtual tokens: keep the logits of the real positions.
    logits = logits[:, -labels.shape[1] :][:, :-1]
    labels = labels[:, 1:]
    mask = labels != -100
    picked = token_logps(logits, labels.clamp(min=0))
    return (picked * mask).sum(-1), mask.sum(-1)


def token_logps(logits: Any, labels: Any) -> Any:
    """log softmax(logits)[label] per position, without materialising the whole softmax in
    fp32 when the logits are half precision: logit - logsumexp(logits)."""
    import torch

    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1).float()
    return picked - torch.logsumexp(logits.float(), dim=-1)


def make_loss(terms: Terms) -> Callable[[LossContext], StepLoss]:
    def build(context: LossContext) -> StepLoss:
        section = context.config.objective
        reference = context.reference

        def step_loss(model: Any, batch: dict[str, Any], indices: list[int]) -> tuple[Any, dict]:
            logps, counts = answer_logps(model, batch)
            reference_logps = None if reference is None else reference.logps(batch)
            loss, metrics = terms(logps, counts, reference_logps, section)
            return loss, {k: v.detach() for k, v in metrics.items()}

        return step_loss

    return build


def make_evaluate(terms: Terms) -> Callable[..., dict[str, float]]:
    def evaluate(
        modality: Any, model: Any, processor: Any, pairs: Any, config: RunConfig, reference: Any
    ) -> dict[str, float]:
        """Means over the eval pairs of every metric the terms report (pairs weigh equally),
        then the generated metrics of the chosen answers that `eval.metrics` asks for."""
        import torch

        limit = min(len(pairs), config.data.max_eval_samples or len(pairs))
        items = [pairs[i] for i in range(limit)]
        collate = modality.pair_collator(processor, config, False)
        device = next(model.parameters()).device
        totals: dict[str, float] = {}
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, limit, config.eval.batch_size):
                    chunk = items[start : start + config.eval.batch_size]
                    batch = collate(chunk)
                    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
                    logps, counts = answer_logps(model, batch)
                    reference_logps = None if reference is None else reference.logps(batch)
                    _, metrics = terms(logps, counts, reference_logps, config.objective)
                    for name, value in metrics.items():
                        totals[name] = totals.get(name, 0.0) + float(value) * len(chunk)
        finally:
            model.train(was_training)
        result = {name: total / limit for name, total in totals.items()}
        if modality.pair_metrics is not None:
            result.update(modality.pair_metrics(model, processor, items, config))
        return result

    return evaluate


def preference_objective(
    name: str,
    terms: Terms,
    needs_reference: bool,
    options: type[ObjectiveOptions],
    more_metrics: dict[str, str] | None = None,
) -> Objective:
    def directions(modality: Any) -> dict[str, str]:
        return {**DIRECTIONS, **(more_metrics or {}), **modality.pair_metric_directions}

    return Objective(
        name=name,
        reads="preference pairs",
        modalities=frozenset({"text", "vision_language"}),
        needs_reference=needs_reference,
        data=read_pairs,
        collator=pair_collator,
        loss=make_loss(terms),
        evaluate=make_evaluate(terms),
        metric_directions=directions,
        options=options,
    )


def reward_metrics(chosen: Any, rejected: Any, logps: Any) -> dict[str, Any]:
    """Implicit rewards of both answers (chosen above rejected = a correct ranking)."""
    half = logps.shape[0] // 2
    return {
        "reward_accuracy": (chosen > rejected).float().mean(),
        "reward_chosen": chosen.mean(),
        "reward_rejected": rejected.mean(),
        "reward_margin": (chosen - rejected).mean(),
        "logp_chosen": logps[:half].mean(),
        "logp_rejected": logps[half:].mean(),
    }
