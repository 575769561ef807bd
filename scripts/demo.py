"""`make demo`: the main omnitune job, offline, on the embedded defaults.

Each step is an `omnitune` command printed before it runs, so everything the demo does can be
repeated by hand. Today's path, about 6 minutes on 2 CPU cores:
1. check the shipped configs;
2. build a tiny chat model and train it (configs/demo-text.yaml) to turn digit words into
   numerals, then ask it; then align it with DPO (configs/demo-text-dpo.yaml) on preference
   pairs whose rejected answers are its own mistakes, and with GRPO (configs/demo-text-grpo.yaml)
   on 3-4 digit prompts, rewarded by the exact match of its sampled numerals;
3. build a tiny LLaVA and train it (configs/demo-llava.yaml) on scikit-learn's real
   handwritten digits, evaluate it on held-out digits, run GRPO on it
   (configs/demo-llava-grpo.yaml, vqa_match reward), then LoRA-adapt it
   (configs/demo-llava-shift.yaml) to the same digits scanned by "another device";
4. build a tiny Whisper, train it (configs/demo-speech-base.yaml) on the shipped espeak-ng
   `base` voices, then LoRA-adapt it (configs/demo-speech-shift.yaml) to two unseen voices in
   background noise: the run log shows WER on `shift` before and after;
5. build the other tiny families (Idefics3, Qwen2-VL) and prove each loads and runs;
6. serve the chat model of step 2 with `transformers serve`, put the monitor
   (configs/monitor-demo.yaml) and its recording proxy in front of it, send prompts whose
   users start typing longer numbers through the proxy, read the drift it reports, and
   fine-tune on the prompts it captured, labelled: the loop from fine-tuning to monitoring
   and back.
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
MODELS = Path("runs/models")
DATA = Path("runs/demo/data")


def omnitune(*args: str) -> str:
    shown = " ".join(shlex.quote(a) for a in ("omnitune", *args))
    print(f"\n$ {shown}", flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([OMNITUNE, *args], cwd=REPO, env=env, capture_output=True, text=True)
    lines = (result.stderr + result.stdout).strip().splitlines()
    # Training logs every few steps; show the evaluations and the outcome.
    shown_lines = [line for line in lines if "INFO omnitune.train: step " not in line]
    print("\n".join(shown_lines), flush=True)
    if result.returncode != 0:
        sys.exit(f"demo step failed with exit status {result.returncode}: {shown}")
    return result.stdout


def write_demo_data() -> None:
    from omnitune.modalities.text.demo_data import write_digit_chat
    from omnitune.modalities.vision_language.demo_data import write_digit_vqa

    write_digit_chat(REPO / DATA / "text", train=1024, test=64, seed=0)
    write_digit_vqa(REPO / DATA / "digits" / "train", 0, 1400)
    write_digit_vqa(REPO / DATA / "digits" / "test", 1400, 200)
    write_digit_vqa(REPO / DATA / "digits-shift" / "train", 0, 600, domain="shift")
    write_digit_vqa(REPO / DATA / "digits-shift" / "test", 1400, 200, domain="shift")
    print(
        f"wrote demo data under {DATA}: digit chats, and 1,600 handwritten digits as PNG "
        "(plus 800 as scans from another device, the `shift` domain)"
    )


def main() -> None:
    start = time.perf_counter()
    for config in sorted((REPO / "configs").glob("*.yaml")):
        if not config.name.startswith("monitor"):  # monitor daemon configs, not run configs
            omnitune("config", "check", str(config.relative_to(REPO)))
    write_demo_data()

    omnitune("models", "build-tiny", "text", "--out", str(MODELS / "tiny-text"))
    omnitune("train", "configs/demo-text.yaml", "train.resume=never")
    for words in ("four two seven", "nine", "one zero"):
        omnitune("models", "check", "runs/demo/text/model", "--prompt", words)
    preference_step()
    grpo_step()

    omnitune("models", "build-tiny", "llava", "--out", str(MODELS / "tiny-llava"))
    omnitune("train", "configs/demo-llava.yaml", "train.resume=never")
    omnitune("eval", "runs/demo/llava")
    llava_grpo_step()
    omnitune("train", "configs/demo-llava-shift.yaml", "train.resume=never")

    omnitune("models", "build-tiny", "whisper", "--out", str(MODELS / "tiny-whisper"))
    omnitune("train", "configs/demo-speech-base.yaml", "train.resume=never")
    omnitune("train", "configs/demo-speech-shift.yaml", "train.resume=never")
    omnitune("eval", "runs/demo/speech-shift")

    for family in ("idefics3", "qwen2-vl"):
        omnitune("models", "build-tiny", family, "--out", str(MODELS / f"tiny-{family}"))
        omnitune("models", "check", str(MODELS / f"tiny-{family}"))
    monitor_loop()
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; runs are in runs/demo/")


def first_and_last_eval(run: str) -> tuple[dict, dict]:
    """The first (step 0) and last evaluation records of `run`'s metrics.jsonl."""
    import json

    rows = (REPO / run / "metrics.jsonl").read_text().splitlines()
    evals = [r for r in map(json.loads, rows) if r["kind"] == "eval"]
    return evals[0], evals[-1]


