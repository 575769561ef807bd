"""`omnitune data prepare` and `omnitune data info`: a run's datasets read ahead of training.

Both read the config's `data.train` and `data.eval` exactly as `omnitune train` will, with only
the tokenizer or processor loaded (no model): text files are tokenised into the Arrow cache
(`data.cache`), speech clips get their features cached, images are checked. On a cluster, run
`prepare` once with `OMNITUNE_CACHE` on shared storage; every job then opens the result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from omnitune.modalities.base import Examples

if TYPE_CHECKING:
    from omnitune.trainers.config import RunConfig


def read_run_data(config: RunConfig) -> list[tuple[str, Examples]]:
    """(role, examples) of the config's train and eval data, read as training reads them."""
    from omnitune.modalities.base import get_modality
    from omnitune.modalities.loading import load_processor
    from omnitune.trainers.objectives import get_objective

    modality = get_modality(config.model.modality)
    objective = get_objective(config.objective.name)
    processor = load_processor(config.model, config.model.modality)
    read = [("train", objective.data(modality, config.data.train, config, processor, True))]
    if config.data.eval:
        read.append(("eval", objective.data(modality, config.data.eval, config, processor, False)))
    return read


def describe(role: str, examples: Examples, unit: str) -> str:
    """Rows, skips by reason, truncations, a length histogram and where the data lives."""
    lines = [f"{role}: {examples.summary()}"]
    if examples.origin:
        lines.append(f"  {examples.origin}")
    lines.extend(f"  skipped {line}" for line in examples.skipped_listing(first=5))
    lengths = np.asarray(examples.lengths, dtype=np.float64)
    if len(lengths):
        quantiles = np.quantile(lengths, [0.0, 0.5, 0.9, 0.99, 1.0])
        lines.append(
            f"  length ({unit}): min {quantiles[0]:g}, median {quantiles[1]:g}, "
            f"p90 {quantiles[2]:g}, p99 {quantiles[3]:g}, max {quantiles[4]:g}"
        )
        counts, edges = np.histogram(lengths, bins=min(8, max(1, len(np.unique(lengths)))))
        widest = max(counts.max(), 1)
        for count, low, high in zip(counts, edges[:-1], edges[1:], strict=True):
            bar = "#" * max(1 if count else 0, round(30 * count / widest))
            lines.append(f"  {low:8.4g} - {high:<8.4g} {count:>9,} {bar}")
    return "\n".join(lines)


UNITS = {"text": "tokens", "speech": "seconds", "vision_language": "tokens"}
