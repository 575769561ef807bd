"""The offline tiny-model factory: `omnitune models build-tiny FAMILY --out DIR`.

Each builder makes a complete model folder (weights, config, generation config, tokenizer and
processor) with hidden size at most 128 and two layers, trained tokenizers included, and saves it
with `save_pretrained`; the ordinary `Auto*.from_pretrained(DIR)` calls then load it. Nothing else
in omnitune knows these models are tiny: they go through the same loading code as hub ids.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omnitune.core.errors import ConfigError

#: family name -> "module:function" of its builder (imported only when that family is built).
TINY_BUILDERS: dict[str, str] = {
    "text": "omnitune.modalities.text.tiny:build_tiny_llama",
    "qwen2": "omnitune.modalities.text.tiny:build_tiny_qwen2",
    "mixtral": "omnitune.modalities.text.tiny:build_tiny_mixtral",
    "qwen3-moe": "omnitune.modalities.text.tiny:build_tiny_qwen3_moe",
    "olmoe": "omnitune.modalities.text.tiny:build_tiny_olmoe",
    "whisper": "omnitune.modalities.speech.tiny:build_tiny_whisper",
    "whisper-30s": "omnitune.modalities.speech.tiny:build_tiny_whisper_30s",
    "llava": "omnitune.modalities.vision_language.tiny:build_tiny_llava",
    "idefics3": "omnitune.modalities.vision_language.tiny:build_tiny_idefics3",
    "qwen2-vl": "omnitune.modalities.vision_language.tiny:build_tiny_qwen2_vl",
}

MAX_TINY_HIDDEN = 128


def build_tiny(
    family: str,
    out: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    vocab_size: int | None = None,
) -> Path:
    """Build the tiny `family` model and save model, tokenizer and processor under `out`;
    `vocab_size` widens a causal LM's embedding and head to that many rows (the tokenizer
    uses the first ones): two layers, but a real vocabulary's logits."""
    if family not in TINY_BUILDERS:
        raise ConfigError(f"family: unknown '{family}' (known: {', '.join(TINY_BUILDERS)})")
    if not 16 <= hidden_size <= MAX_TINY_HIDDEN or hidden_size % 16:
        raise ConfigError(
            f"hidden_size: {hidden_size} is not a multiple of 16 between 16 and {MAX_TINY_HIDDEN}"
        )
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    module_name, function_name = TINY_BUILDERS[family].split(":")
    builder: Callable[..., tuple[Any, Any]] = getattr(
        importlib.import_module(module_name), function_name
    )
    torch.manual_seed(seed)
    model, processor = builder(hidden_size=hidden_size)
    if vocab_size is not None:
        if model.config.is_encoder_decoder or not hasattr(model, "resize_token_embeddings"):
            raise ConfigError(f"vocab_size: {family} is not a causal LM whose vocabulary widens")
        if vocab_size < model.get_input_embeddings().num_embeddings:
            raise ConfigError(
                f"vocab_size: {vocab_size} is below the tokenizer's "
                f"{model.get_input_embeddings().num_embeddings} tokens"
            )
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
