"""How omnitune decides gradient checkpointing for a model size (`train.gradient_checkpointing:
auto`), so that users need not.

Without checkpointing, a transformer layer keeps about 34 * tokens * hidden bytes of
activations for backward at 16-bit precision (Korthikanti et al., 2022, "Reducing Activation
Recomputation in Large Transformer Models", eq. 1 with the attention-score term left out, as
PyTorch's scaled-dot-product attention does not keep the score matrix), twice that in float32.
Checkpointing keeps one hidden state per layer instead and recomputes the rest in backward:
about a third more compute. It is worth it when the activations are the large part of the
step's memory, so `auto` turns it on when a micro-batch's estimated activations exceed both
the weights' own size and 1 GiB (below that, memory is no user's problem and the recompute
only costs time). Qwen2.5-0.5B (24 layers, hidden 896) at one 2,048-token row in float32:
3.0 GiB of activations against 1.8 GiB of weights: on. The test models (2 layers, hidden 64,
16 x 256 tokens): 35 MiB: off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Bytes a layer keeps per token and hidden unit at 16-bit precision (Korthikanti et al.).
BYTES_PER_TOKEN_UNIT_16BIT = 34
FLOOR_BYTES = 2**30


@dataclass(frozen=True)
class CheckpointingChoice:
    enabled: bool
    reason: str


def activation_bytes(model_config: Any, tokens: int, bytes_per_value: int) -> int:
    """Estimated activations one micro-batch of `tokens` keeps for backward, all layers."""
    text = getattr(model_config, "text_config", None) or model_config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "d_model", 0)
    layers = getattr(text, "num_hidden_layers", None) or (
        getattr(text, "encoder_layers", 0) + getattr(text, "decoder_layers", 0)
    )
    per_value = BYTES_PER_TOKEN_UNIT_16BIT * bytes_per_value // 2
    return int(per_value * tokens * hidden * layers)


def choose_checkpointing(setting: bool | str, model: Any, tokens: int) -> CheckpointingChoice:
    """`train.gradient_checkpointing` (True, False or "auto") resolved for `model` at
    micro-batches of `tokens` tokens."""
    if setting != "auto":
        return CheckpointingChoice(bool(setting), "set in train.gradient_checkpointing")
    parameter = next(model.parameters())
    width = parameter.element_size()
    weights = sum(p.numel() for p in model.parameters()) * width
    activations = activation_bytes(model.config, tokens, width)
    enabled = activations > max(weights, FLOOR_BYTES)
    relation = ">" if enabled else "<="
    return CheckpointingChoice(
        enabled,
        f"auto: activations of {tokens} tokens ~{activations / 2**30:.2f} GiB {relation} "
        f"max(weights {weights / 2**30:.2f} GiB, 1 GiB)",
    )
