"""Text modality: causal language models with chat templates.

Data: chat JSONL (`messages`), `prompt`/`completion` pairs, or `text`; assistant-only loss from
the chat template's {% generation %} marks; preference pairs (`prompt`, `chosen`, `rejected`)
for DPO and ORPO, and unpaired answers (`prompt`, `completion`, `label`) for KTO. Metrics:
perplexity, and `exact_match` of generated answers when `eval.metrics` asks for it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from omnitune.modalities.base import Examples, Modality, Targets, lazy
from omnitune.modalities.loading import section_loader
from omnitune.modalities.profile import build_profile
from omnitune.modalities.text.features import text_features

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings

load = section_loader("text")
dataset = lazy("omnitune.modalities.text.data:read_text_dataset")
collator = lazy("omnitune.modalities.text.collate:make_text_collator")
pairs = lazy("omnitune.modalities.text.preference:read_text_pairs")
pair_collator = lazy("omnitune.modalities.text.preference:make_pair_collator")


def pair_metrics(model: Any, tokenizer: Any, items: list, config: RunSettings) -> dict[str, float]:
    """Generated metrics of preference pairs: how often the model answers the chosen answer."""
    if "exact_match" not in config.eval.metrics:
        return {}
    from omnitune.modalities.text.generation import exact_match_of

    return {"exact_match": exact_match_of(model, tokenizer, items, config)}


def evaluate(
    model: Any, tokenizer: Any, examples: Examples, config: RunSettings
) -> dict[str, float]:
    from omnitune.modalities.evaluation import token_loss

    loss = token_loss(
        model,
        examples,
        collator(tokenizer, config, training=False),
        config.eval.batch_size,
        config.data.max_eval_samples,
    )
    metrics = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    if "exact_match" in config.eval.metrics:
        from omnitune.modalities.text.generation import exact_match_of

        metrics["exact_match"] = exact_match_of(model, tokenizer, examples.items, config)
    return metrics


def profile(examples: Examples) -> dict[str, Any]:
    return build_profile("text", (text_features(e["prompt"]) for e in examples), examples.source)


def targets(model: Any) -> Targets:
    """peft's per-architecture defaults where it has them; attention q/v projections otherwise."""
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as IA3_FF,
    )
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as IA3,
    )
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as LORA,
    )

    from omnitune.modalities.experts import expert_parameters, router_module_names

    kind = model.config.model_type
    return Targets(
        lora=list(LORA.get(kind, ["q_proj", "v_proj"])),
        ia3=list(IA3.get(kind, ["k_proj", "v_proj", "down_proj"])),
        ia3_feedforward=list(IA3_FF.get(kind, ["down_proj"])),
        parameters=tuple(expert_parameters(model)),
        routers=tuple(router_module_names(model)),
    )


MODALITY = Modality(
    name="text",
    load=load,
    dataset=dataset,
    collator=collator,
    evaluate=evaluate,
    profile=profile,
    targets=targets,
    metric_directions={"loss": "min", "perplexity": "min", "exact_match": "max"},
    task_type="CAUSAL_LM",
    pairs=pairs,
    pair_collator=pair_collator,
    pair_metrics=pair_metrics,
    pair_metric_directions={"exact_match": "max"},
    unpaired=lazy("omnitune.modalities.text.preference:read_text_unpaired"),
    prompt_batch=lazy("omnitune.modalities.text.generation:prompt_batch"),
)
