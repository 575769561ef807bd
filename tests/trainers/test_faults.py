"""Trainer faults (issue 18): SIGKILL in the middle of a checkpoint write, and a disk that fills
during a checkpoint save. Either way the previous checkpoint stays loadable and the same command
resumes from it. (A non-finite loss is test_resume.py's; resume after a kill, per objective, is
in test_resume.py, test_preference.py, test_grpo.py and test_ppo.py.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omnitune.trainers.checkpoint import list_checkpoints
from omnitune.trainers.config import load_run_config
from tests import reliability
from tests.conftest import OMNITUNE, offline_env, run_cli
from tests.monitor.test_storage_faults import in_small_disk

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

TRAIN = {"eval_steps": None, "logging_steps": 1, "save_total_limit": 50, "num_threads": 1}


def loads(checkpoint: Path) -> bool:
    """Whether every file of a checkpoint reads back (what resume reads)."""
    import json

    import torch
    from safetensors.torch import load_file

    load_file(checkpoint / "trainable.safetensors")
    for name in ("optimizer.pt", "scheduler.pt", "rng-rank0.pt"):
        torch.load(checkpoint / name, weights_only=False)
    json.loads((checkpoint / "state.json").read_text())
    return True


def staging_folders(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    return sorted(folder.glob(".staging-*")) if folder.is_dir() else []


def files_in(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:  # renamed into place meanwhile
        return []


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one_and_resumes(run_config):
    path = run_config("killed", train={**TRAIN, "max_steps": 400, "save_steps": 2})
    run_dir = Path(load_run_config(path).output_dir)
    caught = None
    for _attempt in range(3):
        process = subprocess.Popen(
            [str(OMNITUNE), "train", str(path)],
            env=offline_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 180
        while process.poll() is None and time.monotonic() < deadline:
            staging = staging_folders(run_dir)
            # Files being written, with an earlier checkpoint complete: kill it now.
            if staging and files_in(staging[0]) and list_checkpoints(run_dir):
                process.send_signal(signal.SIGKILL)
                process.wait()
                if staging_folders(run_dir):
                    caught = staging[0]
                break
        assert process.poll() is not None, "training never wrote a checkpoint"
        if caught is not None:
            break
    assert caught is not None, "three tries never killed the trainer mid-write"
    written = sorted(p.name for p in files_in(caught))
    complete = list_checkpoints(run_dir)
    assert complete and all(loads(checkpoint) for checkpoint in complete)
    previous = complete[-1]
    assert previous.name < caught.name.removeprefix(".staging-")

    resumed = run_cli("train", str(path), "train.max_steps=" + str(int(previous.name[5:]) + 4))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {previous}" in (run_dir / "train.log").read_text()
    assert not staging_folders(run_dir), "the half-written folder was left behind"
    reliability.record(
        "trainer-sigkill-checkpoint",
        "SIGKILL during a checkpoint write",
        "`omnitune train` (tiny text model, LoRA, a checkpoint every 2 steps) killed the "
        "moment a checkpoint's staging folder appeared; the complete checkpoints are read "
        "back, and the same command resumes.",
        [
            {
                "killed while writing": caught.name.removeprefix(".staging-"),
                "files written at the kill": ", ".join(written) or "none",
                "complete checkpoints after the kill": len(complete),
                "all load": "yes",
                "resumed from": previous.name,
                "half-written folder after resume": "removed",
            }
        ],
    )


FILL = """
import os, sys
folder, keep = sys.argv[1], int(sys.argv[2])
stat = os.statvfs(folder)
free = stat.f_bavail * stat.f_frsize
with open(os.path.join(folder, "filler"), "wb") as out:
    out.write(b"\\0" * max(0, free - keep))
"""


def test_a_full_disk_during_a_checkpoint_save_stops_clearly_and_keeps_the_last_good_one(
    run_config, tmp_path
):
    # Ten steps on the ordinary disk: the run to continue, and the size of one checkpoint.
    seed = run_config("seed", train={**TRAIN, "max_steps": 10, "save_steps": 5})
    first = run_cli("train", str(seed))
    assert first.returncode == 0, first.stderr[-3000:]
    seed_dir = Path(load_run_config(seed).output_dir)
    last = seed_dir / "checkpoints" / "step-00000010"
    checkpoint_bytes = sum(p.stat().st_size for p in last.iterdir())

    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    run_dir = disk / "run"
    script = (
        f'cp -a "{seed_dir}" "{run_dir}" && '
        f'"{sys.executable}" -c \'{FILL}\' "{disk}" {checkpoint_bytes // 2} && '
        f'"{OMNITUNE}" train "{seed}" output_dir="{run_dir}" train.max_steps=20 '
        f'> "{out}/stdout" 2> "{out}/stderr"; echo $? > "{out}/status"; '
        f'cp -a "{run_dir}" "{out}/run"'
    )
    done = subprocess.run(
        [*in_small_disk(disk, size="64m"), "sh", "-c", script],
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    status = int((out / "status").read_text())
    stderr = (out / "stderr").read_text()
    assert status == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    message = next(line for line in stderr.splitlines() if line.startswith("omnitune: error:"))
    assert "could not write checkpoint step-00000015 (No space left on device" in message
    assert f"the last good checkpoint is {run_dir}/checkpoints/step-00000010" in message
    kept = out / "run"
    assert [p.name for p in list_checkpoints(kept)] == ["step-00000005", "step-00000010"]
    assert loads(kept / "checkpoints/step-00000010")
    assert not staging_folders(kept), "the half-written checkpoint was left on the full disk"

    # Space again (the ordinary disk): the same command continues from step 10.
    again = run_cli("train", str(seed), f"output_dir={kept}", "train.max_steps=20")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {kept}/checkpoints/step-00000010" in (kept / "train.log").read_text()
    assert (kept / "checkpoints/step-00000020").is_dir()
    reliability.record(
        "trainer-disk-full",
        "A full disk during a checkpoint save",
        "A run continued from step 10 in a mount namespace whose 64 MiB tmpfs was filled to "
        f"half a checkpoint ({checkpoint_bytes // 2 // 1024} KiB) of free space; its step-15 "
        "checkpoint could not be written. The run stopped with exit 1 and this line; the same "
        "command with space again resumed from step 10 and finished.",
        [{"exit": status, "message": message.replace(str(tmp_path), "…")}],
    )
