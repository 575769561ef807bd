"""`objective.name: distill` (issue 38, off-policy): a student trained on a frozen teacher's
token distribution comes closer to it on held-out data than the same student trained on the
labels alone; JSD and reverse KL train; a Whisper distils into its own pruned copy; a SIGKILLed
run resumes exactly; a teacher of another modality or tokenizer is refused naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnitune.trainers.config import load_run_config
from tests.conftest import REPO, run_cli
from tests.trainers.conftest import read_metrics
from tests.trainers.test_resume import RESUMABLE, kill_resume_and_compare

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """A narrower chat model (hidden 32) with the tiny models' tokenizer: the student."""
    from omnitune.modalities.tiny import build_tiny

    return build_tiny("text", tmp_path_factory.mktemp("student"), seed=1, hidden_size=32)


def distill_run(
    run_config, student: Path, teacher: Path, name: str, data: dict | None = None, **objective
) -> Path:
    return run_config(
        name,
        model={"name_or_path": str(student), "modality": "text"},
        peft={"method": "full"},
        objective={"name": "distill", "teacher": str(teacher), **objective},
        train={"max_steps": 60, "batch_size": 32, "lr": 3e-3, "eval_steps": 30, "save_steps": 30},
        **({"data": data} if data else {}),
    )


def evals(path: Path) -> list[dict]:
    return [r for r in read_metrics(Path(load_run_config(path).output_dir)) if r["kind"] == "eval"]


def test_distillation_brings_the_student_closer_to_the_teacher_than_labels_alone(
    run_config, student, sft_model, tmp_path
):
    """On data whose labels the teacher does not give (it turns digit words into numerals; the
    rows ask to reverse numerals), the distilled student follows the teacher and the student
    trained on the labels does not: if the teacher's logits went unused, both would match."""
    from omnitune.modalities.text.sample_data import write_digit_reversal

    data = write_digit_reversal(tmp_path / "reversal", train=256, test=48, seed=0)
    rows = {"data": {"train": str(data["train"]), "eval": str(data["eval"])}}
    distilled = distill_run(run_config, student, sft_model, "distilled", **rows)
    labels_only = distill_run(
        run_config, student, sft_model, "labels-only", label_weight=1.0, **rows
    )
    for path in (distilled, labels_only):
        done = run_cli("train", str(path))
        assert done.returncode == 0, done.stderr[-2000:]
    kd, plain = evals(distilled), evals(labels_only)
    assert kd[0]["teacher_kl"] == pytest.approx(plain[0]["teacher_kl"])  # the same student
    assert kd[-1]["teacher_kl"] < 0.5 * kd[0]["teacher_kl"], kd
    assert kd[-1]["teacher_kl"] < 0.7 * plain[-1]["teacher_kl"], (kd[-1], plain[-1])
    assert plain[-1]["loss"] < kd[-1]["loss"]  # the labels' own loss: what the other learned
    steps = [
        r for r in read_metrics(Path(load_run_config(distilled).output_dir)) if r["kind"] == "train"
    ]
    assert all("kd" in r and "label_loss" in r for r in steps)


@pytest.mark.parametrize("loss", ["jsd", "reverse_kl"])
def test_jsd_and_reverse_kl_lower_the_divergence(loss, run_config, student, sft_model):
    path = distill_run(run_config, student, sft_model, loss, loss=loss, temperature=2.0)
    done = run_cli("train", str(path))
    assert done.returncode == 0, done.stderr[-2000:]
    results = evals(path)
    assert results[-1]["teacher_kl"] < results[0]["teacher_kl"], results


def test_a_whisper_distils_into_its_pruned_copy(run_config, tiny_model, tmp_path):
    clips = REPO / "modalities/speech/corpus/base"
    teacher = tiny_model("whisper")
    pruned = tmp_path / "pruned"
    done = run_cli(
        "prune",
        str(teacher),
        "--layers",
        "1",
        "--data",
        str(clips / "test.jsonl"),
        "--out",
        str(pruned),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    path = run_config(
        "whisper",
        model={"name_or_path": str(pruned), "modality": "speech"},
        data={"train": str(clips / "train.jsonl"), "eval": str(clips / "test.jsonl")},
        peft={"method": "full"},
        objective={"name": "distill", "teacher": str(teacher), "loss": "jsd"},
        train={"max_steps": 10, "batch_size": 8, "eval_steps": 10, "save_steps": 10},
        eval={"batch_size": 40, "generation": {"max_new_tokens": 4}},
    )
    done = run_cli("train", str(path))
    assert done.returncode == 0, done.stderr[-2000:]
    results = evals(path)
    assert {"wer", "teacher_kl"} <= set(results[-1])
    assert results[-1]["teacher_kl"] < results[0]["teacher_kl"], results


def test_a_killed_distillation_resumes_exactly(run_config, student, sft_model):
    sections = {
        **RESUMABLE,
        "peft": {"method": "lora", "r": 8, "dropout": 0.1},
        "objective": {"name": "distill", "teacher": str(sft_model), "loss": "jsd"},
        "model": {"name_or_path": str(student), "modality": "text"},
    }
    kill_resume_and_compare(run_config, 300, **sections)


def test_a_teacher_of_another_modality_or_tokenizer_is_refused(
    run_config, student, tiny_model, tmp_path
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    whisper = distill_run(run_config, student, tiny_model("whisper"), "whisper-teacher")
    done = run_cli("train", str(whisper))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "objective.teacher: " in done.stderr and "is a speech model" in done.stderr

    other = tmp_path / "teacher-with-another-vocabulary"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("text"))
    tokenizer.add_tokens(["<|extra|>"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model("text"))
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(other)
    tokenizer.save_pretrained(other)
    done = run_cli("train", str(distill_run(run_config, student, other, "other-vocabulary")))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "objective.teacher: " in done.stderr and "tokenizer is not the student's" in done.stderr
    assert "Traceback" not in done.stderr
