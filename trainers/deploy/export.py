"""`omnitune export RUN --format gguf|ctranslate2|onnx [--quantize TYPE]`: the run's model in a
deployment format, proven against the PyTorch model in the format's real runtime.

Steps: refuse what the format or runtime cannot take (family, quantisation) before any work;
merge the run's adapter into a plain Hugging Face folder (trainers/export.py; full and pruned
runs are already plain); write the format's files; load them in the runtime and write the
parity report (`parity.json`, trainers/deploy/parity.py) beside them. The merged folder is a
staging copy, removed at the end. The unquantised export's parity decides the exit status.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnitune.core.errors import ConfigError
from omnitune.trainers.deploy import get_format
from omnitune.trainers.deploy.parity import ParityReport, sizes, speech_parity, text_parity

#: Eval examples the parity report runs on each side, unless asked otherwise.
DEFAULT_SAMPLES = 32


@dataclass(frozen=True)
class Deployed:
    """The export's folder, its model file or folder, the report and the runtime's launch line."""

    folder: Path
    model: Path
    report: ParityReport
    launch: str
    checkpoint: str


def model_config(name_or_path: str) -> Any:
    """The transformers config of a model folder or hub id (config.json only: no weights)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name_or_path)


def deploy_run(
    run: str | Path,
    format_name: str,
    quantize: str | None = None,
    out: str | Path | None = None,
    which: str = "best",
    data: str | None = None,
    samples: int = DEFAULT_SAMPLES,
) -> Deployed:
    """Export `run` in `format_name` and check it in its runtime; see the module docstring."""
    from omnitune.trainers.config import load_run_config

    run_dir = Path(run)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.yaml)")
    config = load_run_config(run_dir / "config.yaml")
    fmt = get_format(format_name)
    quantize = quantize or fmt.unquantized
    modality = config.model.modality
    fmt.check(modality, model_config(config.model.name_or_path), quantize)
    source = data or config.data.eval
    if not source:
        raise ConfigError("--data: the parity report needs eval data and the run has no data.eval")

    from omnitune.trainers.export import export_run

    target = Path(out or run_dir / "exports" / f"{fmt.name}-{quantize}")
    staging = target.with_name(f".staging-{target.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        merged = export_run(run_dir, merge=True, out=staging / "merged", which=which)
        written = fmt.write(merged.folder, staging / "export", quantize, modality)
        report = _parity(fmt, written, quantize, merged.folder, config, source, samples)
        sizes(merged.folder, written, report)
        report_path = (
            written.parent / "parity.json" if written.is_file() else written / "parity.json"
        )
        report_path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        (staging / "export").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    model = target / written.relative_to(staging / "export")
    return Deployed(
        target, model, report, fmt.launch(model, modality), merged.checkpoint.describe()
    )


def _parity(fmt, written: Path, quantize: str, merged: Path, config, source: str, samples: int):
    """Load the merged model and the export and run the modality's parity checks."""
    from omnitune.modalities.base import get_modality
    from omnitune.trainers.objectives import get_objective

    modality = get_modality(config.model.modality)
    run_model = config.model.model_copy(update={"name_or_path": str(merged)})
    model, processor = modality.load(run_model)
    model.eval()
    examples = get_objective("sft").data(modality, source, config, processor, False)
    items = [examples[i] for i in range(min(samples, len(examples)))]
    if not items:
        raise ConfigError(f"--data: {source} has no usable examples for the parity report")
    runtime = fmt.load(written, quantize, config.model.modality, merged)
    if config.model.modality == "speech":
        return speech_parity(fmt, runtime, model, processor, items, config, quantize)
    tokenizer = getattr(processor, "tokenizer", processor)
    max_new = config.eval.generation.max_new_tokens
    return text_parity(fmt, runtime, model, tokenizer, items, max_new, quantize)
