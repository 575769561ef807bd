"""`make demo`: the main omnitune job, offline, on the embedded defaults.

Each step is an `omnitune` command printed before it runs (as `+ omnitune ...`, the way a
shell traces commands), so everything the demo does can be repeated by hand; the commands run
in the demo's own process (scripts/demo/inprocess.py), which spares each one the start of a new
interpreter and its torch imports. About 4 minutes on 2 CPU cores the first time:
1. check the shipped configs;
2. build a tiny chat model and train it (configs/demo-text.yaml) to turn digit words into
   numerals, then ask it; then align it with DPO (configs/demo-text-dpo.yaml) on preference
   pairs whose rejected answers are its own mistakes, and with GRPO (configs/demo-text-grpo.yaml)
   on 3-4 digit prompts, rewarded by the exact match of its sampled numerals;
3. build a tiny LLaVA and train it (configs/demo-llava.yaml) on scikit-learn's real
   handwritten digits, run GRPO on it (configs/demo-llava-grpo.yaml, vqa_match reward), then
   LoRA-adapt it (configs/demo-llava-shift.yaml) to the same digits scanned by "another device";
4. build a tiny Whisper, train it (configs/demo-speech-base.yaml) on the shipped espeak-ng
   `base` voices, then LoRA-adapt it (configs/demo-speech-shift.yaml) to two unseen voices in
   background noise;
5. build the other tiny families (Idefics3, Qwen2-VL) and prove each loads and runs;
6. serve the chat, LLaVA and Whisper models of steps 2-4 with `transformers serve`, put the
   monitor (configs/monitor-demo.yaml) and its recording proxy in front of them, send traffic
   that starts like the training data and then shifts (longer numbers; digits from the other
   scanner; the unseen noisy voices), and read the drift the monitor reports;
7. label the samples it captured through the daemon's feedback API and export them
   (`omnitune monitor export`); for each model, register the serving run as v1, retune a
   challenger on the labels with replay (`omnitune loop retune`), gate it against the
   champion (`omnitune loop gate`) and promote it when it passes (`omnitune loop promote`);
   and retune one more chat challenger on the same captures with their answers shuffled,
   which the gate must reject: the loop from fine-tuning to monitoring and back, for all three
   modalities;
8. print one table: each task's metric before and after, trainable parameters, adapter size,
   time, each gate's decision, and the drift the monitor detected and when.

A second `make demo` reuses every step whose inputs did not change (scripts/demo/steps.py) and
takes seconds; `--force` re-runs everything. `make demo SERVE=1` (`--serve`) leaves the monitor
daemon, over the demo's events, and the dashboard running, and prints their URLs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scripts.demo.inprocess import run_command
from scripts.demo.steps import Steps
from scripts.demo.summary import EXPORTS, EXPORTS_DIR, parity_table, summary_table
from scripts.demo.traffic import (
    chat_prompts,
    numerals,
    send_chats,
    send_clips,
    send_digit_images,
    start_listening,
    start_model_server,
    start_proxy,
    stop,
)

REPO = Path(__file__).resolve().parents[2]
OMNITUNE = str(Path(sys.executable).parent / "omnitune")
MODELS = Path("runs/models")
DATA = Path("runs/demo/data")
MONITOR = Path("runs/demo/monitor")
CAPTURE = MONITOR / "capture"
SPEECH_CORPUS = Path("modalities/speech/corpus")
MONITOR_CONFIG = "configs/monitor-demo.yaml"
#: Every step a whole demo runs, in order (the "[k/21]" counter).
STEPS = Steps(REPO, REPO / "runs/demo/.steps", total=22)
#: Progress bars (datasets', tqdm's) that a non-terminal run prints line by line, and blanks.
PROGRESS = re.compile(r"^\s*$|(examples|it)/s\]$|\| \d+/\d+ \[|^Generating \w+ split")
say = STEPS.say


def omnitune(*args: str, allowed: tuple[int, ...] = (0,)) -> int:
    """Run `omnitune ARGS` as the demo's next command: its output streams as it comes (training
    shows its progress lines live; they are not kept in the step's transcript, which a reused
    step prints again), and an exit status not in `allowed` stops the demo. The command runs in
    this process (scripts/demo/inprocess.py), through the console script's own entry point."""
    shown = " ".join(shlex.quote(a) for a in ("omnitune", *args))
    say(f"\n+ {shown}")

    def show(line: str) -> None:
        if "INFO omnitune.train: step " in line:
            print(f"  {line}", flush=True)  # progress: live, not part of the transcript
        elif not PROGRESS.search(line):
            say(line)

    code = run_command(args, show)
    if code not in allowed:
        sys.exit(f"demo step failed with exit status {code}: {shown}")
    return code