def preference_step() -> None:
    """DPO (LoRA) on pairs that prefer the right numerals to the SFT model's own answers."""
    from omnitune.modalities.text.demo_data import write_model_pairs

    write_model_pairs(REPO / "runs/demo/text/model", REPO / DATA / "text-pairs")
    print(
        f"wrote preference pairs under {DATA / 'text-pairs'}: 1-5 digits, rejected = the "
        "SFT model's own wrong answers",
        flush=True,
    )
    omnitune("train", "configs/demo-text-dpo.yaml", "train.resume=never")
    before, after = first_and_last_eval("runs/demo/text-dpo")
    print(
        f"DPO: held-out reward accuracy {before['reward_accuracy']:.2f} -> "
        f"{after['reward_accuracy']:.2f}, exact match {before['exact_match']:.2f} -> "
        f"{after['exact_match']:.2f}: it now ranks the right numerals above its own mistakes, "
        "but preferences do not teach it numbers longer than it can write; the monitor loop "
        "below captures such prompts and fine-tunes on them",
        flush=True,
    )


def grpo_step() -> None:
    """GRPO (LoRA): the SFT model samples 8 answers per 3-4 digit prompt, exact match rewards
    them; four-digit numbers, which SFT never showed it, are learned from its own right ones."""
    from omnitune.modalities.text.demo_data import write_digit_chat

    write_digit_chat(REPO / DATA / "text-3-4-digits", train=512, test=64, seed=2, sizes=(3, 4))
    print(f"wrote 3-4 digit prompts under {DATA / 'text-3-4-digits'}", flush=True)
    omnitune("train", "configs/demo-text-grpo.yaml", "train.resume=never")
    before, after = first_and_last_eval("runs/demo/text-grpo")
    print(
        f"GRPO: held-out exact match {before['exact_match']:.2f} -> "
        f"{after['exact_match']:.2f} on 3-4 digit numbers (SFT showed it 1-3 digits; the "
        "four-digit ones are learned from its own rare right samples)",
        flush=True,
    )


def llava_grpo_step() -> None:
    """GRPO (LoRA) on the tiny LLaVA after its SFT: 8 sampled answers per digit image, the
    right digit rewarded (vqa_match)."""
    omnitune("train", "configs/demo-llava-grpo.yaml", "train.resume=never")
    before, after = first_and_last_eval("runs/demo/llava-grpo")
    print(
        f"GRPO on LLaVA: held-out VQA accuracy {before['vqa_accuracy']:.3f} -> "
        f"{after['vqa_accuracy']:.3f} on 200 digits (small: most remaining errors are "
        "digits the vision side misreads, which rewarding answers cannot show it)",
        flush=True,
    )


