"""Training at a real size, for a GPU: a Llama-architecture model of about 0.5 B parameters built
from a config (Qwen2.5-0.5B's shape: hidden 896, 24 layers, 14 query and 2 key/value heads, MLP
4,864, a 151,936-token vocabulary, tied embeddings), random weights saved with save_pretrained
in bf16 next to the tiny text model's tokenizer. `make bench` runs `trainer_overhead`'s two
sides on it (the trainer core and the plain PyTorch + peft loop, bf16 autocast on both) when
a CUDA device is present, and reports tokens/s and model FLOPs utilisation.

MFU here is achieved model FLOPs over the device's peak dense bf16 FLOPs. LoRA leaves the base
weights frozen, so a token costs about 4 N FLOPs (2 N forward, 2 N for the input gradients of
the backward pass; no weight gradients), N the parameters that take part in matmuls (all of
them with tied embeddings: the vocabulary matrix is the output layer). Attention's
sequence-length term is left out, so the figure is a slight underestimate.

    python -m bench.gpu_training --build DIR [--layers 24]   # build (and print its size)
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

#: Peak dense bf16 tensor-core FLOP/s by device name (vendor datasheets; no sparsity).
PEAK_BF16_FLOPS = {
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM and NVL
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
}

REAL_SIZE = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151_936,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}


def build_real_size(tokenizer_dir: Path, out: Path, layers: int | None = None) -> Path:
    """A 0.5 B-parameter Llama-shape model folder (bf16 weights, config, tokenizer)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    shape = {**REAL_SIZE, "num_hidden_layers": layers or REAL_SIZE["num_hidden_layers"]}
    config = LlamaConfig(
        **shape,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(out)
    return out


def parameters(model_dir: Path) -> int:
    """Parameters of the saved model, counted from its config (no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


def peak_flops() -> float | None:
    """The CUDA device's peak dense bf16 FLOP/s, or None when it is not in the table."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, flops in PEAK_BF16_FLOPS.items():  # "H100 PCIe" is tried before "H100"
        if key in name:
            return flops
    return None


def mfu(tokens_per_second: float, n_parameters: int) -> float | None:
    peak = peak_flops()
    return None if peak is None else 4 * n_parameters * tokens_per_second / peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", required=True, help="folder to build the model in")
    parser.add_argument("--tokenizer", default="bench/.cache/tiny-text")
    parser.add_argument("--layers", type=int, help="fewer layers, to try the path on a CPU")
    args = parser.parse_args()
    folder = build_real_size(Path(args.tokenizer), Path(args.build), args.layers)
    print(json.dumps({"model": str(folder), "parameters": parameters(folder)}))


if __name__ == "__main__":
    main()
