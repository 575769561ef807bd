"""`omnitune prune TARGET --layers N --out DIR [--by importance|last]`: depth pruning.

Removes N decoder layers from a text model or from Whisper's decoder and writes a model folder
that plain `Auto*.from_pretrained` loads with the smaller layer count. TARGET is a model folder
(a full fine-tune's `RUN/model`, an `omnitune export --merge` folder, a hub id in the local
cache) or a run folder, whose best checkpoint is loaded and, for an adapter, merged first.

`--by importance` (the default) scores each layer on the data by how much it changes what flows
through it: 1 - the mean cosine similarity of the layer's input and output hidden states over
the real (non-padding) tokens, Block Influence in Men et al. 2024 ("ShortGPT"), the measure the
Minitron recipe also uses for depth. The N layers with the lowest score are removed; a layer
whose output is nearly its input is the one the residual stream misses least. `--by last`
removes the last N layers. Both keep the remaining layers' order, renumber their cache indices
and rewrite the config's layer count (and per-layer lists such as `layer_types`).

What pruning costs is measured on the same data before and after (the modality's own metrics:
loss and perplexity for text, WER for speech) with the parameters and the size on disk, in
`prune.json` beside the model. Recovery is a training run from the pruned folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnitune.core.errors import ConfigError
from omnitune.trainers.footprint import PRUNE_RECORD, measure

PRUNE_BY = ("importance", "last")


@dataclass(frozen=True)
class Stack:
    """Where a family keeps the decoder layers pruning removes, and the config key counting
    them."""

    path: str  # attribute path from the loaded model to the ModuleList
    count_key: str


def decoder_stack(model: Any) -> Stack:
    """The pruneable decoder stack of `model`, or a refusal naming the family."""
    config = model.config
    kind = config.model_type
    if kind == "whisper":
        return Stack("model.decoder.layers", "decoder_layers")
    inner = getattr(model, "model", None)
    if (
        not getattr(config, "is_encoder_decoder", False)
        and not hasattr(config, "vision_config")
        and inner is not None
        and hasattr(inner, "layers")
        and hasattr(config, "num_hidden_layers")
    ):
        return Stack("model.layers", "num_hidden_layers")
    raise ConfigError(
        f"model.name_or_path: pruning takes a text decoder or Whisper's decoder, not a {kind} model"
    )


def _layers(model: Any, stack: Stack) -> Any:
    target = model
    for part in stack.path.split("."):
        target = getattr(target, part)
    return target


def layer_importance(model: Any, stack: Stack, batches: list[dict[str, Any]]) -> list[float]:
    """Per layer: 1 - mean cosine(input, output) of its hidden states over the non-padding
    tokens of `batches` (Block Influence)."""
    import torch

    layers = _layers(model, stack)
    sums = [0.0] * len(layers)
    tokens = [0] * len(layers)
    seen: dict[int, Any] = {}
    mask: list[Any] = [None]

    def before(index: int):
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            seen[index] = args[0] if args else kwargs["hidden_states"]

        return hook

    def after(index: int):
        def hook(module: Any, args: tuple, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            cosine = torch.nn.functional.cosine_similarity(
                seen.pop(index).float(), out.float(), dim=-1
            )
            keep = mask[0]
            if keep is not None and keep.shape == cosine.shape:
                cosine = cosine[keep]
            sums[index] += float(cosine.sum())
            tokens[index] += cosine.numel()

        return hook

    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(before(index), with_kwargs=True))
        handles.append(layer.register_forward_hook(after(index)))
    try:
        with torch.no_grad():
            for batch in batches:
                mask[0] = _token_mask(batch, stack)
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return [1.0 - s / max(n, 1) for s, n in zip(sums, tokens, strict=True)]


def _token_mask(batch: dict[str, Any], stack: Stack) -> Any:
    """The real tokens of the stack's input: the attention mask for a decoder-only model, the
    labelled positions of Whisper's decoder."""
    if stack.count_key == "decoder_layers":
        labels = batch.get("labels")
        return None if labels is None else labels != -100
    mask = batch.get("attention_mask")
    return None if mask is None else mask.bool()


def remove_layers(model: Any, stack: Stack, removed: list[int]) -> None:
    """Drop the `removed` layers in place; renumber the rest's cache indices and the config."""
    import torch

    layers = _layers(model, stack)
    kept = [layer for index, layer in enumerate(layers) if index not in set(removed)]
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    parent = model
    *path, name = stack.path.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, name, torch.nn.ModuleList(kept))
    config = model.config
    total = getattr(config, stack.count_key)
    setattr(config, stack.count_key, len(kept))
    for key, value in list(vars(config).items()):  # per-layer lists: layer_types, ...
        if isinstance(value, list) and len(value) == total and key.endswith("_types"):
            setattr(config, key, [v for index, v in enumerate(value) if index not in set(removed)])


def choose_layers(scores: list[float], count: int, by: str) -> list[int]:
    if by == "last":
        return list(range(len(scores) - count, len(scores)))
    ranked = sorted(range(len(scores)), key=lambda index: scores[index])
    return sorted(ranked[:count])


def folder_megabytes(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def prune(
    target: str, out: Path, layers: int, by: str = "importance", data: str | None = None
) -> dict[str, Any]:
    """Prune `layers` decoder layers from `target` into `out`; returns what prune.json holds."""
    if by not in PRUNE_BY:
        raise ConfigError(f"--by: unknown '{by}' (known: {', '.join(PRUNE_BY)})")
    if layers < 1:
        raise ConfigError("--layers: remove at least one layer")
    from omnitune.modalities.base import get_modality
    from omnitune.trainers.evaluation import load_for_evaluation

    model, processor, config = load_for_evaluation(target, data)
    stack = decoder_stack(model)
    total = len(_layers(model, stack))
    if layers >= total:
        raise ConfigError(
            f"--layers: {layers} of {total} decoder layers ({stack.count_key}); at least one "
            "must stay"
        )
    modality = get_modality(config.model.modality)
    source = data or config.data.eval
    examples = modality.dataset(source, config, processor, training=False)
    if len(examples) == 0:
        raise ConfigError(f"--data: {source} has no usable examples ({examples.summary()})")
    model.eval()
    collate = modality.collator(processor, config, training=False)
    items = [examples[i] for i in range(len(examples))]
    size = config.eval.batch_size
    batches = [collate(items[i : i + size]) for i in range(0, len(items), size)]

    name = config.model.modality
    before = modality.evaluate(model, processor, examples, config)
    footprint_before = measure(model, name, collate, examples)
    scores = layer_importance(model, stack, batches)
    removed = choose_layers(scores, layers, by)
    remove_layers(model, stack, removed)
    after = modality.evaluate(model, processor, examples, config)
    footprint_after = measure(model, name, collate, examples)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    record = {
        "source": str(target),
        "data": f"{source}: {len(examples)} examples",
        "by": by,
        "layers": {"before": total, "after": total - layers, "removed": removed},
        "importance": [round(s, 6) for s in scores],
        "parameters": {
            "before": footprint_before["parameters"],
            "after": footprint_after["parameters"],
        },
        "megabytes_after": round(folder_megabytes(out), 3),
        "metrics": {"before": before, "after": after},
        "footprint": {"before": footprint_before, "after": footprint_after},
        "created_unix": int(time.time()),
    }
    (out / PRUNE_RECORD).write_text(json.dumps(record, indent=1))
    return record
