"""The labelled captures a retune trains on: the folder `omnitune monitor export` writes
(`sft/`, `dpo/`, `kto/`, each with `train.jsonl` and a held-out `test.jsonl`), or a daemon's
URL, from which that folder is exported first by running the command itself (the trainer
never imports the monitor; it talks to the daemon as a user's script would)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from omnitune.core.errors import ConfigError, DataError, UsageError

#: Which export folder each objective trains on (ORPO reads DPO's pairs).
EXPORT_KIND = {"sft": "sft", "dpo": "dpo", "orpo": "dpo", "kto": "kto"}


@dataclass(frozen=True)
class LabelledCaptures:
    """One export kind's files: what the challenger trains on and what the gate holds out."""

    root: Path
    kind: str
    train: Path
    test: Path


def export_kind(objective: str) -> str:
    if objective not in EXPORT_KIND:
        raise ConfigError(
            f"objective.name: {objective} has no labelled-captures format (the export writes "
            f"rows for {', '.join(EXPORT_KIND)}); retune with objective.name=sft"
        )
    return EXPORT_KIND[objective]


def labelled_captures(root: Path, objective: str) -> LabelledCaptures:
    """`root`'s files for `objective`; refused unless both the training rows and the held-out
    split exist (a gate without captured examples the challenger never saw measures nothing)."""
    kind = export_kind(objective)
    if not root.is_dir():
        raise UsageError(f"--labels: {root} is not a folder (an `omnitune monitor export` folder)")
    train, test = root / kind / "train.jsonl", root / kind / "test.jsonl"
    if not train.is_file():
        raise UsageError(
            f"--labels: {root} has no {kind}/train.jsonl: no labelled captures for the "
            f"{objective} objective (omnitune monitor export writes it)"
        )
    if not test.is_file():
        raise UsageError(
            f"--labels: {root} has no held-out split ({kind}/test.jsonl): the gate scores the "
            "challenger on labelled captures it did not train on; export with a held-out "
            "share, e.g. omnitune monitor export MODEL --out DIR --held-out 0.2"
        )
    return LabelledCaptures(root, kind, train, test)


def export_from_daemon(url: str, model: str | None, out: Path, token: str | None) -> Path:
    """Run `omnitune monitor export MODEL --url URL --out OUT` and return OUT."""
    if not model:
        raise UsageError("--model: labels from a daemon URL need the monitored model's name")
    command = [sys.executable, "-m", "omnitune", "monitor", "export", model, "--url", url]
    command += ["--out", str(out), "--held-out", "0.2"]
    env = dict(os.environ)
    if token:
        env["OMNITUNE_TOKEN"] = token  # in the environment, not on the child's command line
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise DataError(
            f"--labels: exporting {model}'s labels from {url} failed: "
            f"{said[-1] if said else f'exit status {done.returncode}'}"
        )
    print(done.stdout.strip())
    return out


def count_rows(path: Path) -> int:
    with path.open(encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())
