"""The recording proxy in front of a real `transformers serve` on loopback, and of a stub
upstream for the endpoints and failures a tiny model cannot show (images, audio, errors).

Each test drives `omnitune monitor proxy` and `omnitune monitor serve` as processes and talks
HTTP to them, as a user's client would."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from omnitune.monitor import traffic
from tests.conftest import REPO, offline_env
from tests.monitor.conftest import Daemon, free_port, start_daemon, start_proxy

pytestmark = pytest.mark.slow

TRANSFORMERS = REPO / ".venv" / "bin" / "transformers"


@pytest.fixture(scope="module")
def served(sft_model) -> Iterator[tuple[str, str]]:
    """(URL, model id) of `transformers serve` running the tiny chat model on loopback."""
    model = str(sft_model)
    port = free_port()
    log = open(Path(model).parent / "serve.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            str(TRANSFORMERS),
            "serve",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
            "--default-seed",
            "0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=offline_env(),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("transformers serve did not start: " + Path(log.name).read_text())
    yield url, model
    process.terminate()
    process.wait(timeout=30)
    log.close()


def _stub_app():
    """An OpenAI-shaped upstream: `model` picks the behaviour (ok, status-NNN, slow)."""
    import asyncio

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    async def chat(request: Request):
        body = await request.json()
        model = body.get("model", "")
        if model.startswith("status-"):
            code = int(model.split("-")[1])
            return JSONResponse({"error": {"message": f"stub {code}"}}, status_code=code)
        if model == "slow":
            await asyncio.sleep(3)
        if body.get("stream"):

            async def chunks():
                for piece in ("7", " 3", " 1"):
                    delta = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                    yield f"data: {json.dumps(delta)}\n\n".encode()
                    await asyncio.sleep(0.05)
                yield b"data: [DONE]\n\n"

            return StreamingResponse(chunks(), media_type="text/event-stream")
        answer = {
            "id": "stub-1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "7 3 1"}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
        }
        # Spaces and key order a JSON re-encoder would change: the proxy must not.
        return PlainTextResponse(
            json.dumps(answer, indent=1), media_type="application/json; charset=utf-8"
        )

    async def transcribe(request: Request):
        form = await request.form()
        upload = form["file"]
        size = len(await upload.read())
        return JSONResponse({"text": f"heard {size} bytes"})

    async def other(request: Request):
        return PlainTextResponse(f"{request.method} {request.url.path}?{request.url.query}")

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/audio/transcriptions", transcribe, methods=["POST"]),
            Route("/{path:path}", other, methods=["GET", "POST"]),
        ]
    )


@pytest.fixture(scope="module")
def stub() -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(_stub_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _profiles(folder: Path) -> dict[str, Path]:
    """Reference profiles of the three modalities, as `omnitune train` writes them."""
    from PIL import Image

    from omnitune.modalities.profile import build_profile
    from omnitune.modalities.speech.audio import audio_features
    from omnitune.modalities.vision_language.images import image_features

    rng = np.random.default_rng(0)
    images = (
        image_features(Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)))
        for _ in range(50)
    )
    clips = (
        audio_features(0.1 * rng.standard_normal(16_000).astype(np.float32), 16_000)
        for _ in range(50)
    )
    paths = {
        "text": traffic.write_reference(folder / "text.json"),
        "vision_language": folder / "vision.json",
        "speech": folder / "speech.json",
    }
    paths["vision_language"].write_text(
        json.dumps(build_profile("vision_language", images, "tests"))
    )
    paths["speech"].write_text(json.dumps(build_profile("speech", clips, "tests")))
    return paths


@pytest.fixture
def monitor_setup(tmp_path: Path, served, stub) -> dict[str, Any]:
    """A daemon watching a chat, a vision and a speech model, and a proxy config whose routes
    map the served and stub model names onto them."""
    references = _profiles(tmp_path)
    upstream, served_model = served
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "store": {"path": str(tmp_path / "events.sqlite")},
        "models": {
            "digits-chat": {"modality": "text", "reference": str(references["text"])},
            "digits-vision": {
                "modality": "vision_language",
                "reference": str(references["vision_language"]),
            },
            "voice": {"modality": "speech", "reference": str(references["speech"])},
        },
        "drift": {"interval_s": 0.2},
        "capture": {"dir": None},
        "proxy": {
            "upstream": upstream,
            "models": {
                served_model: {"model": "digits-chat", "adapter": "v1"},
                "vision": {"model": "digits-vision"},
                "whisper": {"model": "voice"},
            },
            "default_model": "digits-chat",
            "timeout_s": 1.0,
        },
    }
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(config))
    daemon = start_daemon(path)
    config["proxy"]["daemon_url"] = daemon.url
    path.write_text(yaml.safe_dump(config))
    running: list[Daemon] = [daemon]
    setup = {"config": path, "daemon": daemon, "served": served, "stub": stub, "running": running}
    yield setup
    for process in running:
        process.stop()


def _events(daemon: Daemon, model: str, count: int, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = daemon.request("GET", f"/v1/events?model={model}&limit=100")
        assert status == 200, body
        if len(body["events"]) >= count:
            return body["events"]
        time.sleep(0.1)
    raise AssertionError(f"{model}: fewer than {count} events stored: {body}")


def _proxy(setup: dict[str, Any], *overrides: str) -> Daemon:
    proxy = start_proxy(setup["config"], *overrides)
    setup["running"].insert(0, proxy)
    return proxy


def _chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 6,
        "temperature": 0,
        **extra,
    }


def _without_volatile(body: bytes) -> dict[str, Any]:
    answer = json.loads(body)
    for key in ("id", "created"):
        answer.pop(key, None)
    return answer


def test_a_chat_completion_through_the_proxy_is_the_upstreams_answer_and_one_event(
    monitor_setup,
):
    proxy = _proxy(monitor_setup)
    upstream, model = monitor_setup["served"]
    request = _chat(model, "four two seven")
    direct = httpx.post(upstream + "/v1/chat/completions", json=request, timeout=60)
    through = httpx.post(
        proxy.url + "/v1/chat/completions",
        json=request,
        headers={"Authorization": "Bearer sk-secret-token"},
        timeout=60,
    )
    assert through.status_code == direct.status_code == 200
    assert through.json()["choices"][0]["message"]["content"].strip()  # it wrote something
    # transformers serve stamps each answer with a fresh id and time; all else is the same.
    assert _without_volatile(through.content) == _without_volatile(direct.content)
    text = through.json()["choices"][0]["message"]["content"]

    [event] = _events(monitor_setup["daemon"], "digits-chat", 1)
    assert event["adapter"] == "v1"
    assert event["input"] == "four two seven"
    assert event["output"] == text
    assert event["latency_s"] > 0 and 0 < event["ttft_s"] <= event["latency_s"]
    assert event["completion_tokens"] == through.json()["usage"]["completion_tokens"]
    assert "sk-secret-token" not in json.dumps(event)


def test_feedback_on_a_call_made_with_the_openai_client_is_stored_with_its_event(
    monitor_setup,
):
    """The round trip an application makes: the official `openai` client calls the model
    through the proxy, reads the event's id from the response header, and sends the user's
    thumbs-down and correction with `Client.feedback`; the label shows on the event."""
    from openai import OpenAI

    from omnitune.monitor.client import Client

    proxy = _proxy(monitor_setup, f"proxy.upstream={monitor_setup['stub']}")
    openai = OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0)
    raw = openai.chat.completions.with_raw_response.create(
        model="stub-chat", messages=[{"role": "user", "content": "seven three one zero"}]
    )
    request_id = raw.headers["X-Omnitune-Request-Id"]
    assert raw.parse().choices[0].message.content == "7 3 1"

    daemon = monitor_setup["daemon"]
    [event] = _events(daemon, "digits-chat", 1)
    assert (event["request_id"], event["labels"]) == (request_id, [])
    monitor = Client(daemon.url)
    answer = monitor.feedback(
        request_id, score=False, correction="7 3 1 0", comment="dropped the zero", annotator="ana"
    )
    monitor.close()
    assert answer == {
        "status": 200,
        "request_id": request_id,
        "model": "digits-chat",
        "label": "stored",
    }
    [event] = _events(daemon, "digits-chat", 1)
    [label] = event["labels"]
    assert (label["annotator"], label["source"], label["score"]) == ("ana", "human", 0.0)
    assert (label["correction"], label["comment"]) == ("7 3 1 0", "dropped the zero")


def test_upstream_bytes_and_headers_pass_unchanged_and_other_paths_are_forwarded(
    monitor_setup,
):
    proxy = _proxy(monitor_setup, f"proxy.upstream={monitor_setup['stub']}")
    stub = monitor_setup["stub"]
    request = _chat("stub", "one two")
    direct = httpx.post(stub + "/v1/chat/completions", json=request)
    through = httpx.post(proxy.url + "/v1/chat/completions", json=request)
    assert through.content == direct.content  # byte for byte, indentation included
    assert through.headers["content-type"] == "application/json; charset=utf-8"
    other = httpx.get(proxy.url + "/v1/models?x=1")
    assert other.text == "GET /v1/models?x=1"


def test_a_streamed_completion_arrives_chunk_by_chunk(monitor_setup):
    proxy = _proxy(monitor_setup)
    upstream, model = monitor_setup["served"]
    request = _chat(model, "nine one", stream=True)

    def stream(url: str) -> tuple[list[str], list[float]]:
        pieces, times = [], []
        with httpx.stream("POST", url + "/v1/chat/completions", json=request, timeout=60) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data:") and line[5:].strip() != "[DONE]":
                    chunk = json.loads(line[5:])
                    pieces.append(chunk["choices"][0].get("delta", {}).get("content") or "")
                    times.append(time.perf_counter())
        return pieces, times

    direct, _ = stream(upstream)
    through, _ = stream(proxy.url)
    assert len(through) >= 3 and "".join(through) == "".join(direct)
    [event] = _events(monitor_setup["daemon"], "digits-chat", 1)
    assert event["output"] == "".join(through)
    assert 0 < event["ttft_s"] <= event["latency_s"]

    # Through the stub, which waits 50 ms between chunks: each reaches the client on its own.
    stub_proxy = _proxy(monitor_setup, f"proxy.upstream={monitor_setup['stub']}")
    request["model"] = "stub"
    _, times = stream(stub_proxy.url)
    gaps = np.diff(times)
    assert len(times) == 3 and (gaps > 0.03).all(), gaps


def test_an_image_part_and_an_audio_upload_become_features_and_kept_files(monitor_setup, tmp_path):
    import soundfile
    from PIL import Image

    media = tmp_path / "media"
    proxy = _proxy(
        monitor_setup, f"proxy.upstream={monitor_setup['stub']}", f"proxy.media_dir={media}"
    )
    png = io.BytesIO()
    Image.new("RGB", (40, 24), (200, 30, 30)).save(png, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "Which digit is this?"},
            {"type": "image_url", "image_url": {"url": url}},
        ],
    }
    answer = httpx.post(
        proxy.url + "/v1/chat/completions", json={"model": "vision", "messages": [message]}
    )
    assert answer.status_code == 200
    [event] = _events(monitor_setup["daemon"], "digits-vision", 1)
    features = event["features"]
    assert features["width"] == 40 and features["height"] == 24
    assert features["brightness"] == pytest.approx((0.299 * 200 + 0.587 * 30 + 0.114 * 30) / 255)
    # The image is kept under proxy.media_dir, named by its content, for the capture to use.
    assert event["input"]["text"] == "Which digit is this?"
    kept = Path(event["input"]["image_path"])
    assert kept.parent == media.resolve() and kept.suffix == ".png"
    assert kept.read_bytes() == png.getvalue()

    wav = io.BytesIO()
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000).astype(np.float32)
    soundfile.write(wav, tone, 8000, format="WAV", subtype="PCM_16")
    upload = httpx.post(
        proxy.url + "/v1/audio/transcriptions",
        data={"model": "whisper"},
        files={"file": ("clip.wav", wav.getvalue(), "audio/wav")},
    )
    assert upload.json() == {"text": f"heard {len(wav.getvalue())} bytes"}
    [event] = _events(monitor_setup["daemon"], "voice", 1)
    assert event["output"] == upload.json()["text"]
    assert event["features"]["duration_s"] == pytest.approx(1.0, abs=0.01)
    assert Path(event["input"]["audio_path"]).read_bytes() == wav.getvalue()
    assert sorted(p.suffix for p in media.iterdir()) == [".png", ".wav"]


def test_upstream_errors_reach_the_client_unchanged_and_are_counted_by_class(monitor_setup):
    stub = monitor_setup["stub"]
    proxy = _proxy(monitor_setup, f"proxy.upstream={stub}")
    for code in (400, 503):
        request = _chat(f"status-{code}", "x")
        direct = httpx.post(stub + "/v1/chat/completions", json=request)
        through = httpx.post(proxy.url + "/v1/chat/completions", json=request)
        assert (through.status_code, through.content) == (code, direct.content)
    slow = httpx.post(proxy.url + "/v1/chat/completions", json=_chat("slow", "x"), timeout=10)
    assert slow.status_code == 504 and slow.json()["error"]["type"] == "upstream_timeout"

    dead = _proxy(monitor_setup, f"proxy.upstream=http://127.0.0.1:{free_port()}")
    refused = httpx.post(dead.url + "/v1/chat/completions", json=_chat("stub", "x"))
    assert refused.status_code == 502 and refused.json()["error"]["type"] == "upstream_connect"

    _events(monitor_setup["daemon"], "digits-chat", 4)
    exported = monitor_setup["daemon"].metrics()
    for error_class in ("4xx", "5xx", "timeout", "connect"):
        line = f'omnitune_call_errors_total{{adapter="",class="{error_class}",model="digits-chat"}}'
        assert f"{line} 1.0" in exported, error_class
    own = proxy.request("GET", "/omnitune/metrics")[1]
    assert 'omnitune_proxy_failed_calls_total{class="5xx"} 1.0' in own


def test_a_stopped_daemon_costs_no_client_request(monitor_setup):
    proxy = _proxy(monitor_setup, f"proxy.upstream={monitor_setup['stub']}")
    daemon = monitor_setup["daemon"]
    results: list[int] = []

    def client() -> None:
        with httpx.Client(timeout=10) as http:
            for index in range(40):
                request = _chat("stub", f"seven {index}")
                results.append(
                    http.post(proxy.url + "/v1/chat/completions", json=request).status_code
                )

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    daemon.stop()  # mid-traffic
    for thread in threads:
        thread.join(timeout=60)
    assert results == [200] * 160
    status, health = proxy.request("GET", "/omnitune/healthz")
    assert status == 200 and health["status"] == "ok"


def test_the_middleware_records_a_users_own_app(tmp_path, monitor_setup):
    """MonitorMiddleware around a Starlette app that answers chat completions itself."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from omnitune.monitor import MonitorMiddleware

    async def chat(request):
        body = await request.json()
        words = body["messages"][-1]["content"]
        answer = {"choices": [{"message": {"role": "assistant", "content": words.upper()}}]}
        return JSONResponse(answer)

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    daemon = monitor_setup["daemon"]
    app.add_middleware(MonitorMiddleware, daemon_url=daemon.url, models={"digits-chat": "text"})
    with TestClient(app) as http:
        reply = http.post(
            "/v1/chat/completions",
            json={"model": "digits-chat", "messages": [{"role": "user", "content": "ok then"}]},
        )
        assert reply.json()["choices"][0]["message"]["content"] == "OK THEN"
    [event] = _events(daemon, "digits-chat", 1)
    assert (event["input"], event["output"]) == ("ok then", "OK THEN")


def test_a_proxy_config_names_the_bad_field(tmp_path):
    from tests.conftest import run_cli

    config = tmp_path / "monitor.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": {"a": {"modality": "text"}},
                "proxy": {"upstream": "ftp://x", "models": {"m": {"model": "nope"}}},
            }
        )
    )
    result = run_cli("monitor", "proxy", "--config", str(config))
    assert result.returncode == 2
    assert "proxy.upstream" in result.stderr and "Traceback" not in result.stderr
    config.write_text(yaml.safe_dump({"models": {"a": {"modality": "text"}}}))
    result = run_cli("monitor", "proxy", "--config", str(config))
    assert result.returncode == 2 and "proxy.upstream" in result.stderr
