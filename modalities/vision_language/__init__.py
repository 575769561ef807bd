"""Vision-language modality: LLaVA, Idefics3/SmolVLM and Qwen2-VL style models."""
