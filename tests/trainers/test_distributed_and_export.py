"""`accelerate launch` with two processes, shipped accelerate configs, and `omnitune export`."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from omnitune.trainers.config import load_run_config
from tests.conftest import BIN, REPO, offline_env, run_cli

ACCELERATE_CONFIGS = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_shipped_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes >= 2 and config.mixed_precision == "bf16"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(config_file: str, path: Path) -> subprocess.CompletedProcess:
    command = [
        str(BIN / "accelerate"),
        "launch",
        "--config_file",
        str(REPO / "configs/accelerate" / config_file),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "omnitune",
        "train",
        str(path),
    ]
    return subprocess.run(command, env=offline_env(), capture_output=True, text=True, timeout=600)


def _logged_losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["text", "mixtral"])
def test_two_processes_under_accelerate_launch_agree(family, run_config, tiny_model):
    """Both ranks end with the same weights; an MoE's router loss and load hooks included."""
    model = {"name_or_path": str(tiny_model(family)), "modality": "text"}
    path = run_config(
        "ddp", model=model, train={"max_steps": 20, "batch_size": 8, "eval_steps": 10}
    )
    result = _launch("ddp.yaml", path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("20 steps") == 1, "only rank 0 prints the summary"
    run_dir = Path(load_run_config(path).output_dir)
    ranks = [json.loads((run_dir / "ranks" / f"rank-{i}.json").read_text()) for i in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["step"] == ranks[1]["step"] == 20
    # Each step consumed one batch per rank: twice the samples of a single process.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 20


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_shards_trains_and_resumes_exactly(run_config):
    """The shipped FSDP config on this machine's CPUs: each rank holds half the parameters,
    the loss follows the single-process run's, and a run resumed from its step-10 checkpoint
    ends with the same weights and optimizer state, bit for bit, as the run that never
    stopped."""
    import torch
    from safetensors.torch import load_file

    sections = {
        "peft": {"method": "full"},
        "train": {"max_steps": 20, "batch_size": 8, "lr": 1e-3, "save_steps": 10, "eval_steps": 10},
    }
    path = run_config("fsdp", **sections)
    first = _launch("fsdp.yaml", path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "FSDP on 2 CPU processes (gloo): 2 LlamaDecoderLayer blocks" in first.stderr
    run_dir = Path(load_run_config(path).output_dir)
    ranks = [json.loads((run_dir / "ranks" / f"rank-{i}.json").read_text()) for i in (0, 1)]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    for rank in ranks:  # sharded: a rank stores its half (DDP would hold all of them)
        assert rank["parameters_held"] <= 0.51 * rank["parameters_total"]

    single = run_config("single", **{**sections, "train": {**sections["train"], "batch_size": 16}})
    alone = run_cli("train", str(single))
    assert alone.returncode == 0, alone.stderr[-3000:]
    sharded_losses = _logged_losses(run_dir)
    single_losses = _logged_losses(Path(load_run_config(single).output_dir))
    assert sharded_losses.keys() == single_losses.keys()
    for step, loss in sharded_losses.items():  # mean of the ranks' means vs one mean
        assert loss == pytest.approx(single_losses[step], abs=0.01), step

    last = run_dir / "checkpoints" / "step-00000020"
    straight = load_file(last / "trainable.safetensors")
    straight_optimizer = torch.load(last / "optimizer.pt", weights_only=False)
    exported = load_file(run_dir / "model" / "model.safetensors")
    assert torch.equal(exported["model.norm.weight"], straight["model.norm.weight"])
    shutil.rmtree(last)  # as if the run had been killed after step 10's checkpoint

    resumed = _launch("fsdp.yaml", path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "step-00000010 (step 10)" in resumed.stderr
    again = load_file(last / "trainable.safetensors")
    assert straight.keys() == again.keys()
    assert all(torch.equal(straight[name], again[name]) for name in straight)
    optimizer = torch.load(last / "optimizer.pt", weights_only=False)
    for name, moments in straight_optimizer["state"].items():
        assert torch.equal(moments["exp_avg_sq"], optimizer["state"][name]["exp_avg_sq"])


@pytest.mark.slow
def test_merged_export_gives_the_adapter_models_logits(run_config, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from omnitune.trainers.loop import train

    result = train(load_run_config(run_config("export", train={"max_steps": 20})))
    exported = run_cli("export", str(result.run_dir), "--merge")
    assert exported.returncode == 0, exported.stderr[-3000:]
    merged_dir = Path(exported.stdout.strip())
    assert merged_dir == result.run_dir / "merged"

    ids = torch.tensor([[3, 310, 394, 84, 4, 20, 21]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model("text"))
    adapted = PeftModel.from_pretrained(base, result.output).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        expected, actual = adapted(input_ids=ids).logits, merged(input_ids=ids).logits
    assert torch.allclose(expected, actual, atol=1e-5), float((expected - actual).abs().max())
    assert not any("lora" in name for name, _ in merged.named_parameters())


@pytest.mark.slow
def test_pissa_adapter_exports_as_plain_lora_for_the_original_base(run_config, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from omnitune.trainers.loop import train

    path = run_config("pissa", peft={"method": "pissa", "r": 4}, train={"max_steps": 15})
    result = train(load_run_config(path))
    merged = Path(run_cli("export", str(result.run_dir), "--merge").stdout.strip())
    base = AutoModelForCausalLM.from_pretrained(tiny_model("text"))
    adapted = PeftModel.from_pretrained(base, result.output).eval()
    ids = torch.tensor([[3, 310, 394, 84, 4]])
    with torch.no_grad():
        converted = adapted(input_ids=ids).logits
        reference = AutoModelForCausalLM.from_pretrained(merged).eval()(input_ids=ids).logits
    assert torch.allclose(converted, reference, atol=1e-4)


def test_export_of_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path):
    result = run_cli("export", str(tmp_path))
    assert result.returncode == 2
    assert "not a run folder (no config.yaml)" in result.stderr
