"""GGUF for llama.cpp (and Ollama, LM Studio, llama-cpp-python), written with the `gguf` library.

llama.cpp's own converter (`convert_hf_to_gguf.py`) is not in any installable package (only in
the llama.cpp source tree, and llama-cpp-python's sdist), and it refuses a tokenizer whose
pre-tokenizer hash it has not seen, which every tokenizer trained here has. So the file is
written here from the merged Hugging Face folder with `gguf.GGUFWriter`: the architecture's
hyper-parameters, the tensors under llama.cpp's names (gguf's `TensorNameMap`), Llama's query
and key rows permuted into the interleaved rotary layout llama.cpp's `llama` architecture uses
(Qwen's architectures use the rotate-half layout transformers uses: no permutation), and the
byte-level BPE tokenizer with its merges, token types and chat template. The unquantised file
holds matrices in float16 and norms in float32; q8_0 and the k-quants are made from it by
llama.cpp's own quantiser (`llama_model_quantize`, through llama-cpp-python), which falls back
to a 32-wide type for rows narrower than a k-quant's 256 (as tiny models have).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from omnitune.core.errors import ConfigError
from omnitune.trainers.deploy.base import DeployFormat
from omnitune.trainers.deploy.modelfile import write_modelfile

#: transformers model_type -> (gguf architecture name, whether q/k rows are permuted).
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "llama": ("LLAMA", True),
    "mistral": ("LLAMA", True),
    "qwen2": ("QWEN2", False),
    "qwen3": ("QWEN3", False),
}

#: --quantize -> llama.cpp's LLAMA_FTYPE_MOSTLY_* value (llama.h).
FILE_TYPES: dict[str, int] = {"f16": 1, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}

#: pre-tokenizer split pattern -> llama.cpp's `tokenizer.ggml.pre` name. ByteLevel's own
#: regex (use_regex, GPT-2's) needs no Split and is "gpt-2".
PRE_TOKENIZERS: dict[str, str] = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
}

#: Jinja tags transformers adds for training masks; llama.cpp's template engines reject them.
_GENERATION_TAGS = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


def write(hf_folder: Path, out: Path, quantize: str, modality: str) -> Path:
    """`out/model-<quantize>.gguf` (and the Ollama Modelfile beside it)."""
    out.mkdir(parents=True, exist_ok=True)
    unquantized = out / "model-f16.gguf"
    _write_f16(hf_folder, unquantized)
    target = unquantized
    if quantize != "f16":
        target = out / f"model-{quantize}.gguf"
        _quantize(unquantized, target, quantize)
        unquantized.unlink()
    from transformers import AutoTokenizer

    write_modelfile(AutoTokenizer.from_pretrained(hf_folder), target, out / "Modelfile")
    return target


def _write_f16(hf_folder: Path, path: Path) -> None:
    import gguf
    import numpy as np
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(hf_folder)
    arch_name, permute = ARCHITECTURES[config.model_type]
    _refuse_rope_scaling(config)
    arch = getattr(gguf.MODEL_ARCH, arch_name)
    model = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(hf_folder)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads

    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(Path(hf_folder).name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    _add_tokenizer(writer, tokenizer, Path(hf_folder), config.vocab_size)

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # llama.cpp reads the output projection from token_embd when it is absent
        if "rotary_emb" in name:
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ConfigError(f"--format gguf: no llama.cpp name for the tensor {name}")
        data = tensor.detach().float().numpy()
        if permute and name.endswith("self_attn.q_proj.weight"):
            data = _interleave_rotary(data, heads)
        elif permute and name.endswith("self_attn.k_proj.weight"):
            data = _interleave_rotary(data, kv_heads)
        data = data.astype(np.float16 if data.ndim == 2 else np.float32)
        writer.add_tensor(gguf_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _interleave_rotary(weight: Any, heads: int) -> Any:
    """Rows of a query/key projection reordered from transformers' rotate-half layout (each
    head's first half of dimensions paired with its second half) to llama.cpp's interleaved
    pairs (0,1), (2,3), ...: the same rotation, applied to rows in the order llama.cpp's
    `llama` architecture expects."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _rope_theta(config: Any) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10_000.0)
    return theta


