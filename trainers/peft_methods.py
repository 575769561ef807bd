"""Parameter-efficient methods by name: each maps onto a `peft` config or `requires_grad` choice.

`prepare_model(method, model, ...)` returns a `Prepared` bundle: the model to train, the names of
the parameters a checkpoint must hold, the optimizer's parameter groups, and an optional
per-step hook (Half Fine-Tuning changes what trains each round). Nothing here re-implements
what `peft` has: LoRA and its variants, IA3 and prompt tuning are `peft` configs; LoRA+ is
`peft.optimizers.create_loraplus_optimizer`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnitune.core.errors import ConfigError

if TYPE_CHECKING:
    from omnitune.trainers.config import PeftSection, TrainSection

# peft 0.21's PeftModel reads `model.is_gradient_checkpointing`, which transformers 5 deprecated
# with a FutureWarning on every wrap (three copies of it in one Python API session). The
# warning is theirs to fix and says nothing to our users; only that message is silenced.
warnings.filterwarnings(
    "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
)

#: method -> extra LoraConfig arguments (the LoRA family differs only in these).
LORA_VARIANTS: dict[str, dict[str, Any]] = {
    "lora": {},
    "loraplus": {},
    "qlora": {},
    "dora": {"use_dora": True},
    "rslora": {"use_rslora": True},
    "pissa": {"init_lora_weights": "pissa"},
    "olora": {"init_lora_weights": "olora"},
}
FULL_WEIGHT_METHODS = {"full", "hft"}

#: Every method `peft.method` accepts, in the order the config's help and errors list them:
#: the LoRA family, the other `peft` configs, then the full-weight methods.
PEFT_METHODS: tuple[str, ...] = (
    "lora",
    "dora",
    "rslora",
    "pissa",
    "olora",
    "loraplus",
    "ia3",
    "prompt_tuning",
    "qlora",
    "full",
    "hft",
)
#: methods whose initialisation changes the base weights: exported adapters are converted back
#: to plain LoRA against the original base (peft's path_initial_model_for_weight_conversion).
MUTATING_INIT = {"pissa", "olora"}


@dataclass
class Prepared:
    model: Any
    checkpoint_names: list[str]
    is_peft: bool
    update: Callable[[Any, int], str | None] = field(default=lambda model, step: None)


def check_device_support(method: str) -> None:
    """Fail before any weights load when the method cannot run on this machine."""
    if method != "qlora":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            "peft.method: qlora needs a CUDA GPU (4-bit weights through bitsandbytes) and this "
            "machine has none; use peft.method=lora here"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            "peft.method: qlora needs the bitsandbytes package: pip install bitsandbytes"
        ) from None


def load_options(method: str) -> dict[str, Any]:
    """Extra `from_pretrained` arguments the method needs (4-bit quantisation for QLoRA)."""
    if method != "qlora":
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    }


#: LoRA variants whose adapter PEFT can put on a fused parameter (lora.ParamWrapper): DoRA
#: needs a weight per output row and PiSSA/OLoRA decompose a module's `weight`, which the fused
#: experts do not have.
PARAMETER_LORA = {"lora", "rslora", "loraplus", "qlora"}


def prepare_model(
    model: Any,
    section: PeftSection,
    targets: Any,
    task_type: str | None,
    seed: int,
    train_router: bool = False,
) -> Prepared:
    """Wrap or unfreeze `model` for `section.method` (and its routers, for an MoE model with
    `moe.train_router`)."""
    method = section.method
    if section.target_parameters and method not in LORA_VARIANTS:
        raise ConfigError(
            f"peft.target_parameters: adapts parameters with LoRA only, not with {method}"
        )
    if method in FULL_WEIGHT_METHODS and section.init_from:
        raise ConfigError(
            f"peft.init_from: method {method} trains the model's own weights; start from a "
            "saved model by pointing model.name_or_path at it"
        )
    if method in FULL_WEIGHT_METHODS:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        names = [name for name, _ in model.named_parameters()]
        if method == "full":
            return Prepared(model, names, is_peft=False)
        from omnitune.trainers.hft import HalfFineTuning

        schedule = HalfFineTuning(model, section.hft_round_steps, section.hft_selection, seed)
        return Prepared(model, names, is_peft=False, update=schedule.update)

    from peft import get_peft_model

    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    config = _peft_config(section, targets, task_type, train_router)
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as exc:
        if "not found" in str(exc) or "did not match" in str(exc) or "no modules" in str(exc):
            raise ConfigError(
                f"peft.target_modules: {config.target_modules!r} matched no module of this "
                f"model; its linear layers are named: {', '.join(linear_layer_names(model))}"
            ) from None
        raise
    if section.init_from:
        load_adapter_weights(wrapped, section.init_from)
    names = [name for name, p in wrapped.named_parameters() if p.requires_grad]
    return Prepared(wrapped, names, is_peft=True)


def load_adapter_weights(model: Any, folder: str) -> None:
    """Put a saved adapter's weights into `model`'s fresh adapter (`peft.init_from`). Every
    adapter tensor must be there with its shape: a partial start is a different model."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    if not (Path(folder) / "adapter_config.json").is_file():
        raise ConfigError(
            f"peft.init_from: {folder} is not a saved adapter (no adapter_config.json)"
        )
    weights = load_peft_weights(folder, device="cpu")
    try:
        result = set_peft_model_state_dict(model, weights)
    except RuntimeError as exc:  # size mismatch: another rank or other modules
        first = str(exc).strip().splitlines()[-1].strip()
        raise ConfigError(
            f"peft.init_from: {folder} does not fit this adapter (rank or target modules "
            f"differ from the peft section): {first}"
        ) from None
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ConfigError(
            f"peft.init_from: {folder} holds weights this adapter does not have "
            f"(e.g. {unexpected[0]}); its target modules differ from the peft section's"
        )


