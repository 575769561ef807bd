"""A tiny Whisper: real Whisper architecture, tokenizer and processor, 2+2 layers.

The feature extractor uses 2-second windows (200 mel frames) with `max_source_positions=100`,
because the encoder accepts exactly `2 * max_source_positions` frames; 30-second windows would
make every tiny step pay for 3,000 frames. `build_tiny_whisper_30s` pays it: OpenAI's 30-second
window, for runtimes that take no other (faster-whisper pads every window to 3,000 frames).
"""

from __future__ import annotations

from typing import Any

from omnitune.modalities.tokenizer import train_bpe

SAMPLING_RATE = 16_000
CHUNK_SECONDS = 2


def whisper_special_tokens() -> list[str]:
    """Whisper's special tokens in Whisper's order: language ids are computed from positions."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *(f"<|{code}|>" for code in LANGUAGES),
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]


def build_tiny_whisper_30s(hidden_size: int = 64) -> tuple[Any, Any]:
    return build_tiny_whisper(hidden_size, chunk_seconds=30)


def build_tiny_whisper(
    hidden_size: int = 64, chunk_seconds: int = CHUNK_SECONDS
) -> tuple[Any, Any]:
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    eot = "<|endoftext|>"
    tokenizer = WhisperTokenizer(
        tokenizer_object=train_bpe(800, whisper_special_tokens()),
        unk_token=eot,
        bos_token=eot,
        eos_token=eot,
        pad_token=eot,
    )
    features = WhisperFeatureExtractor(
        feature_size=80, sampling_rate=SAMPLING_RATE, chunk_length=chunk_seconds
    )
    processor = WhisperProcessor(feature_extractor=features, tokenizer=tokenizer)
    token_id = tokenizer.convert_tokens_to_ids
    start = token_id("<|startoftranscript|>")
    frames = features.nb_max_frames
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=hidden_size,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=2 * hidden_size,
        decoder_ffn_dim=2 * hidden_size,
        max_source_positions=frames // 2,
        max_target_positions=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=start,
        # Whisper's defaults name ids of its 51k vocabulary, outside this one.
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        no_timestamps_token_id=token_id("<|notimestamps|>"),
        lang_to_id={f"<|{code}|>": token_id(f"<|{code}|>") for code in LANGUAGES},
        task_to_id={task: token_id(f"<|{task}|>") for task in ("transcribe", "translate")},
        is_multilingual=True,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    return model, processor
