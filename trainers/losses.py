"""Training losses beyond the model's own mean cross-entropy, for imbalanced data.

- class_weighted: each example's mean token loss is weighted by the inverse frequency of its
  group (`data.balance.by`), normalised so the weights average 1 over the training set.
- focal: token-level focal loss, (1 - p)^gamma * CE (Lin et al., 2017), which shifts weight
  from tokens the model already predicts well to the hard ones; gamma = 0 is plain CE.

Both are computed from each position's target log-probability (trainers/chunked_loss.py:
shifted for causal models and not for encoder-decoders, -100 labels ignored, chunked over the
vocabulary where `train.chunked_loss` asks), so they apply to every modality.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def inverse_frequency_weights(groups: list[str | None]) -> dict[str | None, float]:
    """Group -> weight proportional to 1 / count, averaging 1 over the examples."""
    counts = Counter(groups)
    raw = {group: 1.0 / n for group, n in counts.items()}
    mean = sum(raw[g] for g in groups) / len(groups)
    return {group: w / mean for group, w in raw.items()}


def sequence_loss(
    token_logps: Any,
    valid: Any,
    sample_weights: Any | None = None,
    focal_gamma: float = 0.0,
) -> Any:
    """Weighted mean over examples of each example's mean token loss, from the log-probability
    of each position's target (`valid` marks the positions that have one)."""
    import torch

    token_loss = -token_logps
    if focal_gamma:
        token_loss = (1 - token_logps.exp()).pow(focal_gamma) * token_loss
    token_loss = token_loss * valid
    per_example = token_loss.sum(dim=1) / valid.sum(dim=1).clamp(min=1)
    has_targets = (valid.sum(dim=1) > 0).float()
    weights = has_targets if sample_weights is None else sample_weights * has_targets
    return (per_example * weights).sum() / weights.sum().clamp(min=torch.finfo(weights.dtype).tiny)
