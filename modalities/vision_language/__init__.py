"""Vision-language modality: LLaVA, Idefics3/SmolVLM and Qwen2-VL style models.

Data: conversations with image parts, or image/question/answer rows; preference pairs (an
image prompt, `chosen`, `rejected`) for DPO and ORPO, and unpaired answers (an image prompt, a
`completion` and a desirable/undesirable `label`) for KTO. Default trainable parts:
LoRA on the language model's attention, the projector trained in full, the vision tower
frozen. Metrics: VQA exact-match accuracy from generate() (the selection metric), token loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omnitune.modalities.base import Examples, Modality, Targets, lazy
from omnitune.modalities.loading import section_loader
from omnitune.modalities.profile import build_profile

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings

#: Module names of the vision-to-language projector, by family (LLaVA, Idefics3, Qwen2-VL).
PROJECTORS = ("multi_modal_projector", "connector", "merger")
#: Module names of the language model inside the VLM, by family.
LANGUAGE_MODELS = ("language_model", "text_model")
PROFILE_SAMPLES = 2000


load = section_loader("vision_language")
dataset = lazy("omnitune.modalities.vision_language.data:read_vlm_dataset")
collator = lazy("omnitune.modalities.vision_language.collate:make_vlm_collator")
pairs = lazy("omnitune.modalities.vision_language.preference:read_vlm_pairs")
pair_collator = lazy("omnitune.modalities.vision_language.preference:make_pair_collator")
pair_metrics = lazy("omnitune.modalities.vision_language.preference:pair_metrics")
prompt_batch = lazy("omnitune.modalities.vision_language.metrics:prompt_batch")


def evaluate(
    model: Any, processor: Any, examples: Examples, config: RunSettings
) -> dict[str, float]:
    from omnitune.modalities.evaluation import (
        log_example_scores,
        log_predictions,
        loss_and_generations,
        warn_if_generation_too_short,
    )
    from omnitune.modalities.vision_language.metrics import answer_questions, vqa_accuracy

    subset, loss, answers = loss_and_generations(
        model,
        examples,
        config,
        collator(processor, config, False),
        lambda chosen: answer_questions(model, processor, chosen, config),
    )
    references = [e["answer"] for e in subset]
    warn_if_generation_too_short(processor.tokenizer, references, config)
    log_predictions(
        [{"images": e["images"], "question": _question(e)} for e in subset],
        references,
        answers,
        lambda reference, answer: vqa_accuracy([reference], [answer]),
    )
    log_example_scores(
        "vqa_accuracy", [vqa_accuracy([r], [a]) for r, a in zip(references, answers, strict=True)]
    )
    return {"vqa_accuracy": vqa_accuracy(references, answers), "loss": loss}


def _question(example: dict[str, Any]) -> str:
    """The text of the example's last user turn (the question its answer replies to)."""
    user = [m for m in example["messages"] if m["role"] == "user"][-1]
    content = user["content"]
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content if p.get("type") == "text").strip()


def profile(examples: Examples) -> dict[str, Any]:
    from omnitune.modalities.vision_language.images import image_features, open_image

    step = max(1, len(examples) // PROFILE_SAMPLES)
    rows = (
        image_features(open_image(examples[i]["images"][0])) for i in range(0, len(examples), step)
    )
    return build_profile("vision_language", rows, examples.source)


def targets(model: Any) -> Targets:
    """LoRA on the language model's q/v projections only; the projector trains in full."""
    names = [name for name, _ in model.named_modules()]
    language = next(
        (lm for lm in LANGUAGE_MODELS if any(f".{lm}." in f"{n}." for n in names)), None
    )
    scope = rf".*\.{language}\..*" if language else r"^(?!.*(vision|visual|image)).*"
    projector = [p for p in PROJECTORS if any(n.split(".")[-1] == p for n in names)]
    return Targets(
        lora=scope + r"\.(q_proj|v_proj)",
        modules_to_save=projector or None,
        ia3=None,
    )


MODALITY = Modality(
    name="vision_language",
    load=load,
    dataset=dataset,
    collator=collator,
    evaluate=evaluate,
    profile=profile,
    targets=targets,
    metric_directions={"vqa_accuracy": "max", "loss": "min"},
    task_type="CAUSAL_LM",
    pairs=pairs,
    pair_collator=pair_collator,
    pair_metrics=pair_metrics,
    pair_metric_directions={"vqa_accuracy": "max"},
    unpaired=lazy("omnitune.modalities.vision_language.preference:read_vlm_unpaired"),
    prompt_batch=prompt_batch,
)
