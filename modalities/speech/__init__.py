"""Speech modality: Whisper-style sequence-to-sequence speech recognition.

Data: JSONL/CSV manifests of audio path + transcript. Metrics: WER and CER from generate()
(the selection metric is WER), plus the token loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omnitune.modalities.base import Examples, Modality, Targets, lazy
from omnitune.modalities.loading import section_loader
from omnitune.modalities.profile import build_profile

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings

#: A reference profile reads at most this many recordings (an evenly spaced subset).
PROFILE_SAMPLES = 2000


load = section_loader("speech")
dataset = lazy("omnitune.modalities.speech.data:read_speech_dataset")
collator = lazy("omnitune.modalities.speech.collate:make_speech_collator")


def evaluate(
    model: Any, processor: Any, examples: Examples, config: RunSettings
) -> dict[str, float]:
    from omnitune.modalities.evaluation import (
        log_example_scores,
        log_predictions,
        loss_and_generations,
        warn_if_generation_too_short,
    )
    from omnitune.modalities.speech.metrics import (
        error_counts,
        error_rates,
        error_rates_by_field,
        transcribe,
    )

    subset, loss, transcripts = loss_and_generations(
        model,
        examples,
        config,
        collator(processor, config, False),
        lambda chosen: transcribe(model, processor, chosen, config),
    )
    references = [e["text"] for e in subset]
    warn_if_generation_too_short(processor.tokenizer, references, config)
    log_predictions(
        [e["audio"] for e in subset],
        references,
        transcripts,
        lambda reference, transcript: error_rates([reference], [transcript])["wer"],
    )
    for metric, (errors, lengths) in error_counts(references, transcripts).items():
        log_example_scores(metric, errors, lengths)
    return {**error_rates_by_field(subset, transcripts), "loss": loss}


def profile(examples: Examples) -> dict[str, Any]:
    """Drift baseline from the clips' audio features: read from the feature cache when the
    clip is cached (no second decode), else computed from the audio."""
    from omnitune.modalities.speech.audio import features_of_file
    from omnitune.modalities.speech.features import read_profile_row

    def row(item: dict[str, Any]) -> dict[str, float]:
        if item.get("features"):
            try:
                return read_profile_row(item["features"])
            except FileNotFoundError:  # the feature cache was cleaned since
                pass
        return features_of_file(item["audio"], 16_000)

    step = max(1, len(examples) // PROFILE_SAMPLES)
    rows = (row(examples[i]) for i in range(0, len(examples), step))
    return build_profile("speech", rows, examples.source)


def adapt(model: Any, processor: Any, config: RunSettings) -> None:
    """Write `data.options.language/task` into the model's generation config: a saved model
    then transcribes in that language wherever it is served (`transformers serve` calls
    generate() without a language, and a fine-tuned Whisper left to detect one can pick a
    wrong language token and garble its first word)."""
    from omnitune.modalities.speech.options import speech_options

    options = speech_options(config)
    if options.language:
        model.generation_config.language = options.language
    model.generation_config.task = options.task


def targets(model: Any) -> Targets:
    """Attention q/v projections: encoder self-, decoder self- and cross-attention."""
    return Targets(
        lora=["q_proj", "v_proj"], ia3=["k_proj", "v_proj", "fc2"], ia3_feedforward=["fc2"]
    )


MODALITY = Modality(
    name="speech",
    load=load,
    dataset=dataset,
    collator=collator,
    evaluate=evaluate,
    profile=profile,
    targets=targets,
    adapt=adapt,
    metric_directions={"wer": "min", "cer": "min", "loss": "min"},
    # No peft task type: PeftModelForSeq2SeqLM passes input_ids, which Whisper does not take.
    task_type=None,
)
