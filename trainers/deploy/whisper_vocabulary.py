"""Whisper's vocabulary layout, which faster-whisper assumes: text tokens first, then
<|endoftext|> and the other special tokens in Whisper's order, then timestamps; and its size,

faster-whisper keeps a decoded token only if its id is below <|endoftext|>'s, and takes every id
above <|notimestamps|> for a timestamp. OpenAI's checkpoints are laid out so; a Whisper whose
tokenizer gave its special tokens the first ids (the tiny Whisper built here: `tokenizers`'
trainer numbers special tokens first) would transcribe to nothing. Such a model is exported
with its vocabulary relabelled: the same tokens and rows in Whisper's order, every id in the
model config, generation config and tokenizer moved with them. A permutation of the embedding
rows (tied to the output projection) and of the ids changes no probability, so transcripts are
unchanged; the parity report checks that.

"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

#: config keys that hold one token id, lists of ids, or {name: id} maps.
_ID_KEYS = (
    "decoder_start_token_id",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "no_timestamps_token_id",
    "prev_sot_token_id",
    "unk_token_id",
)
_ID_LISTS = ("suppress_tokens", "begin_suppress_tokens")
_ID_MAPS = ("lang_to_id", "task_to_id")


def special_ids(tokenizer_json: dict[str, Any]) -> list[int]:
    return sorted(t["id"] for t in tokenizer_json.get("added_tokens", []) if t.get("special"))


def needs_relabelling(hf_folder: Path) -> bool:
    """Whether some text token's id is above <|endoftext|>'s (then faster-whisper drops it)."""
    spec = json.loads((hf_folder / "tokenizer.json").read_text(encoding="utf-8"))
    specials = set(special_ids(spec))
    text_ids = [i for i in spec["model"]["vocab"].values() if i not in specials]
    eot = spec["model"]["vocab"].get("<|endoftext|>")
    return eot is not None and bool(text_ids) and max(text_ids) > eot


def for_faster_whisper(hf_folder: Path, out: Path) -> Path:
    """`hf_folder` itself when faster-whisper takes its layout, else a relabelled copy at `out`."""
    return relabel(hf_folder, out) if needs_relabelling(hf_folder) else hf_folder


def relabel(hf_folder: Path, out: Path) -> Path:
    """A copy of the Whisper folder with text tokens first and special tokens after, in their
    own order; see the module docstring."""
    import torch
    from transformers import WhisperForConditionalGeneration

    spec = json.loads((hf_folder / "tokenizer.json").read_text(encoding="utf-8"))
    specials = special_ids(spec)
    special_set = set(specials)
    vocab_ids = sorted(set(spec["model"]["vocab"].values()) | special_set)
    order = [i for i in vocab_ids if i not in special_set] + specials
    new_id = {old: new for new, old in enumerate(order)}

    out.mkdir(parents=True, exist_ok=True)
    model = WhisperForConditionalGeneration.from_pretrained(hf_folder, dtype=torch.float32)
    rows = model.model.decoder.embed_tokens.weight
    if rows.shape[0] != len(order):
        raise ValueError(f"{hf_folder}: {rows.shape[0]} embedding rows for {len(order)} tokens")
    with torch.no_grad():
        model.model.decoder.embed_tokens.weight.copy_(rows[torch.tensor(order)].clone())
    _move_ids(model.config, new_id)
    _move_ids(model.generation_config, new_id)
    model.save_pretrained(out)

    spec["model"]["vocab"] = {t: new_id[i] for t, i in spec["model"]["vocab"].items()}
    for token in spec.get("added_tokens", []):
        token["id"] = new_id[token["id"]]
    for entry in ((spec.get("post_processor") or {}).get("special_tokens") or {}).values():
        entry["ids"] = [new_id[i] for i in entry["ids"]]
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    config_path = hf_folder / "tokenizer_config.json"
    if config_path.is_file():
        tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
        decoder = tokenizer_config.get("added_tokens_decoder")
        if decoder:
            tokenizer_config["added_tokens_decoder"] = {
                str(new_id[int(i)]): v for i, v in decoder.items()
            }
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    for name in ("processor_config.json", "preprocessor_config.json", "special_tokens_map.json"):
        if (hf_folder / name).is_file():
            shutil.copy2(hf_folder / name, out / name)
    return out


def _move_ids(config: Any, new_id: dict[int, int]) -> None:
    for key in _ID_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int):
            setattr(config, key, new_id[value])
        elif isinstance(value, list):
            setattr(config, key, [new_id[v] for v in value])
    for key in _ID_LISTS:
        value = getattr(config, key, None)
        if value:
            setattr(config, key, [new_id[v] for v in value])
    for key in _ID_MAPS:
        value = getattr(config, key, None)
        if value:
            setattr(config, key, {name: new_id[v] for name, v in value.items()})
    forced = getattr(config, "forced_decoder_ids", None)
    if forced:
        config.forced_decoder_ids = [[pos, new_id[v]] for pos, v in forced]
