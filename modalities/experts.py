"""Mixture-of-Experts models as transformers 5 builds them: where the experts and router are.

transformers 5 stores each MoE layer's experts as fused 3-D parameters (`mlp.experts.gate_up_proj`
of shape [experts, 2 x intermediate, hidden] and `mlp.experts.down_proj`), not as one
`nn.Linear` per expert, so `target_modules` cannot reach them; PEFT 0.21 adapts such
parameters through `LoraConfig(target_parameters=...)`. Every MoE family declares its router
for transformers' output recording (`_can_record_outputs["router_logits"]`: the router's
module class and which of its outputs are the logits), which is how omnitune finds the router
without a list of families.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def expert_parameters(model: Any) -> list[str]:
    """PEFT `target_parameters` names of the model's fused expert weights, e.g.
    ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]; [] for a dense model."""
    names = set()
    for name, parameter in model.named_parameters():
        parts = name.split(".")
        if parameter.dim() == 3 and len(parts) >= 3 and "experts" in parts[-2]:
            names.add(".".join(parts[-3:]))
    return sorted(names)


@dataclass(frozen=True)
class Router:
    """What the trainer needs to read one MoE family's routing."""

    module_class: type  # the router module; its forward returns the logits at `index`
    index: int
    num_experts: int
    top_k: int
    own_coef: float  # the family's default router_aux_loss_coef (its config's)
    balancing_loss: Any  # the family's own load_balancing_loss_func, or None


def find_router(model: Any) -> Router | None:
    """The model's router, or None for a dense model."""
    import sys

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    recorder = (getattr(type(base), "_can_record_outputs", None) or {}).get("router_logits")
    if recorder is None or getattr(recorder, "target_class", None) is None:
        return None
    config = getattr(base.config, "text_config", None) or base.config
    num_experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", 0)
    if not num_experts:
        return None
    return Router(
        module_class=recorder.target_class,
        index=recorder.index or 0,
        num_experts=int(num_experts),
        top_k=int(getattr(config, "num_experts_per_tok", 1)),
        own_coef=float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0),
        balancing_loss=getattr(
            sys.modules[type(base).__module__], "load_balancing_loss_func", None
        ),
    )


def router_module_names(model: Any) -> list[str]:
    """The last name part of the router modules (`gate` in every family here): what
    `modules_to_save` names to train the router in full."""
    router = find_router(model)
    if router is None:
        return []
    return sorted(
        {
            name.split(".")[-1]
            for name, m in model.named_modules()
            if isinstance(m, router.module_class)
        }
    )
