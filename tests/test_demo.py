"""`make demo` as a user runs it, in a fresh copy of the repository: the whole job (training
of all three modalities, serving, monitoring, re-tuning on the captured samples), its
summary table, a second run that reuses every finished step, and `--serve`.

The demo's tree is a session fixture: the console sessions of the docs that say they follow
`make demo` run on a copy of its artefacts (tests/console_docs.py), so the demo runs once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.console_docs import run_demo

pytestmark = pytest.mark.slow


def _demo(tree: Path, *args: str) -> subprocess.CompletedProcess:
    return run_demo(tree, *args)


def _table(output: str) -> dict[str, list[str]]:
    """task -> cells of the summary table the demo printed last."""
    lines = output[output.rindex("summary (runs/demo):") :].splitlines()
    rule = lines[2]
    starts = [m.start() for m in re.finditer(r"-+", rule)]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    rows = {}
    for line in lines[3:]:
        if not line.strip() or line.startswith("demo finished"):
            break
        cells = [line[a:b].strip() for a, b in bounds]
        rows[cells[0]] = cells[1:]
    return rows


def _before_after(cell: str) -> tuple[float, float]:
    before, after = cell.split(" -> ")
    return float(before), float(after)


def test_the_demo_trains_monitors_and_retunes_every_modality(demo_tree):
    output = (demo_tree / "demo-first-run.log").read_text()
    rows = _table(output)
    assert len(rows) == 12, output[-4000:]
    # Each modality's challenger, retuned through `omnitune loop` on what the monitor captured
    # and people labelled, beats its champion on the held-out captures and passes the gate...
    text = rows["text: re-tuned on captured prompts"]
    vision = rows["vision: re-tuned on captured images"]
    speech = rows["speech: re-tuned on captured clips"]
    before, after = _before_after(text[1])
    assert after > before + 0.2, text
    # LLaVA's captures are ~37-56 held-out digits, and which ones depends on when the drift
    # alarm fired: its gain was +0.07 to +0.18 in the runs measured, and its gate went both
    # ways (rejected when the interval's low end touched 0). What must hold: it gained.
    vision_gate = json.loads((demo_tree / "runs/demo/llava-recaptured/gate/gate.json").read_text())
    captured = vision_gate["slices"]["captures"]["metrics"]["vqa_accuracy"]
    assert captured["gain"] > 0 and captured["examples"] >= 30, captured
    before, after = _before_after(speech[1])
    assert after < before - 0.05, speech
    assert text[-2].startswith("promote, original"), text
    # Whisper's gate decides on ~30 captured clips and 40 base-voice clips, a few words each:
    # its WER on the captures falls in every run measured, its decision went both ways.
    for cells in (vision, speech):
        assert cells[-2].startswith(("promote, original", "reject, original")), cells
    for cells in (text, vision, speech):  # ... after the monitor saw each model's inputs drift
        assert "after the change" in cells[-1], cells
    # The challenger trained on the same captures with their answers shuffled is rejected.
    shuffled = rows["text: captures, shuffled answers"]
    assert shuffled[-2].startswith("reject"), shuffled
    registry = json.loads((demo_tree / "runs/demo/registry/digits-chat/versions.json").read_text())
    assert registry["serving"] == "v2" and len(registry["versions"]) == 2  # promoted
    gate = json.loads((demo_tree / "runs/demo/text-shuffled/gate/gate.json").read_text())
    assert gate["reasons"][0].startswith("captures: exact_match gain"), gate["reasons"]
    # The shift LoRAs, as in their docs; the base Whisper learned its voices. Both shift voices
    # get their own WER (the worst one is where a deployment fails).
    before, after = _before_after(rows["speech: noisy unseen voices, LoRA"][1])
    assert after < before - 0.1
    metrics = (demo_tree / "runs/demo/speech-shift/metrics.jsonl").read_text().splitlines()
    last_eval = [r for r in map(json.loads, metrics) if r["kind"] == "eval"][-1]
    assert {k for k in last_eval if k.startswith("wer/speaker=")} == {
        "wer/speaker=en-us-nyc+croak",
        "wer/speaker=en-gb-x-gbcwmd+f5",
    }
    before, after = _before_after(rows["vision: other scanner, LoRA"][1])
    assert after > before + 0.2
    assert _before_after(rows["speech: Whisper base voices, full"][1])[1] < 0.5
    # Trainable parameters and sizes: LoRA is a fraction of the full model.
    assert rows["speech: noisy unseen voices, LoRA"][3].endswith("%)")
    assert rows["text: digits chat, SFT full"][3].endswith("(100.00%)")
    # "after" is the checkpoint each run saved (its best), the one `omnitune eval` scores.
    summary = json.loads((demo_tree / "runs/demo/speech-base/summary.json").read_text())
    chosen = summary["checkpoint"]
    assert rows["speech: Whisper base voices, full"][2] == (
        f"best, step {chosen['step']}/{chosen['last_step']}"
    )
    # The table shows 3 decimals, as Python rounds them (0.3125 shows as 0.312).
    shown = _before_after(rows["speech: Whisper base voices, full"][1])[1]
    assert f"{shown:.3f}" == f"{chosen['metrics']['wer']:.3f}"
    # The served Whisper transcribes its training voices (it keeps its language when served).
    served = re.search(r"sent 200 base clips .*: WER ([\d.]+)", output)
    assert served and float(served.group(1)) < 0.5, output[-4000:]
    # Captured samples point at the media the proxy kept, with the model's own answer; the
    # exported label the retune trained on is the annotator's, for the same image and request.
    monitor = demo_tree / "runs/demo/monitor"
    captured = [
        json.loads(line)
        for line in (monitor / "capture/digits-vision/data.jsonl").read_text().splitlines()
    ]
    exported = [
        json.loads(line)
        for split in ("train", "test")
        for line in (monitor / f"labels/digits-vision/sft/{split}.jsonl").read_text().splitlines()
    ]
    assert len(exported) == len(captured)
    by_request = {row["request_id"]: row for row in captured}
    first = exported[0]
    assert Path(first["image"]).is_file() and first["annotator"] == "demo-annotator"
    assert first["image"] == by_request[first["request_id"]]["image"]
    assert by_request[first["request_id"]]["target_source"] == "model"
    # The chat model exported to GGUF and the Whisper to ONNX, each checked in its runtime.
    exports = output[output.rindex("exports (runs/demo/exports/*/parity.json):") :].splitlines()
    assert [line.split()[0] for line in exports[3:6]] == [
        "text-gguf-f16",
        "text-gguf-q4_k_m",
        "speech-shift-onnx-float32",
    ], exports
    assert exports[3].endswith("passed") and exports[5].endswith("passed"), exports
    assert exports[4].endswith("reported"), exports
    for folder in ("text-gguf-f16", "speech-shift-onnx-float32"):
        report = json.loads((demo_tree / "runs/demo/exports" / folder / "parity.json").read_text())
        assert report["passed"] and report["judged"], report


def test_the_demo_shows_its_progress_and_no_stray_output(demo_tree):
    output = (demo_tree / "demo-first-run.log").read_text()
    started = re.findall(r"^\[(\d+)/22\] [\w-]+ \.\.\.$", output, flags=re.MULTILINE)
    assert [int(k) for k in started] == list(range(1, 23)), started
    assert re.search(r"^\[13/22\] speech-base: done in \d+ s$", output, flags=re.MULTILINE)
    # Training progress streams while a long step runs (the CLI's own step lines).
    base = output[output.index("[13/22] speech-base ...") : output.index("[13/22] speech-base:")]
    assert len(re.findall(r"INFO omnitune\.train: step \d+/1000 loss", base)) >= 10, base[:3000]
    assert "Loading weights" not in output
    assert "Warning" not in output, [line for line in output.splitlines() if "Warning" in line]


def test_a_second_demo_reuses_every_step_in_under_a_minute(demo_tree):
    started = time.perf_counter()
    again = _demo(demo_tree)
    seconds = time.perf_counter() - started
    assert again.returncode == 0, again.stderr[-3000:]
    assert seconds < 60, seconds
    assert re.search(r"\(0 steps run, \d+ reused\)", again.stdout), again.stdout[-2000:]
    first = (demo_tree / "demo-first-run.log").read_text()
    assert _table(again.stdout) == _table(first)


def test_serve_leaves_the_daemon_and_the_dashboard_running(demo_tree):
    served = _demo(demo_tree, "--serve")
    assert served.returncode == 0, served.stdout[-3000:] + served.stderr[-3000:]
    pids = [int(p) for p in (demo_tree / "runs/demo/serve/pids").read_text().split()]
    try:
        assert "http://127.0.0.1:9108" in served.stdout and "http://127.0.0.1:8501" in served.stdout
        with urllib.request.urlopen("http://127.0.0.1:9108/v1/status", timeout=10) as response:
            status = json.loads(response.read())
        assert set(status["models"]) == {"digits-chat", "digits-vision", "speech-asr"}
        assert status["store"]["events"] > 1000  # the demo's traffic, from its store
        with urllib.request.urlopen("http://127.0.0.1:8501/_stcore/health", timeout=10) as r:
            assert r.read() == b"ok"
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