def train(config: str, *overrides: str) -> None:
    omnitune("train", config, *overrides, "train.resume=never")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="leave the daemon and dashboard up")
    parser.add_argument("--force", action="store_true", help="re-run every step")
    args = parser.parse_args(argv)
    STEPS.force = args.force
    # Weight-loading bars of the in-process model loads and of `transformers serve`.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ["HF_HUB_OFFLINE"] = "1"  # the commands run in this process (run_command)
    os.chdir(REPO)  # and resolve their paths from the repository, as a user's shell would
    start = time.perf_counter()
    run_configs = sorted(
        p.relative_to(REPO)
        for p in (REPO / "configs").glob("*.yaml")
        if not p.name.startswith("monitor")  # monitor daemon configs, not run configs
    )
    STEPS.run("check-configs", run_configs, [], lambda: check_configs(run_configs))
    STEPS.run(
        "data", [], [DATA / "text", DATA / "digits", DATA / "digits-shift"], write_sample_data
    )
    text_steps()
    vision_steps()
    speech_steps()
    STEPS.run("other-families", [], [MODELS / "tiny-idefics3", MODELS / "tiny-qwen2-vl"], families)
    monitor_inputs = [
        MONITOR_CONFIG,
        "runs/demo/text/model",
        "runs/demo/text/reference.json",
        "runs/demo/llava/model",
        "runs/demo/llava/reference.json",
        "runs/demo/speech-base/model",
        "runs/demo/speech-base/reference.json",
        DATA / "digits",
        DATA / "digits-shift",
        SPEECH_CORPUS,
    ]
    captured = [CAPTURE / m / "data.jsonl" for m in ("digits-chat", "digits-vision", "speech-asr")]
    drift = STEPS.run("monitor", monitor_inputs, [*captured, MONITOR / "events.sqlite"], monitor)
    retune_steps()
    deploy_steps()
    say_table(drift)
    say(
        f"\ndemo finished in {time.perf_counter() - start:.0f} s ({len(STEPS.ran)} steps run, "
        f"{len(STEPS.reused)} reused); runs are in runs/demo/"
    )
    if args.serve:
        serve()


def check_configs(configs: list[Path]) -> None:
    for config in configs:
        omnitune("config", "check", str(config))


def write_sample_data() -> None:
    from omnitune.modalities.text.sample_data import write_digit_chat
    from omnitune.modalities.vision_language.sample_data import write_digit_vqa

    write_digit_chat(REPO / DATA / "text", train=1024, test=64, seed=0)
    write_digit_vqa(REPO / DATA / "digits" / "train", 0, 1400)
    write_digit_vqa(REPO / DATA / "digits" / "test", 1400, 200)
    write_digit_vqa(REPO / DATA / "digits-shift" / "train", 0, 600, domain="shift")
    write_digit_vqa(REPO / DATA / "digits-shift" / "test", 1400, 200, domain="shift")
    say(
        f"wrote demo data under {DATA}: digit chats, and 1,600 handwritten digits as PNG "
        "(plus 800 as scans from another device, the `shift` domain)"
    )


# Training ----------------------------------------------------------------------------------


def build_tiny(family: str) -> Path:
    """The step that builds the tiny `family` model; its folder."""
    folder = MODELS / f"tiny-{family}"
    command = ("models", "build-tiny", family, "--out", str(folder))
    STEPS.run(f"tiny-{family}", [], [folder], lambda: omnitune(*command))
    return folder