def _refuse_rope_scaling(config: Any) -> None:
    parameters = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    kind = (parameters or {}).get("rope_type", "default")
    if kind not in (None, "default"):
        raise ConfigError(
            f"--format gguf: rotary scaling '{kind}' is not written by this converter yet "
            "(llama.cpp's convert_hf_to_gguf.py from a llama.cpp checkout handles it)"
        )


def _add_tokenizer(writer: Any, tokenizer: Any, hf_folder: Path, vocab_size: int) -> None:
    """The byte-level BPE tokenizer as llama.cpp's `gpt2` tokenizer model."""
    import gguf

    spec = json.loads((hf_folder / "tokenizer.json").read_text(encoding="utf-8"))
    if spec.get("model", {}).get("type") != "BPE" or not _byte_level(spec):
        raise ConfigError(
            "--format gguf: the tokenizer is not a byte-level BPE (GPT-2, Llama 3, Qwen style); "
            "SentencePiece tokenizers are not written by this converter yet"
        )
    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i].content)
            types.append(
                gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
            )
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:  # rows of the embedding no token uses (vocabularies padded to a multiple)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for role in ("bos", "eos", "pad", "unk"):
        token_id = getattr(tokenizer, f"{role}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{role}_token_id")(token_id)
    writer.add_add_bos_token(_adds_bos(tokenizer))
    if tokenizer.chat_template:
        writer.add_chat_template(_GENERATION_TAGS.sub("", tokenizer.chat_template))


def _byte_level(spec: dict[str, Any]) -> bool:
    return '"ByteLevel"' in json.dumps(spec.get("pre_tokenizer")) or '"ByteLevel"' in json.dumps(
        spec.get("decoder")
    )


def _pre_tokenizer(spec: dict[str, Any]) -> str:
    """llama.cpp's name for the tokenizer's split rule: GPT-2's regex inside ByteLevel, or a
    Split pattern it knows; anything else is refused (the tokens would differ)."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    patterns = [s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"]
    if not patterns and any(
        s.get("type") == "ByteLevel" and s.get("use_regex", True) for s in steps
    ):
        return "gpt-2"
    if len(patterns) == 1 and patterns[0] in PRE_TOKENIZERS:
        return PRE_TOKENIZERS[patterns[0]]
    raise ConfigError(
        "--format gguf: the tokenizer's pre-tokenizer split is not one llama.cpp knows by name "
        f"(patterns: {patterns or 'none'}); its tokens would differ in llama.cpp"
    )


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


def _quantize(source: Path, target: Path, quantize: str) -> None:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[quantize]
    params.nthread = 1
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(target).encode(), ctypes.byref(params)
    )
    if status != 0:
        raise RuntimeError(f"llama.cpp's quantiser failed ({status}) on {source} -> {quantize}")


class LlamaCppRuntime:
    """A GGUF file in llama.cpp (llama-cpp-python), one thread, logits of every position."""

    def __init__(self, path: Path) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=1024,
            n_batch=512,
            n_threads=1,
            logits_all=True,
            verbose=False,
        )

    def logits(self, tokens: list[int]) -> Any:
        import numpy as np

        self.llm.reset()
        self.llm.eval(tokens)
        return np.array(self.llm.scores[: self.llm.n_tokens], dtype=np.float32)

    def greedy(self, prompt: list[int], max_new_tokens: int, stop: set[int]) -> list[int]:
        import numpy as np

        self.llm.reset()
        self.llm.eval(prompt)
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(token)
            if token in stop:
                break
            self.llm.eval([token])
        return out

    def tokenize(self, text: str) -> list[int] | None:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def load(path: Path, quantize: str, modality: str, hf_folder: Path) -> LlamaCppRuntime:
    return LlamaCppRuntime(path)


def launch(path: Path, modality: str) -> str:
    return (
        f"llama-server -m {path} --port 8080   # or: ollama create NAME -f {path.parent}/Modelfile"
    )


FORMAT = DeployFormat(
    name="gguf",
    runtime="llama.cpp",
    families={"text": tuple(ARCHITECTURES)},
    quantizations=tuple(FILE_TYPES),
    write=write,
    load=load,
    launch=launch,
)
