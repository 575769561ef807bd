"""One rule for which weights of a run every command uses (trainers/run_weights.py): the best
checkpoint by the run's selection metric unless `--checkpoint` says otherwise; `train`'s saved
folder, `eval`, `export` and the run's summary name the same one, and neither `eval` nor
`export` changes anything in the run's folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory, tiny_model, text_data) -> Path:
    """Two training rows at a high learning rate: held-out loss falls for a few steps and then
    climbs as the model memorises them, so the best checkpoint (step 5) is not the last (30)."""
    import yaml

    folder = tmp_path_factory.mktemp("overfit")
    rows = text_data["train"].read_text().splitlines()[:2]
    (folder / "two.jsonl").write_text("\n".join(rows) + "\n")
    config = {
        "model": {"name_or_path": str(tiny_model("text")), "modality": "text"},
        "data": {"train": str(folder / "two.jsonl"), "eval": str(text_data["eval"])},
        "peft": {"method": "full"},
        "train": {
            "max_steps": 30,
            "batch_size": 8,
            "lr": 0.01,
            "lr_schedule": "constant",
            "warmup_steps": 0,
            "eval_steps": 5,
            "save_steps": 5,
            "num_threads": 1,
        },
        "output_dir": str(folder / "run"),
    }
    (folder / "run.yaml").write_text(yaml.safe_dump(config))
    trained = run_cli("train", str(folder / "run.yaml"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    (folder / "train.out").write_text(trained.stdout + trained.stderr)
    return folder / "run"


def test_eval_export_and_the_summary_name_the_same_best_checkpoint(overfit_run):
    run = overfit_run
    summary = json.loads((run / "summary.json").read_text())
    chosen = summary["checkpoint"]
    assert chosen["rule"] == "best" and chosen["last_step"] == 30
    assert chosen["step"] < 30, "the run overfits: its best evaluation comes before the end"
    evals = [
        json.loads(line)
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "eval" and json.loads(line)["step"] > 0
    ]
    best = min(evals, key=lambda r: r["loss"])
    assert chosen["step"] == best["step"] and chosen["value"] == pytest.approx(best["loss"])
    described = f"best checkpoint, step {chosen['step']} of 30 (loss {best['loss']:.4f})"
    train_out = (run.parent / "train.out").read_text()
    assert f"saved {run}/model: {described}" in train_out
    assert "saving the best checkpoint" in train_out

    before = tree_digest(run)
    evaluated = run_cli("eval", str(run), "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    scores = json.loads(evaluated.stdout)
    assert scores["checkpoint"]["step"] == chosen["step"]
    assert scores["loss"] == pytest.approx(best["loss"], abs=1e-4)
    shown = run_cli("eval", str(run))
    assert shown.stdout.splitlines()[0] == f"{run}: {described}"

    exported = run_cli("export", str(run))
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert exported.stdout.strip() == f"{run}/exported-model"
    assert f"omnitune export: from the {described}" in exported.stderr
    unchanged = {k: v for k, v in tree_digest(run).items() if not k.startswith("exported-model/")}
    assert unchanged == before, "eval and export left the run's folder as training wrote it"
    # The exported model scores what eval scored.
    again = run_cli("eval", str(run / "exported-model"), "--data", summary_eval(run), "--json")
    assert json.loads(again.stdout)["loss"] == pytest.approx(best["loss"], abs=1e-4)


def summary_eval(run: Path) -> str:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())["data"]["eval"]


def test_another_checkpoint_is_chosen_by_name_and_a_missing_one_is_refused(overfit_run):
    run = overfit_run
    last = run_cli("eval", str(run), "--checkpoint", "last")
    assert last.returncode == 0, last.stderr[-2000:]
    assert last.stdout.startswith(f"{run}: last checkpoint, step 30 of 30 (loss ")
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in metrics if r["kind"] == "eval"][-1]
    assert f"loss {final['loss']:.4f}" in last.stdout.splitlines()[1]

    missing = run_cli("eval", str(run), "--checkpoint", "step-7")
    assert missing.returncode == 2
    assert f"--checkpoint: {run} has no step-7 (kept: step-" in missing.stderr
    into_run = run_cli("export", str(run), "--out", str(run / "model"))
    assert into_run.returncode == 2
    assert "is the run's own model/ folder" in into_run.stderr
    assert "Traceback" not in missing.stderr + into_run.stderr