def text_steps() -> None:
    tiny = build_tiny("text")
    STEPS.run(
        "text",
        ["configs/demo-text.yaml", tiny, DATA / "text"],
        ["runs/demo/text/model"],
        lambda: train("configs/demo-text.yaml"),
    )

    def ask() -> None:
        for words in ("four two seven", "nine", "one zero"):
            omnitune("models", "check", "runs/demo/text/model", "--prompt", words)

    STEPS.run("text-ask", ["runs/demo/text/model"], [], ask)
    STEPS.run(
        "text-dpo",
        ["configs/demo-text-dpo.yaml", "runs/demo/text/model"],
        ["runs/demo/text-dpo/adapter"],
        preference_step,
    )
    STEPS.run(
        "text-grpo",
        ["configs/demo-text-grpo.yaml", "runs/demo/text/model"],
        ["runs/demo/text-grpo/adapter"],
        grpo_step,
    )


def vision_steps() -> None:
    tiny = build_tiny("llava")

    def base() -> None:
        train("configs/demo-llava.yaml")
        omnitune("eval", "runs/demo/llava")

    STEPS.run(
        "llava",
        ["configs/demo-llava.yaml", tiny, DATA / "digits"],
        ["runs/demo/llava/model"],
        base,
    )
    STEPS.run(
        "llava-grpo",
        ["configs/demo-llava-grpo.yaml", "runs/demo/llava/model", DATA / "digits"],
        ["runs/demo/llava-grpo/adapter"],
        llava_grpo_step,
    )
    STEPS.run(
        "llava-shift",
        ["configs/demo-llava-shift.yaml", "runs/demo/llava/model", DATA / "digits-shift"],
        ["runs/demo/llava-shift/adapter"],
        lambda: train("configs/demo-llava-shift.yaml"),
    )


def speech_steps() -> None:
    tiny = build_tiny("whisper")
    STEPS.run(
        "speech-base",
        ["configs/demo-speech-base.yaml", tiny, SPEECH_CORPUS / "base"],
        ["runs/demo/speech-base/model"],
        lambda: train("configs/demo-speech-base.yaml"),
    )

    def shift() -> None:
        train("configs/demo-speech-shift.yaml")
        omnitune("eval", "runs/demo/speech-shift")

    STEPS.run(
        "speech-shift",
        ["configs/demo-speech-shift.yaml", "runs/demo/speech-base/model", SPEECH_CORPUS / "shift"],
        ["runs/demo/speech-shift/adapter"],
        shift,
    )


def families() -> None:
    for family in ("idefics3", "qwen2-vl"):
        omnitune("models", "build-tiny", family, "--out", str(MODELS / f"tiny-{family}"))
        omnitune("models", "check", str(MODELS / f"tiny-{family}"))


def before_and_saved(run: str) -> tuple[dict, dict]:
    """The step-0 evaluation of `run`, and the evaluation of the checkpoint it saved (its
    best: the weights that `omnitune eval` scores and the demo serves)."""
    rows = (REPO / run / "metrics.jsonl").read_text().splitlines()
    evals = [r for r in map(json.loads, rows) if r["kind"] == "eval"]
    saved = json.loads((REPO / run / "summary.json").read_text())["checkpoint"]["metrics"]
    return evals[0], saved


def preference_step() -> None:
    """DPO (LoRA) on pairs that prefer the right numerals to the SFT model's own answers."""
    from scripts.demo.data import write_model_pairs

    write_model_pairs(REPO / "runs/demo/text/model", REPO / DATA / "text-pairs")
    say(
        f"wrote preference pairs under {DATA / 'text-pairs'}: 1-5 digits, rejected = the "
        "SFT model's own wrong answers"
    )
    train("configs/demo-text-dpo.yaml")
    before, after = before_and_saved("runs/demo/text-dpo")
    say(
        f"DPO: held-out reward accuracy {before['reward_accuracy']:.2f} -> "
        f"{after['reward_accuracy']:.2f}, exact match {before['exact_match']:.2f} -> "
        f"{after['exact_match']:.2f}: it now ranks the right numerals above its own mistakes, "
        "but preferences do not teach it numbers longer than it can write; the monitor loop "
        "below captures such prompts and fine-tunes on them"
    )


