"""The offline tiny-model factory: what it builds loads with plain transformers code."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from tests.conftest import run_cli, run_python

# family -> (processor class, model Auto class, input kind)
FAMILIES = {
    "text": ("AutoTokenizer", "AutoModelForCausalLM", "text"),
    "qwen2": ("AutoTokenizer", "AutoModelForCausalLM", "text"),
    "whisper": ("AutoProcessor", "AutoModelForSpeechSeq2Seq", "audio"),
    "whisper-30s": ("AutoProcessor", "AutoModelForSpeechSeq2Seq", "audio"),
    "llava": ("AutoProcessor", "AutoModelForImageTextToText", "image"),
    "idefics3": ("AutoProcessor", "AutoModelForImageTextToText", "image"),
    "qwen2-vl": ("AutoProcessor", "AutoModelForImageTextToText", "image"),
}

# Plain transformers, no omnitune import: proves each folder is an ordinary HF checkpoint.
# One process loads every family (a process's imports cost more than a tiny model's load).
LOAD_AND_GENERATE = """
import json
import numpy as np
import transformers
from PIL import Image

for folder, processor_class, model_class, kind in ARGS:
    processor = getattr(transformers, processor_class).from_pretrained(folder)
    model = getattr(transformers, model_class).from_pretrained(folder)
    if kind == "audio":
        audio = np.zeros(16000, dtype=np.float32)
        inputs = processor(audio=audio, sampling_rate=16000, return_tensors="pt")
    elif kind == "image":
        image = Image.new("RGB", (40, 50), (120, 30, 200))
        parts = [{"type": "image"}, {"type": "text", "text": "Which digit?"}]
        messages = [{"role": "user", "content": parts}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    else:
        inputs = processor.apply_chat_template([{"role": "user", "content": "hello"}],
            add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    text_config = model.config.get_text_config()
    print(json.dumps({
        "folder": folder,
        "model": type(model).__name__,
        "generated": int(out.shape[-1]),
        "hidden": getattr(text_config, "hidden_size", None) or text_config.d_model,
        "layers": getattr(text_config, "num_hidden_layers", None) or text_config.decoder_layers,
    }))
"""


@pytest.mark.slow
def test_build_tiny_writes_a_checkpoint_and_prints_its_folder(tmp_path):
    out = tmp_path / "text"
    built = run_cli("models", "build-tiny", "text", "--out", str(out))
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == str(out)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_every_family_loads_with_auto_classes_and_generates_in_a_new_process(tiny_model):
    args = [[str(tiny_model(family)), *FAMILIES[family]] for family in FAMILIES]
    result = run_python(f"ARGS = {args!r}\n" + LOAD_AND_GENERATE)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(line) for line in result.stdout.strip().splitlines()[-len(args) :]]
    assert [r["folder"] for r in reports] == [a[0] for a in args]
    for family, report in zip(FAMILIES, reports, strict=True):
        assert report["generated"] >= 4, family
        assert report["hidden"] <= 128 and report["layers"] == 2, family


@pytest.mark.slow
def test_models_check_runs_generate_through_omnitunes_loader(tiny_model):
    result = run_cli("models", "check", str(tiny_model("whisper")))
    assert result.returncode == 0, result.stderr
    assert "speech, WhisperForConditionalGeneration" in result.stdout
    assert "generated 8 tokens" in result.stdout


def _install_in_hub_cache(folder: Path, cache: Path, repo_id: str) -> None:
    """Lay `folder` out as huggingface_hub's cache holds a downloaded repository."""
    revision = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)


@pytest.mark.slow
def test_hub_ids_load_from_the_local_hub_cache_by_the_same_code(tiny_model, tmp_path):
    cache = tmp_path / "hub"
    _install_in_hub_cache(tiny_model("text"), cache, "omnitune-tests/tiny-chat")
    result = run_cli("models", "check", "omnitune-tests/tiny-chat", HF_HUB_CACHE=str(cache))
    assert result.returncode == 0, result.stderr
    assert "omnitune-tests/tiny-chat: text, LlamaForCausalLM" in result.stdout


def test_a_hub_id_missing_offline_is_one_clear_error(tmp_path):
    result = run_cli("models", "check", "nobody/no-such-model", HF_HUB_CACHE=str(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "model.name_or_path: cannot load 'nobody/no-such-model'" in result.stderr
    assert "HF_HUB_OFFLINE=1" in result.stderr


def test_a_missing_folder_is_named(tmp_path):
    result = run_cli("models", "check", str(tmp_path / "absent"))
    assert result.returncode == 2
    assert f"no such folder '{tmp_path / 'absent'}'" in result.stderr


@pytest.mark.slow
def test_modality_mismatch_names_both(tiny_model):
    from omnitune.core.errors import ConfigError
    from omnitune.modalities.loading import load_pretrained

    with pytest.raises(ConfigError, match=r"'speech' does not match .* a llama model \(text\)"):
        load_pretrained(str(tiny_model("text")), "speech")


@pytest.mark.slow
def test_whisper_special_tokens_follow_whispers_order(tiny_model):
    from transformers import AutoProcessor
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    tokenizer = AutoProcessor.from_pretrained(tiny_model("whisper")).tokenizer
    start = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    for index, code in enumerate(LANGUAGES):
        assert tokenizer.convert_tokens_to_ids(f"<|{code}|>") == start + 1 + index
    tokenizer.set_prefix_tokens(language="german", task="transcribe", predict_timestamps=False)
    ids = tokenizer("three four").input_ids
    assert tokenizer.convert_ids_to_tokens(ids[:4]) == [
        "<|startoftranscript|>",
        "<|de|>",
        "<|transcribe|>",
        "<|notimestamps|>",
    ]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "three four"


@pytest.mark.slow
def test_chat_template_marks_only_assistant_tokens(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("text"))
    messages = [
        {"role": "user", "content": "Which digit is this?"},
        {"role": "assistant", "content": "It is seven."},
    ]
    encoded = tokenizer.apply_chat_template(
        messages, return_dict=True, return_assistant_tokens_mask=True
    )
    marked = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(marked) == "It is seven.<|eos|>"


@pytest.mark.slow
def test_builds_are_deterministic_for_a_seed(tmp_path):
    from omnitune.modalities.tiny import build_tiny

    first = build_tiny("text", tmp_path / "a", seed=3)
    second = build_tiny("text", tmp_path / "b", seed=3)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert json.loads((first / "tokenizer.json").read_text()) == json.loads(
        (second / "tokenizer.json").read_text()
    )


@pytest.mark.parametrize("size", ["200", "40"])
def test_tiny_means_tiny(size, tmp_path):
    result = run_cli("models", "build-tiny", "text", "--out", str(tmp_path), "--hidden-size", size)
    assert result.returncode == 2
    assert f"hidden_size: {size} is not a multiple of 16 between 16 and 128" in result.stderr


def test_loader_module_needs_no_torch_to_import():
    code = textwrap.dedent(
        """
        import sys
        import omnitune.modalities.loading, omnitune.modalities.tiny
        print("torch" in sys.modules, "transformers" in sys.modules)
        """
    )
    assert run_python(code).stdout.strip() == "False False"