def write_long_number_test(path: Path, count: int = 64) -> Path:
    """Held-out chats of 4-6 digits (prompt/completion), to score the re-trained model on."""
    import json
    import random

    from omnitune.modalities.text.demo_data import WORDS

    rng = random.Random(99)
    rows = []
    for _ in range(count):
        digits = [rng.randrange(10) for _ in range(rng.randint(4, 6))]
        prompt = " ".join(WORDS[d] for d in digits)
        rows.append(json.dumps({"prompt": prompt, "completion": " ".join(map(str, digits))}))
    path.write_text("\n".join(rows) + "\n")
    return path


def chat_prompts(count: int, shift_from: int, seed: int = 7) -> list[str]:
    """Digit-word prompts for the chat model: 1-3 digits as in training, then 4-6 digits."""
    import random

    from omnitune.modalities.text.demo_data import WORDS

    rng = random.Random(seed)
    prompts = []
    for index in range(count):
        size = rng.randint(*((4, 6) if index >= shift_from else (1, 3)))
        prompts.append(" ".join(WORDS[rng.randrange(10)] for _ in range(size)))
    return prompts


def send_chats(url: str, model: str, prompts: list[str], clients: int = 4) -> list[str]:
    """POST each prompt to `url`/v1/chat/completions (OpenAI format) from `clients` threads,
    in order within each thread; the answers."""
    import json
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    def ask(prompt: str) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        request = urllib.request.Request(
            url + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(ask, prompts))


def start_listening(command: list[str], shown: str) -> tuple[subprocess.Popen, str]:
    """Start `omnitune COMMAND` in the background; its URL from its "listening on" line."""
    import re

    print(f"\n$ {shown} &", flush=True)
    process = subprocess.Popen(
        [OMNITUNE, *command], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    print(line.strip(), flush=True)
    found = re.search(r"listening on (http://[\d.]+:\d+)", line)
    if not found:
        process.kill()
        sys.exit(f"{shown} did not start:\n" + line + process.stdout.read())
    return process, found.group(1)


def start_proxy(config: str, upstream: str, daemon_url: str) -> tuple[subprocess.Popen, str]:
    """`omnitune monitor proxy` in front of `upstream`, its events to the daemon at
    `daemon_url`; the process and the proxy's URL."""
    command = ["monitor", "proxy", "--config", config, "--upstream", upstream, "--port", "0"]
    return start_listening(
        [*command, f"proxy.daemon_url={daemon_url}"], "omnitune " + " ".join(command)
    )


def start_model_server(model: str, port: int) -> subprocess.Popen:
    """`transformers serve MODEL` (transformers' own OpenAI-compatible server) on loopback."""
    import urllib.request

    shown = f"transformers serve {model} --host 127.0.0.1 --port {port} --device cpu"
    print(f"\n$ {shown} &", flush=True)
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "transformers"), *shown.split()[1:]],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.3)
    server.kill()
    sys.exit(f"{shown} did not answer /health in 120 s")


def numerals(prompt: str) -> str:
    """The right answer to a digit-word prompt: "four two" -> "4 2"."""
    from omnitune.modalities.text.demo_data import WORDS

    digit_of = {word: str(digit) for digit, word in enumerate(WORDS)}
    return " ".join(digit_of[word] for word in prompt.split())


def send_digit_images(url: str, model: str, rows: list[dict], folder: Path) -> list[str]:
    """Ask the served vision-language model about each row's image, sent as an OpenAI image
    part (a PNG data URL), from 4 threads; the answers."""
    import base64
    import json
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    def ask(row: dict) -> str:
        data = base64.b64encode((folder / row["image"]).read_bytes()).decode()
        content = [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
            {"type": "text", "text": row["question"]},
        ]
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 3}
        request = urllib.request.Request(
            url + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(ask, rows))