def grpo_step() -> None:
    """GRPO (LoRA): the SFT model samples 8 answers per 3-4 digit prompt, exact match rewards
    them; four-digit numbers, which SFT never showed it, are learned from its own right ones."""
    from omnitune.modalities.text.sample_data import write_digit_chat

    write_digit_chat(REPO / DATA / "text-3-4-digits", train=512, test=64, seed=2, sizes=(3, 4))
    say(f"wrote 3-4 digit prompts under {DATA / 'text-3-4-digits'}")
    train("configs/demo-text-grpo.yaml")
    before, after = before_and_saved("runs/demo/text-grpo")
    say(
        f"GRPO: held-out exact match {before['exact_match']:.2f} -> "
        f"{after['exact_match']:.2f} on 3-4 digit numbers (SFT showed it 1-3 digits; the "
        "four-digit ones are learned from its own rare right samples)"
    )


def llava_grpo_step() -> None:
    """GRPO (LoRA) on the tiny LLaVA after its SFT: 8 sampled answers per digit image, the
    right digit rewarded (vqa_match)."""
    train("configs/demo-llava-grpo.yaml")
    before, after = before_and_saved("runs/demo/llava-grpo")
    say(
        f"GRPO on LLaVA: held-out VQA accuracy {before['vqa_accuracy']:.3f} -> "
        f"{after['vqa_accuracy']:.3f} on 200 digits (small: most remaining errors are "
        "digits the vision side misreads, which rewarding answers cannot show it)"
    )


# Monitoring --------------------------------------------------------------------------------


def monitor() -> dict[str, Any]:
    """The three models served by `transformers serve`, the monitor's recording proxy in front
    of each, traffic that starts in-domain and then shifts; returns the daemon's drift
    decisions per model (feature, delay in events and seconds)."""
    import urllib.request

    folder = REPO / MONITOR
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    daemon, url = start_daemon()
    try:
        chat_traffic(url)
        vision_traffic(url)
        speech_traffic(url)
        time.sleep(2.0)  # the proxies' last batches, a few drift evaluations
        omnitune("monitor", "status", "--url", url)
        with urllib.request.urlopen(url + "/v1/status", timeout=10) as response:
            status = json.loads(response.read())
    finally:
        stop(daemon)
    return {
        name: {
            feature: {k: drift["decision"].get(k) for k in ("delay_events", "delay_s")}
            for feature, drift in model["drift"].items()
            if drift["decision"]["drifted"]
        }
        for name, model in status["models"].items()
    }


def start_daemon() -> tuple[subprocess.Popen, str]:
    """The demo's monitor daemon (configs/monitor-demo.yaml, over its store) on a free port."""
    return start_listening(
        OMNITUNE,
        ["monitor", "serve", "--config", MONITOR_CONFIG, "--port", "0"],
        f"omnitune monitor serve --config {MONITOR_CONFIG} --port 0",
        REPO,
        say,
    )


def served(model: str, traffic: Any, daemon_url: str) -> None:
    """`transformers serve` and a recording proxy (media kept for the capture) around
    `traffic(proxy_url)`."""
    server, port = start_model_server(model, REPO, say)
    proxy = None
    try:
        proxy, proxy_url = start_proxy(
            OMNITUNE,
            MONITOR_CONFIG,
            f"http://127.0.0.1:{port}",
            daemon_url,
            REPO,
            say,
            f"proxy.media_dir={MONITOR / 'media'}",
        )
        traffic(proxy_url)
    finally:
        stop(proxy)
        stop(server)


def chat_traffic(daemon_url: str) -> None:
    """600 chats: 1-3 digit numbers as in training, then 4-6 digits."""
    model = "runs/demo/text/model"

    def traffic(proxy_url: str) -> None:
        prompts = chat_prompts(600, shift_from=300)
        started = time.perf_counter()
        answers = send_chats(proxy_url, model, prompts)
        seconds = time.perf_counter() - started
        wrong = sum(
            a.strip() != numerals(p) for a, p in zip(answers[300:], prompts[300:], strict=True)
        )
        say(
            f"sent {len(prompts)} chats through the proxy in {seconds:.1f} s "
            f"({len(prompts) / seconds:.0f}/s): 300 of 1-3 digits as in training, then 300 of "
            f"4-6 digits (the model got {wrong} of those wrong)"
        )

    served(model, traffic, daemon_url)


