"""Evaluation helpers every modality shares: token-weighted loss over a dataset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def token_loss(
    model: Any,
    examples: Any,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    batch_size: int,
    max_samples: int | None = None,
) -> float:
    """Mean cross-entropy per target token over `examples` (padding and masked tokens excluded).

    Batches are weighted by their number of target tokens, so the result does not depend on the
    batch size. Causal models predict token t+1 from t, so their first label never counts.
    """
    import torch

    count = len(examples) if max_samples is None else min(len(examples), max_samples)
    shift = 0 if model.config.is_encoder_decoder else 1
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, count, batch_size):
            batch = collate([examples[i] for i in range(start, min(start + batch_size, count))])
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            n = int((batch["labels"][:, shift:] != -100).sum())
            if n == 0:
                continue
            total += float(model(**batch).loss) * n
            tokens += n
    model.train(was_training)
    return total / tokens if tokens else float("nan")


def loss_and_generations(
    model: Any,
    examples: Any,
    config: Any,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    generate: Callable[[list[dict[str, Any]]], list[str]],
) -> tuple[list[dict[str, Any]], float, list[str]]:
    """Token loss and generated outputs on the first `data.max_eval_samples` examples.

    `generate(subset)` runs with the model in eval mode; the model's mode is restored after,
    so evaluating in the middle of training leaves dropout as it was.
    """
    limit = config.data.max_eval_samples or len(examples)
    subset = [examples[i] for i in range(min(limit, len(examples)))]
    loss = token_loss(model, subset, collate, config.eval.batch_size)
    was_training = model.training
    model.eval()
    try:
        outputs = generate(subset)
    finally:
        model.train(was_training)
    return subset, loss, outputs
