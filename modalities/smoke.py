"""One `generate()` call on a synthetic input, to prove a checkpoint loads and runs end to end.

Used by `omnitune models check`: an offline answer to "will this folder or hub id work?" before a
run spends time reading data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SmokeResult:
    model_class: str
    processor_class: str
    parameters: int
    input_tokens: int
    generated_tokens: int
    text: str


def smoke_generate(
    model: Any,
    processor: Any,
    modality: str,
    max_new_tokens: int = 8,
    prompt: str = "Which digit is this?",
) -> SmokeResult:
    """Run greedy generation on one synthetic input suited to `modality`; `prompt` is the
    user's message (text) or the question about the image (vision-language)."""
    import torch

    inputs = _synthetic_inputs(processor, modality, prompt)
    model.eval()
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    # Decoder-only models echo the prompt; Whisper's generate returns only what it decoded.
    prompt_length = inputs["input_ids"].shape[1] if "input_ids" in inputs else 0
    new_tokens = output[0, prompt_length:]
    tokenizer = getattr(processor, "tokenizer", processor)
    return SmokeResult(
        model_class=type(model).__name__,
        processor_class=type(processor).__name__,
        parameters=sum(p.numel() for p in model.parameters()),
        input_tokens=int(prompt_length),
        generated_tokens=int(new_tokens.numel()),
        text=tokenizer.decode(new_tokens, skip_special_tokens=True),
    )


def _synthetic_inputs(processor: Any, modality: str, prompt: str) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    if modality == "speech":
        rate = processor.feature_extractor.sampling_rate
        audio = (0.1 * np.sin(np.linspace(0, 440 * 2 * np.pi, rate))).astype(np.float32)
        return dict(processor.feature_extractor(audio, sampling_rate=rate, return_tensors="pt"))
    messages: list[dict[str, Any]]
    if modality == "vision_language":
        from PIL import Image

        image = Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))
        messages = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": prompt}],
            }
        ]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        return dict(processor(images=[image], text=[prompt], return_tensors="pt"))
    messages = [{"role": "user", "content": prompt}]
    return dict(
        processor.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    )