def vision_traffic(daemon_url: str) -> None:
    """150 digits like the training images, then 300 scanned by "another device" (from the
    `shift` training split: the held-out `shift` test stays unseen for the re-tuned model)."""
    model = "runs/demo/llava/model"

    def traffic(proxy_url: str) -> None:
        for folder, count, name in (
            (DATA / "digits/test", 150, "base"),
            (DATA / "digits-shift/train", 300, "shift"),
        ):
            rows = _rows(REPO / folder / "data.jsonl")[:count]
            got = send_digit_images(proxy_url, model, rows, REPO / folder)
            right = sum(a.strip() == r["answer"] for a, r in zip(got, rows, strict=True))
            say(
                f"sent {count} {name} digit images through the proxy as data URLs: "
                f"{right} answered right"
            )

    served(model, traffic, daemon_url)


def speech_traffic(daemon_url: str) -> None:
    """200 clips of the training voices (the detectors' largest window), then the 80 `shift`
    training clips (unseen voices in noise), uploaded as OpenAI transcription requests."""
    from jiwer import wer

    model = "runs/demo/speech-base/model"

    def traffic(proxy_url: str) -> None:
        base = _rows(REPO / SPEECH_CORPUS / "base/test.jsonl") + _rows(
            REPO / SPEECH_CORPUS / "base/train.jsonl"
        )
        phases = (
            ("base", base[:200], SPEECH_CORPUS / "base"),
            ("shift", _rows(REPO / SPEECH_CORPUS / "shift/train.jsonl"), SPEECH_CORPUS / "shift"),
        )
        for name, rows, folder in phases:
            heard = send_clips(proxy_url, model, rows, REPO / folder)
            score = wer([r["text"] for r in rows], [h.strip() or "-" for h in heard])
            say(
                f"sent {len(rows)} {name} clips through the proxy as transcription uploads: "
                f"WER {score:.3f}"
            )

    served(model, traffic, daemon_url)


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Labelling and re-tuning what the monitor captured -------------------------------------------

LABELS = MONITOR / "labels"
REGISTRY = Path("runs/demo/registry")
#: monitored model -> (the serving run, the challenger's run, its run-config overrides)
RETUNES = {
    "digits-chat": (
        "runs/demo/text",
        "runs/demo/text-recaptured",
        # Full fine-tuning continued from the champion's model, at a third of its learning rate,
        # 70% of the mix replayed; exact match scored on both gate slices (the loss would also
        # reward a model that learned the answers' shape with the wrong digits).
        ["train.lr=1e-3", "train.max_steps=300", "train.warmup_steps=10", "train.eval_steps=100",
         "train.save_steps=100", "loop.replay_ratio=0.7", "eval.metrics=[exact_match]"],
    ),
    "digits-vision": (
        "runs/demo/llava",
        "runs/demo/llava-recaptured",
        ["peft.method=lora", "peft.r=16", "peft.alpha=32", "train.max_steps=150",
         "train.eval_steps=50", "train.save_steps=50", "loop.replay_ratio=0.7"],
    ),
    "speech-asr": (
        "runs/demo/speech-base",
        "runs/demo/speech-recaptured",
        # Evaluated and saved at the end only: the best checkpoint by the base voices' WER is
        # an early one, before the new voices are learned.
        ["peft.method=lora", "peft.r=16", "peft.alpha=32", "train.max_steps=150",
         "train.warmup_steps=10", "train.eval_steps=150", "train.save_steps=150",
         "train.logging_steps=25"],
    ),
}  # fmt: skip
#: The share of each model's labelled captures held out for the gate: the demo captures ~50
#: clips, and 20% of them (9) are too few for a WER interval to show anything.
HELD_OUT = {"digits-chat": "0.2", "digits-vision": "0.2", "speech-asr": "0.4"}
#: Gate settings per model: exact match for the chat model; for Whisper, up to 0.1 more WER
#: on the 40 base-voice clips for the new voices' gain (a clip is ~2.5 words, so one word is
#: 0.01, and a LoRA retune on ~100 rows moved it by 0.03-0.16 across the runs measured: the
#: gate promotes it in some runs and rejects it in others).
GATE_METRIC = {
    "digits-chat": ["gate.metric=exact_match"],
    "speech-asr": ["gate.max_regression=0.1"],
}


