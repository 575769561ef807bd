"""A tiny Llama-architecture causal LM with a trained BPE tokenizer and a chat template."""

from __future__ import annotations

from typing import Any

from omnitune.modalities.tokenizer import train_bpe

# Assistant turns sit inside {% generation %} so that `return_assistant_tokens_mask=True` marks
# exactly the tokens an assistant-only loss trains on.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|eos|>{% endgeneration %}"
    "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>"]


def tiny_llama_config(vocab_size: int, hidden_size: int, tokenizer: Any) -> Any:
    """Two-layer Llama text config sized for tests (GQA: 4 query heads, 2 key/value heads)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def generation_config_for(tokenizer: Any) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def chat_tokenizer() -> Any:
    """The tiny models' BPE tokenizer (512 tokens, trained on the shipped corpus) with the
    chat template."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(512, SPECIAL_TOKENS),
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_qwen2(hidden_size: int = 64) -> tuple[Any, Any]:
    """The tiny chat model in Qwen2's layout (rotate-half rotary, biases on q/k/v): for the
    converters that treat the families differently (GGUF's `qwen2` architecture)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = chat_tokenizer()
    llama = tiny_llama_config(len(tokenizer), hidden_size, tokenizer).to_dict()
    shared = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    )
    model = Qwen2ForCausalLM(Qwen2Config(**{key: llama[key] for key in shared}))
    model.generation_config = generation_config_for(tokenizer)
    return model, tokenizer


def build_tiny_llama(hidden_size: int = 64) -> tuple[Any, Any]:
    from transformers import LlamaForCausalLM

    tokenizer = chat_tokenizer()
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), hidden_size, tokenizer))
    model.generation_config = generation_config_for(tokenizer)
    return model, tokenizer


#: Mixture-of-Experts families: config class, model class, and their expert settings (4
#: experts of which each token uses 2, each expert as wide as the hidden size).
MOE_FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4}),
    "qwen3-moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", {"num_experts": 4, "head_dim": 16}),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", {"num_experts": 4}),
}


def build_tiny_moe(family: str, hidden_size: int = 64) -> tuple[Any, Any]:
    """A two-layer Mixture-of-Experts chat model of `family` (MOE_FAMILIES), 4 experts, top-2
    routing, with the same tokenizer and chat template as the tiny Llama."""
    import transformers

    config_name, model_name, experts = MOE_FAMILIES[family]
    tokenizer = chat_tokenizer()
    config = getattr(transformers, config_name)(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size,
        moe_intermediate_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts_per_tok=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **experts,
    )
    model = getattr(transformers, model_name)(config)
    model.generation_config = generation_config_for(tokenizer)
    return model, tokenizer


def build_tiny_mixtral(hidden_size: int = 64) -> tuple[Any, Any]:
    return build_tiny_moe("mixtral", hidden_size)


def build_tiny_qwen3_moe(hidden_size: int = 64) -> tuple[Any, Any]:
    return build_tiny_moe("qwen3-moe", hidden_size)


def build_tiny_olmoe(hidden_size: int = 64) -> tuple[Any, Any]:
    return build_tiny_moe("olmoe", hidden_size)
