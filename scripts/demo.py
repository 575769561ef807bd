"""`make demo`: the main omnitune job, offline, on the embedded defaults.

Each step is an `omnitune` command printed before it runs, so what the demo does can be repeated
by hand. Today's path: validate the shipped configs, build every tiny model family offline, and
load each model through the loader training uses and run generate() on it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OMNITUNE = str(Path(sys.executable).parent / "omnitune")
MODELS = REPO / "runs" / "models"
FAMILIES = ("text", "whisper", "llava", "idefics3", "qwen2-vl")


def omnitune(*args: str) -> str:
    shown = " ".join(shlex.quote(a) for a in ("omnitune", *args))
    print(f"$ {shown}", flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([OMNITUNE, *args], cwd=REPO, env=env, capture_output=True, text=True)
    output = (result.stdout + result.stderr).strip()
    if output:
        print(output, flush=True)
    if result.returncode != 0:
        sys.exit(f"demo step failed with exit status {result.returncode}: {shown}")
    return result.stdout


def main() -> None:
    start = time.perf_counter()
    for config in sorted((REPO / "configs").glob("*.yaml")):
        omnitune("config", "check", str(config.relative_to(REPO)))
    for family in FAMILIES:
        folder = MODELS / f"tiny-{family}"
        omnitune("models", "build-tiny", family, "--out", str(folder.relative_to(REPO)))
        omnitune("models", "check", str(folder.relative_to(REPO)))
    print(f"demo finished in {time.perf_counter() - start:.0f} s; models are in {MODELS}")


if __name__ == "__main__":
    main()
