"""`omnitune export RUN --format gguf|ctranslate2|onnx` (issue 37): each export runs in its real
runtime (llama.cpp through llama-cpp-python, faster-whisper, ONNX Runtime) against the PyTorch
model on the run's eval set, and says so in parity.json; what a runtime cannot take is refused
before any work, exit 2, naming the family and the format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli
from tests.speech_data import write_tone_corpus

pytestmark = pytest.mark.slow


def _train(tmp_path: Path, name: str, config: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    config = {**config, "output_dir": str(tmp_path / name)}
    path.write_text(yaml.safe_dump(config))
    done = run_cli("train", str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path / name


def _text_run(tmp_path, name, model, text_data, peft="lora", steps=20) -> Path:
    return _train(
        tmp_path,
        name,
        {
            "model": {"name_or_path": str(model), "modality": "text"},
            "data": {"train": str(text_data["train"]), "eval": str(text_data["eval"])},
            "peft": {"method": peft, **({"r": 8, "alpha": 16} if peft == "lora" else {})},
            "train": {"max_steps": steps, "batch_size": 16, "lr": 1e-3, "num_threads": 1},
        },
    )


def _export(run: Path, *args: str) -> tuple[dict, str]:
    done = run_cli("export", str(run), *args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = Path(done.stdout.split("report: ")[1].split()[0])
    return json.loads(report.read_text()), done.stdout


@pytest.fixture(scope="module")
def lora_chat_run(tmp_path_factory, sft_model, text_data) -> Path:
    """A LoRA run on the SFT chat model: answers a third of the digit chats right."""
    return _text_run(tmp_path_factory.mktemp("deploy-lora"), "lora", sft_model, text_data)


def test_gguf_exports_answer_as_transformers_does_in_llama_cpp(lora_chat_run, text_data):
    import llama_cpp

    report, printed = _export(lora_chat_run, "--format", "gguf", "--samples", "16")
    assert report["passed"] and report["judged"], report
    agreement = report["agreement"]
    assert agreement["token_agreement"] >= 0.99 and agreement["answers_identical"] == 1.0
    assert agreement["tokenizer_agreement"] == 1.0  # llama.cpp splits the prompts as HF does
    pytorch, exported = report["pytorch"], report["exported"]
    assert exported["perplexity"] == pytest.approx(pytorch["perplexity"], rel=0.01)
    assert exported["exact_match"] == pytorch["exact_match"] > 0
    assert "parity: passed" in printed and "token_agreement" in printed

    folder = lora_chat_run / "exports" / "gguf-f16"
    gguf = folder / "model-f16.gguf"
    modelfile = (folder / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-f16.gguf")
    assert 'eq .Role "user" }}<|user|>{{ .Content }}' in modelfile
    assert 'PARAMETER stop "<|eos|>"' in modelfile

    # The file alone, as a user loads it: llama.cpp's own chat formatting (the template in the
    # GGUF) answers the first eval chat as transformers answered it.
    row = json.loads(text_data["eval"].read_text().splitlines()[0])
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=256, n_threads=1, verbose=False)
    chat = llm.create_chat_completion(messages=row["messages"][:-1], temperature=0.0, max_tokens=16)
    answer = chat["choices"][0]["message"]["content"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = run_cli("export", str(lora_chat_run), "--merge")
    assert merged.returncode == 0, merged.stderr[-2000:]
    model_dir = Path(merged.stdout.strip().splitlines()[-1])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    inputs = tokenizer.apply_chat_template(
        row["messages"][:-1], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    expected = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip() == expected.strip()


def test_a_qwen2_model_exports_to_gguf_without_the_llama_rotary_permutation(
    tmp_path, tiny_model, text_data
):
    """Qwen2's layout (rotate-half rotary, biases on q/k/v) goes through the same converter
    with the `qwen2` architecture: llama.cpp must answer as transformers does."""
    run = _text_run(tmp_path, "qwen2", tiny_model("qwen2"), text_data, peft="full", steps=10)
    report, _ = _export(run, "--format", "gguf", "--samples", "12")
    assert report["passed"] and report["agreement"]["token_agreement"] >= 0.99, report
    assert report["agreement"]["tokenizer_agreement"] == 1.0


@pytest.mark.parametrize("quantize", ["q8_0", "q4_k_m"])
def test_quantised_gguf_reports_its_cost_without_judging_it(lora_chat_run, quantize):
    report, printed = _export(
        lora_chat_run, "--format", "gguf", "--quantize", quantize, "--samples", "16"
    )
    assert report["quantize"] == quantize and not report["judged"] and report["passed"]
    f16 = json.loads((lora_chat_run / "exports" / "gguf-f16" / "parity.json").read_text())
    assert report["exported"]["size_mb"] < f16["exported"]["size_mb"]
    assert report["exported"]["perplexity"] > 0 and report["agreement"]["token_agreement"] > 0.5
    if quantize == "q8_0":
        assert report["agreement"]["token_agreement"] >= 0.99
    assert "quantised: not judged" in printed


def test_a_full_fine_tune_exports_to_onnx_within_the_logit_tolerance(
    tmp_path, tiny_model, text_data
):
    run = _text_run(tmp_path, "full", tiny_model("text"), text_data, peft="full", steps=10)
    report, _ = _export(run, "--format", "onnx", "--samples", "12")
    assert report["passed"], report
    assert report["agreement"]["max_logit_diff"] <= 1e-3
    assert report["agreement"]["token_agreement"] == 1.0
    assert (run / "exports" / "onnx-float32" / "model.onnx").is_file()

    int8, _ = _export(run, "--format", "onnx", "--quantize", "int8", "--samples", "12")
    assert not int8["judged"] and int8["exported"]["size_mb"] < report["exported"]["size_mb"]


def test_a_run_on_a_merged_adapter_exports_to_ctranslate2(tmp_path, lora_chat_run, text_data):
    merged = run_cli("export", str(lora_chat_run), "--merge", "--out", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr[-2000:]
    run = _text_run(tmp_path, "on-merged", tmp_path / "merged", text_data, steps=10)
    report, printed = _export(run, "--format", "ctranslate2", "--samples", "12")
    assert report["passed"] and report["agreement"]["token_agreement"] >= 0.99, report
    assert report["agreement"]["max_logit_diff"] < 1e-3
    assert "ctranslate2.Generator" in printed


@pytest.fixture(scope="module")
def whisper_30s_run(tmp_path_factory, tiny_model) -> Path:
    """A LoRA run of a tiny Whisper with OpenAI's 30-second window (faster-whisper takes no
    other), on tone 'speech'."""
    root = tmp_path_factory.mktemp("deploy-whisper")
    train = write_tone_corpus(root / "train", 32, seed=0)
    evaluation = write_tone_corpus(root / "eval", 12, seed=1)
    model = root / "whisper-30s"
    built = run_cli("models", "build-tiny", "whisper-30s", "--out", str(model))
    assert built.returncode == 0, built.stderr[-2000:]
    return _train(
        root,
        "whisper",
        {
            "model": {"name_or_path": str(model), "modality": "speech"},
            "data": {"train": str(train), "eval": str(evaluation), "options": {"language": "en"}},
            "peft": {"method": "lora", "r": 8, "alpha": 16},
            "train": {"max_steps": 6, "batch_size": 8, "lr": 3e-3, "num_threads": 1},
            "eval": {"generation": {"max_new_tokens": 12}},
        },
    )


def test_whisper_transcribes_in_faster_whisper_as_in_transformers(whisper_30s_run):
    report, printed = _export(whisper_30s_run, "--format", "ctranslate2")
    assert report["passed"] and report["examples"] == 12, report
    assert abs(report["exported"]["wer"] - report["pytorch"]["wer"]) <= 0.01
    assert report["agreement"]["transcripts_identical"] == 1.0
    # Identical and not empty (empty transcripts score a CER of exactly 1): a 6-step model
    # writes noise, and faster-whisper writes the same noise.
    assert report["pytorch"]["cer"] != 1.0 and report["exported"]["cer"] != 1.0
    assert "faster_whisper import WhisperModel" in printed
    folder = whisper_30s_run / "exports" / "ctranslate2-float32"
    assert {"model.bin", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in folder.iterdir()
    }
    # The vocabulary is in Whisper's layout: text first, <|endoftext|> after it.
    vocabulary = json.loads((folder / "vocabulary.json").read_text())
    assert vocabulary.index("<|endoftext|>") > vocabulary.index("Ġone")

    int8, _ = _export(whisper_30s_run, "--format", "ctranslate2", "--quantize", "int8")
    assert not int8["judged"] and "wer" in int8["exported"]
    assert int8["exported"]["size_mb"] < report["exported"]["size_mb"]


def test_whisper_exports_to_onnx_with_the_decoder_logits_of_pytorch(tmp_path, tiny_model):
    train = write_tone_corpus(tmp_path / "train", 16, seed=0)
    evaluation = write_tone_corpus(tmp_path / "eval", 8, seed=1)
    run = _train(
        tmp_path,
        "whisper",
        {
            "model": {"name_or_path": str(tiny_model("whisper")), "modality": "speech"},
            "data": {"train": str(train), "eval": str(evaluation), "options": {"language": "en"}},
            "peft": {"method": "lora", "r": 8, "alpha": 16},
            "train": {"max_steps": 4, "batch_size": 8, "lr": 3e-3, "num_threads": 1},
            "eval": {"generation": {"max_new_tokens": 12}},
        },
    )
    report, _ = _export(run, "--format", "onnx")
    assert report["passed"], report
    assert report["agreement"]["max_logit_diff"] <= 1e-3
    assert report["agreement"]["transcripts_identical"] == 1.0
    assert {"encoder.onnx", "decoder.onnx"} <= {
        p.name for p in (run / "exports" / "onnx-float32").iterdir()
    }


@pytest.mark.parametrize(
    ("family", "args", "message"),
    [
        ("whisper", ["--format", "gguf"], "--format gguf: llama.cpp does not run the whisper"),
        (
            "whisper",
            ["--format", "ctranslate2"],
            "faster-whisper pads every window to 3,000 mel frames",
        ),
        ("text", ["--format", "gguf", "--quantize", "q3"], "--quantize: gguf has no 'q3'"),
        ("text", ["--format", "tflite"], "--format: unknown 'tflite'"),
        ("text", ["--quantize", "q8_0"], "--quantize: only with --format"),
    ],
)
def test_what_a_runtime_cannot_take_is_refused_before_any_work(
    tmp_path, tiny_model, family, args, message
):
    modality = "speech" if family == "whisper" else "text"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(tiny_model(family)), "modality": modality},
                "data": {"train": "unused.jsonl", "eval": "unused.jsonl"},
                "train": {"max_steps": 1},
                "output_dir": str(run),
            }
        )
    )
    done = run_cli("export", str(run), *args)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr
    assert not (run / "exports").exists()  # refused before any work: no checkpoint was read


def test_a_parity_failure_names_what_differs():
    from omnitune.trainers.deploy import get_format
    from omnitune.trainers.deploy.parity import ParityReport, _judge_text

    report = ParityReport("onnx", "ONNX Runtime", "float32", True, 4)
    report.figures.update(token_agreement=0.9, max_logit_diff=0.5)
    report.pytorch["perplexity"], report.exported["perplexity"] = 10.0, 10.5
    _judge_text(report, get_format("onnx"))
    assert not report.passed
    assert report.failures == [
        "token agreement 0.9000 < 0.99",
        "perplexity 10.5 vs 10: more than 1% apart",
        "max logit difference 0.5 > 0.001",
    ]
    assert report.table().splitlines()[-1].startswith("parity: FAILED: token agreement")


def test_a_modelfile_template_is_written_only_when_it_rebuilds_the_chat_template(
    tiny_model, tmp_path
):
    from transformers import AutoTokenizer

    from omnitune.trainers.deploy.modelfile import chat_wrappers, write_modelfile

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("text"))
    chats = [[{"role": "user", "content": "1 2"}, {"role": "assistant", "content": "2 1"}]]
    wrappers = chat_wrappers(tokenizer, chats)
    assert wrappers is not None and wrappers.prefix["user"] == "<|user|>"
    assert wrappers.render(chats[0], True) == tokenizer.apply_chat_template(
        chats[0], tokenize=False, add_generation_prompt=True
    )
    # A template that rewrites what a message says has no fixed wrappers: no TEMPLATE line.
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | upper }}{% endfor %}"
    )
    text = write_modelfile(tokenizer, Path("m.gguf"), tmp_path / "Modelfile").read_text()
    assert "TEMPLATE" not in text.replace("# No TEMPLATE", "") and "# No TEMPLATE" in text
