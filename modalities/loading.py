"""Load a model and its processor from a hub id or a local folder, the one way omnitune does.

Training, evaluation and `omnitune models check` all come through here, so a checkpoint that
loads for one loads for all. Nothing here knows about tiny models: a folder written by
`omnitune models build-tiny` and `openai/whisper-small` in the local hub cache take the same
path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnitune.core.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: modality -> the transformers Auto class that loads its models.
AUTO_MODEL_CLASS: dict[str, str] = {
    "text": "AutoModelForCausalLM",
    "speech": "AutoModelForSpeechSeq2Seq",
    "vision_language": "AutoModelForImageTextToText",
}

_SPEECH_MODEL_TYPES = {"whisper"}


def resolve_dtype(dtype: str) -> Any:
    """Map a config dtype name to a torch dtype; 'auto' is bf16 on a GPU that has it, else fp32."""
    import torch

    if dtype == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def load_model_config(name_or_path: str, **hub: Any) -> Any:
    """The model's `config.json` through AutoConfig, with a clear error when it cannot be found."""
    from transformers import AutoConfig

    if _looks_like_path(name_or_path) and not Path(name_or_path).is_dir():
        raise ConfigError(f"model.name_or_path: no such folder '{name_or_path}'")
    try:
        return AutoConfig.from_pretrained(name_or_path, **hub)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"model.name_or_path: cannot load '{name_or_path}': {_why(exc)}"
        ) from None


def infer_modality(config: PretrainedConfig) -> str:
    """Which modality a model config belongs to: speech, vision_language or text."""
    if config.model_type in _SPEECH_MODEL_TYPES:
        return "speech"
    if getattr(config, "vision_config", None) is not None:
        return "vision_language"
    return "text"


def load_pretrained(
    name_or_path: str,
    modality: str | None = None,
    *,
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    **model_options: Any,
) -> tuple[Any, Any]:
    """Load `(model, processor)`; for text models the processor is the tokenizer.

    `model_options` go to the model's `from_pretrained` (e.g. a 4-bit quantization_config).

    `modality` is checked against the checkpoint's config when given, and inferred from it
    otherwise, so a speech config pointed at a text model fails here with both names.
    """
    import transformers

    hub = {"revision": revision, "trust_remote_code": trust_remote_code}
    config = load_model_config(name_or_path, **hub)
    found = infer_modality(config)
    if modality is not None and modality != found:
        raise ConfigError(
            f"model.modality: '{modality}' does not match '{name_or_path}', "
            f"a {config.model_type} model ({found})"
        )
    auto_model = getattr(transformers, AUTO_MODEL_CLASS[found])
    auto_processor = transformers.AutoTokenizer if found == "text" else transformers.AutoProcessor
    try:
        processor = auto_processor.from_pretrained(name_or_path, **hub)
        model = auto_model.from_pretrained(
            name_or_path, dtype=resolve_dtype(dtype), **hub, **model_options
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"model.name_or_path: cannot load '{name_or_path}': {_why(exc)}"
        ) from None
    return model, processor


def load_processor(model_section: Any, modality: str) -> Any:
    """Only the tokenizer (text) or processor of a config's model: what reading data needs."""
    import transformers

    auto = transformers.AutoTokenizer if modality == "text" else transformers.AutoProcessor
    try:
        return auto.from_pretrained(
            model_section.name_or_path,
            revision=model_section.revision,
            trust_remote_code=model_section.trust_remote_code,
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"model.name_or_path: cannot load '{model_section.name_or_path}': {_why(exc)}"
        ) from None


def section_loader(modality: str) -> Any:
    """A modality's `load(model_section, **options)`: load_pretrained with the config's fields."""

    def load(model_section: Any, **options: Any) -> tuple[Any, Any]:
        return load_pretrained(
            model_section.name_or_path,
            modality,
            dtype=model_section.dtype,
            revision=model_section.revision,
            trust_remote_code=model_section.trust_remote_code,
            **{**model_section.config_overrides, **options},
        )

    return load


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else (absolute, ./, ~, deeper) is a path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or Path(name).exists()


def _why(exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        first += " (HF_HUB_OFFLINE=1: only local folders and the local hub cache are used)"
    return first
