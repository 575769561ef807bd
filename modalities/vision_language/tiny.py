"""Tiny LLaVA, Idefics3 and Qwen2-VL models: 32x32-pixel images, 2-layer towers, BPE tokenizers.

Each chat template puts assistant turns inside {% generation %}, so the processor's
`return_assistant_tokens_mask=True` marks what an assistant-only loss trains on. Images are 32
pixels on a side with 8-pixel patches, so each image costs 4 to 16 tokens.
"""

from __future__ import annotations

from typing import Any

from omnitune.modalities.text.tiny import generation_config_for, tiny_llama_config
from omnitune.modalities.tokenizer import train_bpe

IMAGE_SIDE = 32
PATCH = 8


def _template(turn_open: str, turn_close: str, image: str, generation_prompt: str) -> str:
    """A chat template over string or typed-part content; `turn_open` may use `role`."""
    return (
        "{% for m in messages %}" + turn_open + "{% if m['content'] is string %}"
        "{% set parts = [{'type': 'text', 'text': m['content']}] %}"
        "{% else %}{% set parts = m['content'] %}{% endif %}"
        "{% if m['role'] == 'assistant' %}{% generation %}"
        "{% for c in parts %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
        + turn_close
        + "{% endgeneration %}{% else %}{% for c in parts %}"
        "{% if c['type'] == 'image' %}" + image + "{% elif c['type'] == 'text' %}{{ c['text'] }}"
        "{% endif %}{% endfor %}" + turn_close + "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}" + generation_prompt + "{% endif %}"
    )


def _tokenizer(special_tokens: list[str], **named: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=train_bpe(512, special_tokens), **named)


def build_tiny_llava(hidden_size: int = 64) -> tuple[Any, Any]:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = _tokenizer(
        ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>", "<image>"],
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIDE}, crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        num_additional_image_tokens=1,
        vision_feature_select_strategy="default",
        image_token="<image>",
        chat_template=_template("<|{{ m['role'] }}|>", "<|eos|>", "<image>", "<|assistant|>"),
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIDE,
        patch_size=PATCH,
        projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=tiny_llama_config(len(tokenizer), hidden_size, tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config = generation_config_for(tokenizer)
    return model, processor


def build_tiny_idefics3(hidden_size: int = 64) -> tuple[Any, Any]:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
    )

    eou = "<end_of_utterance>"
    tokenizer = _tokenizer(
        ["<|pad|>", "<|bos|>", eou, "<fake_token_around_image>", "<image>", "<global-img>"],
        bos_token="<|bos|>",
        eos_token=eou,
        pad_token="<|pad|>",
        extra_special_tokens={
            "fake_image_token": "<fake_token_around_image>",
            "image_token": "<image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": eou,
        },
    )
    scale_factor = 2
    # Image splitting off: a 32-pixel image is one tile, never cut into sub-images.
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": IMAGE_SIDE},
        max_image_size={"longest_edge": IMAGE_SIDE},
        do_image_splitting=False,
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(IMAGE_SIDE // PATCH) ** 2 // scale_factor**2,
        chat_template=_template("{{ m['role'] | capitalize }}:", eou, "<image>", "Assistant:"),
    )
    vision = Idefics3VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIDE,
        patch_size=PATCH,
    )
    config = Idefics3Config(
        vision_config=vision,
        text_config=tiny_llama_config(len(tokenizer), hidden_size, tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
        tie_word_embeddings=True,
    )
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config = generation_config_for(tokenizer)
    return model, processor


def build_tiny_qwen2_vl(hidden_size: int = 64) -> tuple[Any, Any]:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.configuration_qwen2_vl import (
        Qwen2VLTextConfig,
        Qwen2VLVisionConfig,
    )
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    specials = {
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_bos_token": "<|vision_start|>",
        "vision_eos_token": "<|vision_end|>",
    }
    tokenizer = _tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *specials.values()],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=specials,
    )
    # min = max pixels: every image is resized to exactly 32x32, i.e. 4x4 patches -> 4 tokens.
    pixels = {"shortest_edge": IMAGE_SIDE * IMAGE_SIDE, "longest_edge": IMAGE_SIDE * IMAGE_SIDE}
    grid = {"patch_size": PATCH, "merge_size": 2, "temporal_patch_size": 2, "size": pixels}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**grid),
        video_processor=Qwen2VLVideoProcessor(**grid),
        tokenizer=tokenizer,
        chat_template=_template(
            "<|im_start|>{{ m['role'] }}\n",
            "<|im_end|>",
            "<|vision_start|><|image_pad|><|vision_end|>",
            "<|im_start|>assistant\n",
        ),
    )
    token_id = tokenizer.convert_tokens_to_ids
    head_dim = hidden_size // 4
    half = head_dim // 2  # multimodal RoPE splits head_dim / 2 over (time, height, width)
    text = Qwen2VLTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10_000.0,
            "mrope_section": [half - 2 * (half // 3), half // 3, half // 3],
        },
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    vision = Qwen2VLVisionConfig(
        depth=2,
        embed_dim=32,
        hidden_size=hidden_size,
        num_heads=2,
        mlp_ratio=2,
        patch_size=PATCH,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    config = Qwen2VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=token_id(specials["image_token"]),
        video_token_id=token_id(specials["video_token"]),
        vision_start_token_id=token_id(specials["vision_bos_token"]),
        vision_end_token_id=token_id(specials["vision_eos_token"]),
        tie_word_embeddings=True,
    )
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config = generation_config_for(tokenizer)
    return model, processor
