"""`objective.name: distill` (issue 38, off-policy): a student trained on a frozen teacher's
token distribution comes closer to it on held-out data than the same student trained on the
labels alone; JSD and reverse KL train; a Whisper distils into its own pruned copy; cached
teacher logits equal live ones, and a SIGKILLed run resumes exactly, reading them back; a teacher
of another modality or tokenizer is refused naming the field."""

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


def test_on_policy_distillation_scores_the_students_own_samples(
    run_config, student, sft_model, tmp_path
):
    """GKD: on about half the steps (`on_policy: 0.5`) the student completes the prompts itself
    and the teacher scores those tokens; the divergence still falls on held-out data."""
    from omnitune.modalities.text.sample_data import write_digit_reversal

    data = write_digit_reversal(tmp_path / "reversal", train=128, test=32, seed=0)
    path = distill_run(
        run_config,
        student,
        sft_model,
        "on-policy",
        data={"train": str(data["train"]), "eval": str(data["eval"])},
        on_policy=0.5,
        max_new_tokens=12,
        loss="jsd",
    )
    path.write_text(path.read_text().replace("max_steps: 60", "max_steps: 30"))
    done = run_cli("train", str(path))
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [
        r for r in read_metrics(Path(load_run_config(path).output_dir)) if r["kind"] == "train"
    ]
    shares = [r["on_policy"] for r in steps]
    assert 0.2 < sum(shares) / len(shares) < 0.8, shares  # logged as each window's share
    sampled = [r for r in steps if r["on_policy"] > 0]
    assert all(0 < r["completion_length"] <= 12 for r in sampled), sampled
    results = evals(path)
    assert results[-1]["teacher_kl"] < results[0]["teacher_kl"], results


def test_a_speech_student_cannot_sample_on_policy(run_config, tiny_model):
    clips = REPO / "modalities/speech/corpus/base"
    path = run_config(
        "speech-on-policy",
        model={"name_or_path": str(tiny_model("whisper")), "modality": "speech"},
        data={"train": str(clips / "train.jsonl"), "eval": str(clips / "test.jsonl")},
        objective={"name": "distill", "teacher": str(tiny_model("whisper")), "on_policy": 0.5},
    )
    done = run_cli("train", str(path))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "objective.on_policy: " in done.stderr and "speech" in done.stderr


def test_cached_teacher_logits_equal_the_live_ones(run_config, student, sft_model):
    """The cache is built with the evaluation collator in batches of eval.batch_size; the loop
    collates training batches of other sizes: each item's teacher logits must not change."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from omnitune.modalities.base import get_modality
    from omnitune.trainers.objectives.distill import CACHE_NAME, aligned

    path = distill_run(run_config, student, sft_model, "cached", cache_teacher=True)
    path.write_text(path.read_text().replace("max_steps: 60", "max_steps: 2"))
    done = run_cli("train", str(path))
    assert done.returncode == 0, done.stderr[-2000:]
    config = load_run_config(path)
    run_dir = Path(config.output_dir)
    assert "computed and cached" in (run_dir / "train.log").read_text()
    cache = torch.load(run_dir / CACHE_NAME, weights_only=True)["logits"]

    tokenizer = AutoTokenizer.from_pretrained(sft_model)
    teacher = AutoModelForCausalLM.from_pretrained(sft_model).eval()
    modality = get_modality("text")
    examples = modality.dataset(config.data.train, config, tokenizer, training=True)
    assert len(cache) == len(examples)
    collate = modality.collator(tokenizer, config, training=True)
    worst = 0.0
    for indices in ([0, 1, 2], [5], list(range(10, 27))):
        batch = collate([examples[i] for i in indices])
        with torch.no_grad():
            live, _ = aligned(teacher(**batch).logits, batch["labels"], causal=True)
        cached = torch.cat([cache[i] for i in indices])
        assert cached.shape == live.shape
        worst = max(worst, float((cached - live).abs().max()))
    assert worst <= 1e-5, worst


def test_a_killed_distillation_resumes_exactly_with_its_cached_teacher(
    run_config, student, sft_model
):
    sections = {
        **RESUMABLE,
        "peft": {"method": "lora", "r": 8, "dropout": 0.1},
        "objective": {
            "name": "distill",
            "teacher": str(sft_model),
            "loss": "jsd",
            "cache_teacher": True,
        },
        "model": {"name_or_path": str(student), "modality": "text"},
    }
    kill_resume_and_compare(run_config, 300, **sections)
    run_dir = Path(load_run_config(run_config("killed", **sections)).output_dir)
    log = (run_dir / "train.log").read_text()
    resumed = log[log.index("resumed from") - 2000 :]  # the second process's lines
    assert "teacher logits of" in resumed and "read from" in resumed
    assert "computed and cached" not in resumed


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