def vision_traffic(config: str, daemon_url: str, port: int) -> None:
    """The tiny LLaVA served the same way: 150 digits like its training images, then 150
    scanned by "another device"; the image features of the data URLs drift."""
    import json

    model = "runs/demo/llava/model"
    server = start_model_server(model, port)
    proxy = None
    try:
        upstream = f"http://127.0.0.1:{port}"
        proxy, proxy_url = start_proxy(config, upstream, daemon_url)
        for domain, name in (("digits", "base"), ("digits-shift", "shift")):
            folder = REPO / DATA / domain / "test"
            rows = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
            got = send_digit_images(proxy_url, model, rows[:150], folder)
            right = sum(a.strip() == r["answer"] for a, r in zip(got, rows[:150], strict=True))
            print(
                f"sent 150 {name} digit images through the proxy as data URLs: {right} "
                "answered right",
                flush=True,
            )
    finally:
        for process in (proxy, server):
            if process is not None:
                process.terminate()
                process.wait(timeout=60)


def label_captured(path: Path) -> int:
    """Give each captured prompt its right answer (the numerals of its digit words), as an
    annotator would; the daemon captured the model's own, often wrong, answer."""
    import json

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        row["completion"] = numerals(row["prompt"])
        row["target_source"] = "label"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return len(rows)


def monitor_loop() -> None:
    """The chat model served by `transformers serve`, the monitor's recording proxy in front
    of it, in-domain then longer prompts sent through the proxy: drift, latency and captured
    samples from real generations; the captured prompts, labelled, fine-tune the model."""
    import shutil
    import socket

    folder = REPO / "runs" / "demo" / "monitor"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        model_port = sock.getsockname()[1]
    model = "runs/demo/text/model"
    server = start_model_server(model, model_port)
    config = "configs/monitor-demo.yaml"
    daemon, url = start_listening(
        ["monitor", "serve", "--config", config, "--port", "0"],
        f"omnitune monitor serve --config {config} --port 0",
    )
    proxy = None
    try:
        upstream = f"http://127.0.0.1:{model_port}"
        proxy, proxy_url = start_proxy(config, upstream, url)
        prompts = chat_prompts(600, shift_from=300)
        started = time.perf_counter()
        answers = send_chats(proxy_url, model, prompts)
        seconds = time.perf_counter() - started
        wrong = sum(
            answer.strip() != numerals(prompt)
            for answer, prompt in zip(answers[300:], prompts[300:], strict=True)
        )
        print(
            f"sent {len(prompts)} chats through the proxy in {seconds:.1f} s "
            f"({len(prompts) / seconds:.0f}/s): 300 of 1-3 digits as in training, then 300 of "
            f"4-6 digits (the model got {wrong} of those wrong)",
            flush=True,
        )
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            vision_port = sock.getsockname()[1]
        vision_traffic(config, url, vision_port)
        time.sleep(2.0)  # the client's last batch, a few evaluations
        omnitune("monitor", "status", "--url", url)
    finally:
        for process in (proxy, daemon, server):
            if process is not None:
                process.terminate()
                process.wait(timeout=60)
    captured = folder / "capture" / "digits-chat" / "data.jsonl"
    count = label_captured(captured)
    print(
        f"labelled the {count} captured prompts in {captured.relative_to(REPO)} with their "
        "right numerals (the daemon captured the model's own answers; in production this is "
        "your annotators' step)",
        flush=True,
    )
    held_out = write_long_number_test(folder / "long-numbers-test.jsonl").relative_to(REPO)
    omnitune("eval", "runs/demo/text/model", "--data", str(held_out))
    omnitune(
        "train",
        "configs/demo-text.yaml",
        "model.name_or_path=runs/demo/text/model",
        f"data.train={captured.relative_to(REPO)}",
        f"data.eval={held_out}",
        "output_dir=runs/demo/text-recaptured",
        "train.max_steps=60",
        "train.warmup_steps=5",
        "train.eval_steps=30",
        "train.save_steps=60",
        "train.resume=never",
    )


if __name__ == "__main__":
    main()
