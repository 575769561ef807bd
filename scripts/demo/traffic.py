"""The demo's "production": servers started in the background, and the traffic sent to them.

Requests go to the monitor's recording proxy in OpenAI's format (chat completions with text,
chat completions with an image part as a data URL, transcription uploads), as an application
would send them to `transformers serve`; the proxy forwards them and records each call.
"""

from __future__ import annotations

import base64
import json
import random
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

Say = Callable[[str], None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_listening(
    omnitune: str, command: list[str], shown: str, cwd: Path, say: Say
) -> tuple[subprocess.Popen, str]:
    """Start `omnitune COMMAND` in the background; its URL from its "listening on" line."""
    say(f"\n+ {shown} &")
    process = subprocess.Popen(
        [omnitune, *command], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    say(line.strip())
    found = re.search(r"listening on (http://[\d.]+:\d+)", line)
    if not found:
        process.kill()
        sys.exit(f"{shown} did not start:\n" + line + process.stdout.read())
    return process, found.group(1)


def start_proxy(
    omnitune: str,
    config: str,
    upstream: str,
    daemon_url: str,
    cwd: Path,
    say: Say,
    *overrides: str,
) -> tuple[subprocess.Popen, str]:
    """`omnitune monitor proxy` in front of `upstream`, its events to the daemon at
    `daemon_url`; the process and the proxy's URL."""
    command = ["monitor", "proxy", "--config", config, "--upstream", upstream, "--port", "0"]
    return start_listening(
        omnitune,
        [*command, f"proxy.daemon_url={daemon_url}", *overrides],
        "omnitune " + " ".join([*command, *overrides]),
        cwd,
        say,
    )


def start_model_server(model: str, cwd: Path, say: Say) -> tuple[subprocess.Popen, int]:
    """`transformers serve MODEL` (transformers' own OpenAI-compatible server) on a free
    loopback port, once it answers /health."""
    port = free_port()
    shown = f"transformers serve {model} --host 127.0.0.1 --port {port} --device cpu"
    say(f"\n+ {shown} &")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "transformers"), *shown.split()[1:]],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server, port
        except OSError:
            time.sleep(0.3)
    server.kill()
    sys.exit(f"{shown} did not answer /health in 120 s")


def stop(process: subprocess.Popen | None) -> None:
    if process is not None:
        process.terminate()
        process.wait(timeout=60)


def numerals(prompt: str) -> str:
    """The right answer to a digit-word prompt: "four two" -> "4 2"."""
    from omnitune.modalities.text.sample_data import WORDS

    digit_of = {word: str(digit) for digit, word in enumerate(WORDS)}
    return " ".join(digit_of[word] for word in prompt.split())


def chat_prompts(count: int, shift_from: int, seed: int = 7) -> list[str]:
    """Digit-word prompts for the chat model: 1-3 digits as in training, then 4-6 digits."""
    from omnitune.modalities.text.sample_data import WORDS

    rng = random.Random(seed)
    prompts = []
    for index in range(count):
        size = rng.randint(*((4, 6) if index >= shift_from else (1, 3)))
        prompts.append(" ".join(WORDS[rng.randrange(10)] for _ in range(size)))
    return prompts


def _post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def send_chats(url: str, model: str, prompts: list[str], clients: int = 4) -> list[str]:
    """POST each prompt to `url`/v1/chat/completions from `clients` threads; the answers."""

    def ask(prompt: str) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        return _post_json(url + "/v1/chat/completions", body)["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(ask, prompts))


def send_digit_images(url: str, model: str, rows: list[dict], folder: Path) -> list[str]:
    """Ask the served vision-language model about each row's image, sent as an OpenAI image
    part (a PNG data URL), from 4 threads; the answers."""

    def ask(row: dict) -> str:
        data = base64.b64encode((folder / row["image"]).read_bytes()).decode()
        content = [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
            {"type": "text", "text": row["question"]},
        ]
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 3}
        return _post_json(url + "/v1/chat/completions", body)["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(ask, rows))


def send_clips(url: str, model: str, rows: list[dict], folder: Path) -> list[str]:
    """Upload each row's clip to `url`/v1/audio/transcriptions (multipart, as OpenAI's
    clients do) from 4 threads; the transcripts."""
    import httpx

    def ask(row: dict) -> str:
        path = folder / row["audio"]
        answer = httpx.post(
            url + "/v1/audio/transcriptions",
            data={"model": model},
            files={"file": (path.name, path.read_bytes(), "audio/flac")},
            timeout=60,
        )
        answer.raise_for_status()
        return answer.json()["text"]

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(ask, rows))
