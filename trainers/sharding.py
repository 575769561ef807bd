"""Fully sharded data parallel (FSDP 2) for the trainer loop, on GPUs and on CPUs.

`accelerate launch --config_file configs/accelerate/fsdp.yaml` asks for FSDP. On CUDA,
accelerate shards the model itself when the loop prepares it. Without CUDA it cannot: accelerate
1.15 turns FSDP on only for its multi-accelerator types, and a CPU launch becomes plain
data parallelism over gloo (MULTI_CPU) with every rank holding the whole model, silently. So
on CPUs the loop shards the model here, with PyTorch's own `fully_shard` over a one-dimensional
"cpu" device mesh, the way accelerate does on GPUs: each transformer block (the model's
`_no_split_modules`, accelerate's TRANSFORMER_BASED_WRAP) is a unit, then the root. Parameters,
gradients and optimizer state are then each rank's 1/N slice (DTensors).

What the rest of the loop needs from a sharded model, all collective (every rank calls):
- checkpoints hold whole tensors (`full_tensors`, `full_optimizer_state`) so that a run resumes
  under any world size and `omnitune export`/`eval` read them as they read any run's;
- resuming scatters them back (`load_parameters`, `load_optimizer_state`);
- gradient clipping takes the norm over all shards (`clip_gradients`);
- evaluation runs on every rank (each forward gathers the parameters from all of them).
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def fsdp_requested() -> bool:
    """Whether this process was launched with an FSDP accelerate config and has partners."""
    requested = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    return requested and int(os.environ.get("WORLD_SIZE", "1")) > 1


def shards_here(accelerator: Any) -> bool:
    """Whether the loop must shard the model itself: FSDP asked for where accelerate will not
    (no CUDA: accelerate runs MULTI_CPU)."""
    from accelerate.utils import DistributedType

    return fsdp_requested() and accelerator.distributed_type == DistributedType.MULTI_CPU


def warn_if_deepspeed_cannot_shard(accelerator: Any) -> None:
    """A DeepSpeed config launched without CUDA runs as plain data parallelism: accelerate
    1.15 enables DeepSpeed only when not on the CPU. Say so rather than let a user believe
    ZeRO partitions the model."""
    from accelerate.utils import DistributedType

    asked = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if asked and accelerator.distributed_type == DistributedType.MULTI_CPU:
        log.warning(
            "DeepSpeed was asked for, but accelerate runs DeepSpeed on CUDA only: on these "
            "CPUs every rank holds the whole model (plain data parallelism over gloo). To "
            "shard on CPUs, launch with configs/accelerate/fsdp.yaml"
        )


def shard_model(model: Any, world_size: int) -> int:
    """Shard `model` in place over `world_size` CPU processes: each transformer block, then the
    root. Returns how many blocks became units. Call before the optimizer is built (its
    parameters become DTensors)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world_size,))
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() not in ("false", "0")
    block_names = set(_no_split_modules(model))
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
    log.info(
        "FSDP on %d CPU processes (gloo): %d %s blocks and the root sharded",
        world_size,
        len(blocks),
        "/".join(sorted(block_names)) or "no",
    )
    return len(blocks)


def _no_split_modules(model: Any) -> list[str]:
    """The block classes transformers names for this model (through a PEFT wrapper too)."""
    for candidate in (model, getattr(model, "base_model", None), _peft_inner(model)):
        names = getattr(candidate, "_no_split_modules", None)
        if names:
            return list(names)
    return []


def _peft_inner(model: Any) -> Any:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else None


def is_sharded(model: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def elements_held(model: Any) -> int:
    """Parameter elements this rank stores: its shards of sharded parameters, whole others."""
    from torch.distributed.tensor import DTensor

    return sum(
        p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters()
    )


def full_tensors(tensors: dict[str, Any]) -> dict[str, Any]:
    """Whole copies of `tensors` (sharded ones gathered from every rank; collective)."""
    from torch.distributed.tensor import DTensor

    return {
        name: value.full_tensor() if isinstance(value, DTensor) else value
        for name, value in tensors.items()
    }


def full_optimizer_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """The optimizer's whole state keyed by parameter name, on every rank (collective)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True)
    )


def load_optimizer_state(model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Scatter a whole optimizer state (from `full_optimizer_state`) into this rank's shards."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )


def load_parameters(parameters: dict[str, Any], values: dict[str, Any]) -> None:
    """Copy whole tensors into (possibly sharded) parameters: each rank keeps its slice."""
    import torch
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        for name, value in values.items():
            parameter = parameters[name]
            if isinstance(parameter, DTensor):
                value = distribute_tensor(
                    value.to(parameter.dtype), parameter.device_mesh, parameter.placements
                )
            parameter.copy_(value)


def clip_gradients(parameters: list[Any], max_norm: float) -> float:
    """Clip to `max_norm` by the total norm over every rank's gradient shards."""
    import torch
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return float(total)
