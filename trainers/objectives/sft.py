"""Supervised fine-tuning: the modality's own examples, collator, loss and metrics.

With `data.packing` (text), examples are packed into rows of `data.max_length` tokens
(`omnitune.trainers.packing`); otherwise each batch is padded to its longest example. The loss
is the model's mean token cross-entropy (scored in chunks over a large vocabulary, see
trainers/chunked_loss.py), or one of the weighted losses of `omnitune.trainers.losses`
(`objective.loss`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from omnitune.trainers.objectives import LossContext, Objective, StepLoss
from omnitune.trainers.objectives.options import NAME_HELP, ObjectiveOptions

if TYPE_CHECKING:
    from omnitune.trainers.config import RunConfig


class SftOptions(ObjectiveOptions):
    """`objective.name: sft`: which token loss."""

    name: Literal["sft"] = Field("sft", description=NAME_HELP)
    loss: Literal["cross_entropy", "class_weighted", "focal"] = Field(
        "cross_entropy",
        description=(
            "cross_entropy: the model's own loss; class_weighted: examples weighted by the "
            "inverse frequency of their data.balance.by group; focal: (1-p)^gamma * CE per token."
        ),
    )
    focal_gamma: float = Field(2.0, ge=0.0, le=10.0, description="Focal loss focusing power.")

    packs: ClassVar[bool] = True
    streams: ClassVar[bool] = True

    def fits(self, config: RunConfig) -> None:
        if self.loss == "cross_entropy":
            return
        if config.data.streaming:
            raise ValueError("objective.loss: not with data.streaming (needs groups)")
        if self.loss == "class_weighted" and not config.data.balance.by:
            raise ValueError(
                "objective.loss: class_weighted needs data.balance.by to name the class field"
            )
        if config.data.packing:
            raise ValueError(
                "data.packing: works with objective.loss=cross_entropy only (the weighted "
                "losses weigh whole examples, and a packed row holds several)"
            )


def read_examples(
    modality: Any, source: str, config: RunConfig, processor: Any, training: bool
) -> Any:
    examples = modality.dataset(source, config, processor, training=training)
    if training and config.data.packing:
        from omnitune.trainers.packing import pack_examples

        return pack_examples(examples, config.data.max_length, config.train.seed)
    return examples


def make_collator(modality: Any, processor: Any, config: RunConfig, training: bool) -> Any:
    if training and config.data.packing:
        from omnitune.trainers.packing import make_packed_collator

        return make_packed_collator(processor)
    return modality.collator(processor, config, training=training)


def make_loss(context: LossContext) -> StepLoss:
    """The model's own loss, or the same mean token cross-entropy scored in chunks over a large
    vocabulary (`train.chunked_loss`), or a weighted loss from the targets' log-probabilities."""
    import torch

    from omnitune.trainers.chunked_loss import (
        IGNORE,
        chunking_wanted,
        position_logps,
        position_loss,
    )
    from omnitune.trainers.losses import inverse_frequency_weights, sequence_loss

    config = context.config
    causal = not context.model.config.is_encoder_decoder
    chunked = chunking_wanted(context.model, config.train.chunked_loss)
    if config.objective.loss == "cross_entropy" and not chunked:

        def model_loss(model: Any, batch: dict[str, Any], indices: list[int]) -> tuple[Any, dict]:
            return model(**batch).loss, {}

        return model_loss

    groups = context.train_set.groups
    gamma = config.objective.focal_gamma if config.objective.loss == "focal" else 0.0
    weight_of = (
        inverse_frequency_weights(groups) if config.objective.loss == "class_weighted" else None
    )

    def scored_loss(model: Any, batch: dict[str, Any], indices: list[int]) -> tuple[Any, dict]:
        targets, inputs = target_positions(batch, causal)
        valid = targets != IGNORE
        if config.objective.loss == "cross_entropy":  # the model's own: a mean over tokens
            coefficients = valid.float() * (-1.0 / valid.sum().clamp(min=1))
            return position_loss(model, inputs, targets, coefficients), {}
        logps = position_logps(model, inputs, targets, chunked).logps
        weights = None
        if weight_of is not None:
            weights = torch.tensor([weight_of[groups[i]] for i in indices], device=context.device)
        return sequence_loss(logps, valid, weights, gamma), {}

    return scored_loss


def target_positions(batch: dict[str, Any], causal: bool) -> tuple[Any, dict[str, Any]]:
    """Each position's target and the model inputs: a causal LM's labels shifted by one and
    left out of its inputs; an encoder-decoder's labels as they are, kept in (its decoder
    inputs are built from them)."""
    from omnitune.trainers.chunked_loss import shifted_targets

    if not causal:
        return batch["labels"], batch
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return shifted_targets(batch["labels"]), inputs


def evaluate(
    modality: Any, model: Any, processor: Any, examples: Any, config: RunConfig, reference: Any
) -> dict[str, float]:
    return modality.evaluate(model, processor, examples, config)


OBJECTIVE = Objective(
    name="sft",
    reads="examples",
    modalities=frozenset({"text", "speech", "vision_language"}),
    needs_reference=False,
    data=read_examples,
    collator=make_collator,
    loss=make_loss,
    evaluate=evaluate,
    metric_directions=lambda modality: modality.metric_directions,
    options=SftOptions,
)
