"""What DPO, ORPO and KTO share: two answers per item, one forward pass for both, and metrics.

A batch holds the B first answers then the B second ones (the modality's `pair_collator`): a
pair's chosen then rejected answers, or KTO's labelled completions then their mismatched
partners. One forward pass scores both. Each answer's score is the sum of its tokens'
log-probabilities under the policy (and, with a reference, under the reference); the
objective's `terms` turn those into the loss and its metrics. Evaluation runs the same terms
over the eval set, so the training log and `omnitune eval` report the same quantities.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from omnitune.core.errors import ConfigError
from omnitune.modalities.evaluation import example_scores_wanted, log_example_scores
from omnitune.modalities.preference import PAIR_SIDES
from omnitune.trainers.chunked_loss import chunking_wanted
from omnitune.trainers.objectives import LossContext, Objective, StepLoss
from omnitune.trainers.objectives.options import ObjectiveOptions

if TYPE_CHECKING:
    from omnitune.trainers.config import RunConfig

#: (policy logps [2B], answer token counts [2B], reference logps [2B] or None, objective
#: section, batch) -> (loss, {metric: tensor}); first answers, then second. The batch brings
#: what else the collator put there (KTO's `desirable` flags).
Terms = Callable[[Any, Any, Any, Any, dict[str, Any]], tuple[Any, dict[str, Any]]]

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
MODEL_INPUTS_EXCLUDED = ("labels", "reference_logps", "desirable")


def reader_of(attribute: str, what: str) -> Callable[..., Any]:
    """The objective's data reader: the modality's `attribute` reader (`pairs`, `unpaired`),
    or a config error naming `what` the modality cannot read."""

    def read(modality: Any, source: str, config: RunConfig, processor: Any, training: bool) -> Any:
        reader = getattr(modality, attribute)
        if reader is None:
            raise ConfigError(
                f"objective.name: {config.objective.name} needs {what}, which the "
                f"{modality.name} modality does not read"
            )
        return reader(source, config, processor, training)

    return read


read_pairs = reader_of("pairs", "preference pairs")
read_unpaired = reader_of("unpaired", "answers labelled desirable or not")


def collator_of(sides: tuple[str, str]) -> Callable[..., Any]:
    """The objective's collator: the modality's pair collator over `sides` of each item."""

    def collator(modality: Any, processor: Any, config: RunConfig, training: bool) -> Any:
        return modality.pair_collator(processor, config, training, sides=sides)

    return collator


def answer_logps(model: Any, batch: dict[str, Any], chunked: bool = False) -> tuple[Any, Any]:
    """Summed log-probability of each row's answer tokens, and how many tokens it has;
    `chunked`: scored through the head in chunks (trainers/chunked_loss.py)."""
    from omnitune.trainers.chunked_loss import IGNORE, position_logps, shifted_targets

    inputs = {k: v for k, v in batch.items() if k not in MODEL_INPUTS_EXCLUDED}
    targets = shifted_targets(batch["labels"])
    logps = position_logps(model, {**inputs, "use_cache": False}, targets, chunked).logps
    return logps.sum(-1), (targets != IGNORE).sum(-1)


def make_loss(terms: Terms) -> Callable[[LossContext], StepLoss]:
    def build(context: LossContext) -> StepLoss:
        section = context.config.objective
        reference = context.reference

        chunked = chunking_wanted(context.model, context.config.train.chunked_loss)

        def step_loss(model: Any, batch: dict[str, Any], indices: list[int]) -> tuple[Any, dict]:
            logps, counts = answer_logps(model, batch, chunked)
            reference_logps = None if reference is None else reference.logps(batch)
            loss, metrics = terms(logps, counts, reference_logps, section, batch)
            return loss, {k: v.detach() for k, v in metrics.items()}

        return step_loss

    return build


def make_evaluate(
    terms: Terms, sides: tuple[str, str], pooled: bool
) -> Callable[..., dict[str, float]]:
    """The objective's evaluation: its terms over the eval set, then the generated metrics of
    the wanted answers that `eval.metrics` asks for. Per batch, weighted by the batch's items
    (pairs weigh equally), or `pooled`: over the whole set at once, for terms that estimate
    something across items (KTO's reference point, its per-label means)."""

    def evaluate(
        modality: Any, model: Any, processor: Any, items: Any, config: RunConfig, reference: Any
    ) -> dict[str, float]:
        import torch

        limit = min(len(items), config.data.max_eval_samples or len(items))
        subset = [items[i] for i in range(limit)]
        collate = modality.pair_collator(processor, config, False, sides=sides)
        device = next(model.parameters()).device
        totals: dict[str, float] = {}
        scored: list[tuple] = []
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():  # not inference_mode: see modalities/evaluation.py
                for start in range(0, limit, config.eval.batch_size):
                    chunk = subset[start : start + config.eval.batch_size]
                    batch = collate(chunk)
                    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
                    logps, counts = answer_logps(model, batch)
                    reference_logps = None if reference is None else reference.logps(batch)
                    if pooled:
                        scored.append((logps, counts, reference_logps, batch))
                        continue
                    _, metrics = terms(logps, counts, reference_logps, config.objective, batch)
                    for name, value in metrics.items():
                        totals[name] = totals.get(name, 0.0) + float(value) * len(chunk)
                    if example_scores_wanted():
                        _log_item_metrics(terms, logps, counts, reference_logps, config, batch)
        finally:
            model.train(was_training)
        if pooled:
            _, metrics = terms(*_pooled(scored), config.objective, _pooled_batch(scored))
            result = {name: float(value) for name, value in metrics.items()}
        else:
            result = {name: total / limit for name, total in totals.items()}
        if modality.pair_metrics is not None:
            wanted = [item for item in subset if item.get("desirable", True)]
            if wanted:
                result.update(modality.pair_metrics(model, processor, wanted, config))
        return result

    return evaluate


def _log_item_metrics(
    terms: Terms, logps: Any, counts: Any, reference_logps: Any, config: RunConfig, batch: dict
) -> None:
    """Each item's metrics, from the terms over that item alone (its first and second answer):
    the gate's paired bootstrap resamples items. Only for terms that average over items."""
    half = len(logps) // 2
    per_item: dict[str, list[float]] = {}
    for i in range(half):
        rows = [i, half + i]

        def one(value: Any, rows: list[int] = rows, i: int = i) -> Any:
            if not hasattr(value, "shape") or not value.shape:
                return value
            return value[rows] if value.shape[0] == 2 * half else value[i : i + 1]

        item_batch = {k: one(v) for k, v in batch.items()}
        reference = None if reference_logps is None else reference_logps[rows]
        _, metrics = terms(logps[rows], counts[rows], reference, config.objective, item_batch)
        for name, value in metrics.items():
            per_item.setdefault(name, []).append(float(value))
    for name, values in per_item.items():
        log_example_scores(name, values)


def _pooled(scored: list[tuple]) -> tuple[Any, Any, Any]:
    """The batches' (logps, counts, reference logps) as one batch: first answers, then second."""
    import torch

    def joined(position: int) -> Any:
        if scored[0][position] is None:
            return None
        halves = [s[position].chunk(2) for s in scored]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves])

    return joined(0), joined(1), joined(2)