def _peft_config(
    section: PeftSection, targets: Any, task_type: str | None, train_router: bool = False
) -> Any:
    import peft

    method = section.method
    chosen = section.target_modules
    saved = list(section.modules_to_save or targets.modules_to_save or [])
    if train_router:
        if not targets.routers:
            raise ConfigError("moe.train_router: this model has no router (it is not an MoE)")
        if method == "prompt_tuning":
            raise ConfigError("moe.train_router: prompt_tuning trains no module of the model")
        saved += [name for name in targets.routers if name not in saved]
    if method in LORA_VARIANTS:
        return peft.LoraConfig(
            r=section.r,
            lora_alpha=section.alpha,
            lora_dropout=section.dropout,
            target_modules=chosen or targets.lora,
            target_parameters=_expert_targets(section, targets) or None,
            modules_to_save=saved or None,
            task_type=task_type,
            **LORA_VARIANTS[method],
        )
    if method == "ia3":
        modules = chosen or targets.ia3
        if modules is None:
            raise ConfigError("peft.target_modules: no IA3 default for this model; set it")
        feedforward = [m for m in targets.ia3_feedforward or [] if m in modules]
        return peft.IA3Config(
            target_modules=modules,
            feedforward_modules=feedforward,
            modules_to_save=saved or None,
            task_type=task_type,
        )
    if method == "prompt_tuning":
        if task_type != "CAUSAL_LM":
            raise ConfigError("peft.method: prompt_tuning is supported for text models only")
        return peft.PromptTuningConfig(
            task_type=task_type, num_virtual_tokens=section.num_virtual_tokens
        )
    raise ConfigError(f"peft.method: unknown '{method}'")


def _expert_targets(section: PeftSection, targets: Any) -> list[str]:
    """The fused expert weights the LoRA adapter covers: the section's, else every one the
    model has. A method that cannot adapt a fused weight is refused naming both fields."""
    chosen = (
        list(targets.parameters) if section.target_parameters is None else section.target_parameters
    )
    if not chosen:
        return []
    if section.method not in PARAMETER_LORA:
        raise ConfigError(
            f"peft.method: {section.method} cannot put an adapter on fused expert weights "
            f"(peft.target_parameters: {', '.join(chosen)}); use lora, rslora or loraplus, or "
            "set peft.target_parameters=[] to adapt attention only (the experts stay frozen)"
        )
    if section.dropout:
        raise ConfigError(
            "peft.dropout: LoRA on fused expert weights takes no dropout (peft's ParamWrapper); "
            "set peft.dropout=0, or peft.target_parameters=[] to adapt attention only"
        )
    unknown = [name for name in chosen if name not in targets.parameters]
    if unknown:
        known = ", ".join(targets.parameters) or "none: the model has no fused expert weights"
        raise ConfigError(
            f"peft.target_parameters: {unknown[0]} is not a fused expert weight of this model "
            f"(it has: {known})"
        )
    return chosen


def build_optimizer(model: Any, section: PeftSection, train: TrainSection) -> Any:
    """AdamW over the trainable parameters (fused on CUDA); LoRA+ gives B matrices a higher lr."""
    import torch

    options: dict[str, Any] = {"lr": train.lr, "weight_decay": train.weight_decay}
    if torch.cuda.is_available():
        options["fused"] = True
    if section.method == "loraplus":
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(
            model, torch.optim.AdamW, loraplus_lr_ratio=section.loraplus_lr_ratio, **options
        )
    # Built before Half Fine-Tuning freezes its first half: every group has optimizer state.
    parameters = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(parameters, **options)


def linear_layer_names(model: Any) -> list[str]:
    """Distinct last-name parts of the model's linear layers (what target_modules matches)."""
    import torch

    names = {
        name.split(".")[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name
    }
    return sorted(names)