def label_step() -> None:
    """The annotators' step: each captured sample gets its right answer through the daemon's
    POST /v1/feedback (in production, people on the dashboard's Review page), then
    `omnitune monitor export` writes each model's labels with a held-out split."""
    truths = {
        "digits-chat": _chat_truth,
        "digits-vision": _truth_by_file(DATA / "digits-shift/train", "image", "answer"),
        "speech-asr": _truth_by_file(
            SPEECH_CORPUS / "shift/train", "audio", "text", SPEECH_CORPUS / "shift/train.jsonl"
        ),
    }
    daemon, url = start_daemon()
    try:
        for model, truth in truths.items():
            rows = _rows(REPO / CAPTURE / model / "data.jsonl")
            for row in rows:
                label = {"request_id": row["request_id"], "annotator": "demo-annotator"}
                label["correction"] = truth(row)
                label["score"] = 1.0 if label["correction"] == _answer_of(row) else 0.0
                _post(url + "/v1/feedback", label)
            say(f"labelled the {len(rows)} samples captured for {model} (POST /v1/feedback)")
            shutil.rmtree(REPO / LABELS / model, ignore_errors=True)
            omnitune("monitor", "export", model, "--url", url, "--out", str(LABELS / model),
                     "--held-out", HELD_OUT[model])  # fmt: skip
    finally:
        stop(daemon)


def retune_steps() -> None:
    """Each model through the loop's commands: the serving run registered as v1, a challenger
    retuned on its labelled captures with replay, gated against it, promoted when it passes;
    and one challenger trained on the chat captures with their answers shuffled, which the
    gate must reject."""
    labelled = [LABELS / m / "sft" / "train.jsonl" for m in RETUNES]
    STEPS.run(
        "label",
        # The captures name what to label; the store is not an input (labels are written
        # into it, which would make the step's inputs change with every run of it).
        [CAPTURE / m / "data.jsonl" for m in RETUNES],
        labelled,
        label_step,
    )
    for model, (champion, challenger, overrides) in RETUNES.items():
        step = Path(challenger).name
        STEPS.run(
            step,
            [LABELS / model / "sft", champion],
            [Path(challenger) / "gate" / "gate.json"],
            lambda m=model, c=champion, r=challenger, o=overrides: retune(m, c, r, o),
        )
    STEPS.run(
        "text-shuffled",
        [LABELS / "digits-chat" / "sft", "runs/demo/text"],
        ["runs/demo/text-shuffled/gate/gate.json"],
        shuffled_step,
    )


def retune(model: str, champion: str, challenger: str, overrides: list[str]) -> None:
    shutil.rmtree(REPO / REGISTRY / model, ignore_errors=True)
    shutil.rmtree(REPO / challenger, ignore_errors=True)
    registry = ["--model", model, "--registry", str(REGISTRY)]
    omnitune("loop", "promote", champion, *registry)
    omnitune("loop", "retune", champion, "--labels", str(LABELS / model), "--out", challenger,
             *overrides, "train.resume=never")  # fmt: skip
    code = omnitune("loop", "gate", champion, challenger, *GATE_METRIC.get(model, []),
                    allowed=(0, 3))  # fmt: skip
    if code == 0:
        omnitune("loop", "promote", challenger, *registry)


def shuffled_step() -> None:
    """The chat captures with each answer moved to another prompt: a challenger trained on
    them learns nothing about the captured prompts, and the gate has to say so."""
    import random

    source, shuffled = LABELS / "digits-chat", LABELS / "digits-chat-shuffled"
    shutil.rmtree(REPO / shuffled, ignore_errors=True)
    shutil.copytree(REPO / source, REPO / shuffled)
    rows = _rows(REPO / shuffled / "sft/train.jsonl")
    answers = [row["completion"] for row in rows]
    random.Random(0).shuffle(answers)
    (REPO / shuffled / "sft/train.jsonl").write_text(
        "".join(
            json.dumps({**r, "completion": a}) + "\n" for r, a in zip(rows, answers, strict=True)
        )
    )
    say(f"wrote {shuffled}: the chat labels with their answers shuffled across prompts")
    challenger = "runs/demo/text-shuffled"
    shutil.rmtree(REPO / challenger, ignore_errors=True)
    _, _, overrides = RETUNES["digits-chat"]
    omnitune("loop", "retune", "runs/demo/text", "--labels", str(shuffled), "--out", challenger,
             *overrides, "train.resume=never")  # fmt: skip
    omnitune("loop", "gate", "runs/demo/text", challenger, *GATE_METRIC["digits-chat"],
             allowed=(0, 3))  # fmt: skip