def _pooled_batch(scored: list[tuple]) -> dict[str, Any]:
    """What the terms read of the batches beside the scores (`desirable`), joined."""
    import torch

    batches = [s[3] for s in scored]
    return {
        key: torch.cat([b[key] for b in batches]) for key in ("desirable",) if key in batches[0]
    }


def preference_objective(
    name: str,
    terms: Terms,
    needs_reference: bool,
    options: type[ObjectiveOptions],
    directions: dict[str, str] = DIRECTIONS,
    reads: tuple[str, Callable[..., Any], tuple[str, str]] = (
        "preference pairs",
        read_pairs,
        PAIR_SIDES,
    ),
    pooled: bool = False,
) -> Objective:
    """An objective over two answers per item: pairs by default (DPO, ORPO); `reads` is what
    a row is called, its reader and the item's two sides (KTO: labelled answers and their
    mismatched partners); `pooled` evaluates the terms over the whole eval set at once."""
    noun, data, sides = reads

    def metric_directions(modality: Any) -> dict[str, str]:
        return {**directions, **modality.pair_metric_directions}

    return Objective(
        name=name,
        reads=noun,
        modalities=frozenset({"text", "vision_language"}),
        needs_reference=needs_reference,
        data=data,
        collator=collator_of(sides),
        loss=make_loss(terms),
        evaluate=make_evaluate(terms, sides, pooled=pooled),
        metric_directions=metric_directions,
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