def _answer_of(row: dict[str, Any]) -> str:
    return row.get("completion") or row.get("answer") or row.get("text") or ""


def _post(url: str, body: dict[str, Any]) -> None:
    import urllib.request

    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30):
        pass


def _chat_truth(row: dict[str, Any]) -> str:
    return numerals(row["prompt"])


def _truth_by_file(folder: Path, media: str, answer: str, manifest: Path | None = None):
    """The right answer of a captured sample, by its file's content (what an annotator sees)."""
    truth = _media_truth(folder, media, answer, manifest)
    return lambda row: truth[_digest(row[media])]


def _digest(path: str | Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32]


def _media_truth(
    folder: Path, media: str, answer: str, manifest: Path | None = None
) -> dict[str, str]:
    """content hash of each file the demo sent -> its right answer (what an annotator adds)."""
    manifest = manifest or folder / "data.jsonl"
    base = (REPO / manifest).parent
    return {_digest(base / row[media]): row[answer] for row in _rows(REPO / manifest)}


# Deployment ------------------------------------------------------------------------------------


def deploy_steps() -> None:
    """The chat model to GGUF (llama.cpp, Ollama) as f16 and 4-bit, the re-tuned Whisper to
    ONNX, each checked in its runtime. (Its CTranslate2 export for faster-whisper is refused:
    faster-whisper takes only 30-second windows and the demo's Whisper reads 2 seconds.)"""

    # Into runs/demo/exports/, not RUN/exports/: the run folders are other steps' inputs.
    def export() -> None:
        for run, folder, args in EXPORTS:
            omnitune("export", f"runs/demo/{run}", *args, "--out", f"{EXPORTS_DIR}/{folder}")

    STEPS.run(
        "deploy",
        ["runs/demo/text/model", "runs/demo/speech-shift/adapter"],
        [f"{EXPORTS_DIR}/{folder}/parity.json" for _, folder, _ in EXPORTS],
        export,
    )


# The end -----------------------------------------------------------------------------------


def say_table(drift: dict[str, Any]) -> None:
    say("\n" + summary_table(REPO, STEPS, drift))
    exports = parity_table(REPO)
    if exports:
        say("\n" + exports)


def serve() -> None:
    """The daemon (over the demo's events) and the dashboard, left running in the background
    (and Prometheus scraping the daemon, where it is installed)."""
    import urllib.request

    folder = REPO / "runs/demo/serve"
    folder.mkdir(parents=True, exist_ok=True)
    daemon = "http://127.0.0.1:9108"
    services = {
        "monitor daemon": (
            [OMNITUNE, "monitor", "serve", "--config", MONITOR_CONFIG],
            daemon,
            "/healthz",
        ),
        "dashboard": (
            [OMNITUNE, "dashboard", "--daemon", daemon, "--runs", "runs/demo"],
            "http://127.0.0.1:8501",
            "/_stcore/health",
        ),
    }
    prometheus = shutil.which("prometheus")
    if prometheus:
        services["Prometheus"] = (
            [
                prometheus,
                "--config.file=configs/prometheus/prometheus.yml",
                "--storage.tsdb.path=runs/demo/serve/prometheus",
                "--web.listen-address=127.0.0.1:9090",
            ],
            "http://127.0.0.1:9090",
            "/-/ready",
        )
        services["dashboard"][0].extend(["--prometheus", "http://127.0.0.1:9090"])
    started = []
    for name, (command, _, _) in services.items():
        log = (folder / f"{name.split()[-1]}.log").open("w")
        process = subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        started.append(process)
    (folder / "pids").write_text(" ".join(str(p.pid) for p in started) + "\n")
    print(
        "\nleft running (logs in runs/demo/serve/; "
        "stop them with kill $(cat runs/demo/serve/pids)):"
    )
    for (name, (_, url, health)), process in zip(services.items(), started, strict=True):
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + health, timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = folder / f"{name.split()[-1]}.log"
                    sys.exit(
                        f"{name} did not start (is its port taken?); "
                        f"{log}:\n{log.read_text()[-2000:]}"
                    )
                time.sleep(0.3)
        print(f"  {name:<15} {url}", flush=True)


if __name__ == "__main__":
    main()
