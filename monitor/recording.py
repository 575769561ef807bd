"""What an OpenAI-compatible call becomes as a monitor event, and the thread that sends it.

The recording proxy and the ASGI middleware hand every finished call (request bytes, response
bytes, timings, status) to a `Recorder`. Its `record()` only appends to a bounded queue, so the
request path never waits on parsing, feature extraction or the daemon; a worker thread turns
the call into an event and gives it to the monitor `Client` (itself non-blocking, bounded, with
retries). A full queue drops the call and counts it, as the client does.

Parsing follows the OpenAI API: `/v1/chat/completions` (messages whose content is a string or
a list of text and image parts), `/v1/completions` (prompt), `/v1/audio/transcriptions`
(multipart upload with `file` and `model`). Streamed answers are server-sent events whose
`data:` lines carry deltas and, last, `usage`. Image parts given as data URLs and uploaded
audio are turned into the same features the training run's reference profile holds
(`image_features`, `audio_features`), so vision-language and speech drift apply to proxied
traffic. Headers are never read into an event: the Authorization header is forwarded, never
stored.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omnitune.monitor.config import ProxySection

logger = logging.getLogger("omnitune.monitor.recording")

CHAT, COMPLETIONS, TRANSCRIPTIONS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/audio/transcriptions",
)
RECORDED_PATHS = frozenset({CHAT, COMPLETIONS, TRANSCRIPTIONS})


#: The response header that carries a recorded call's event id (its `request_id`).
REQUEST_ID_HEADER = "X-Omnitune-Request-Id"


@dataclass
class Call:
    """One finished call as the proxy or middleware saw it (monotonic seconds)."""

    path: str
    request_body: bytes
    request_type: str
    started: float
    ended: float
    status: int | None = None
    response_body: bytes = b""
    response_type: str = ""
    first_token: float | None = None  # first chunk carrying generated text (streamed)
    first_byte: float | None = None
    error_class: str | None = None  # connect, timeout, protocol; 4xx/5xx from the status
    truncated: bool = False  # a body was larger than max_record_bytes: not parsed
    adapter: str | None = None  # set by a canary route: the version that served the call
    ts: float = field(default_factory=time.time)  # wall-clock start: the event's time
    #: The event's id, sent back to the caller in REQUEST_ID_HEADER so that it can give
    #: feedback on this call (POST /v1/feedback).
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class RecorderStats:
    recorded: int = 0
    dropped: int = 0  # the queue was full
    unmapped: int = 0  # no monitored model for the request's model
    unparsed: int = 0  # a body that could not be read as the API's format
    by_class: dict[str, int] = field(default_factory=dict)


class Recorder:
    """Turns calls into events off the request path and logs them through `client`."""

    def __init__(self, client: Any, section: ProxySection, modalities: dict[str, str]) -> None:
        self.client, self.section, self.modalities = client, section, modalities
        self.stats = RecorderStats()
        self._queue: queue.Queue[Call | None] = queue.Queue(maxsize=section.max_queue)
        self._scanners: list[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="omnitune-recorder", daemon=True)
        self._thread.start()

    def record(self, call: Call) -> None:
        """Queue a finished call; never blocks, never raises."""
        error = call.error_class or _status_class(call.status)
        if error is not None:
            self.stats.by_class[error] = self.stats.by_class.get(error, 0) + 1
        try:
            self._queue.put_nowait(call)
        except queue.Full:
            self.stats.dropped += 1

    def close(self, timeout_s: float = 10.0) -> None:
        """Record what is queued, then flush the client."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout=timeout_s)
        self.client.close(timeout_s)

    def _run(self) -> None:
        while (call := self._queue.get()) is not None:
            try:
                event = self.event(call)
                if event is not None:
                    self.client.log_event(event)
                    self.stats.recorded += 1
            except Exception:  # a recording bug must not stop the recorder
                logger.exception("could not record a call to %s", call.path)

    # Call -> event ----------------------------------------------------------------------------

    def event(self, call: Call) -> dict[str, Any] | None:
        """The monitor event of `call`, or None when it maps to no monitored model."""
        request = _parse_request(call, self.section.input_roles) if not call.truncated else {}
        if request is None:
            self.stats.unparsed += 1
            request = {}
        target = self._target(request.get("model"))
        if target is None:
            self.stats.unmapped += 1
            return None
        model, adapter = target
        adapter = call.adapter or adapter
        modality = self.modalities[model]
        event: dict[str, Any] = {
            "model": model,
            "request_id": call.request_id,
            "ts": call.ts,
            "latency_s": max(0.0, call.ended - call.started),
        }
        if adapter:
            event["adapter"] = adapter
        text = request.get("text", "")
        features = self._media_features(request, modality)
        kept = self._keep_media(request, modality) if features else None
        if kept is not None:
            event["input"] = {"text": self._clean(text), kept[0]: kept[1]}
        elif modality == "text" or text:
            event["input"] = self._clean(text)
        if features:
            event["features"] = features
        if call.status is not None:
            event["status"] = call.status
        error = call.error_class or _status_class(call.status)
        if error is not None:
            event["error"] = True
            event["error_class"] = error
        first = call.first_token or call.first_byte
        if first is not None:
            event["ttft_s"] = max(0.0, first - call.started)
        if error is None and not call.truncated:
            answer = _parse_answer(call)
            if answer is None:
                self.stats.unparsed += 1
            else:
                output, usage = answer
                if self.section.record_output and output is not None:
                    event["output"] = self._clean(output)
                for name in ("prompt_tokens", "completion_tokens"):
                    if isinstance(usage.get(name), int):
                        event[name] = usage[name]
        return event

    def _target(self, requested: Any) -> tuple[str, str] | None:
        routes = self.section.models
        if isinstance(requested, str) and requested in routes:
            return routes[requested].model, routes[requested].adapter
        if isinstance(requested, str) and requested in self.modalities:
            return requested, ""
        if self.section.default_model is not None:
            return self.section.default_model, ""
        return None

    def _media_features(self, request: dict[str, Any], modality: str) -> dict[str, float]:
        try:
            if modality == "vision_language" and request.get("image") is not None:
                from omnitune.modalities.vision_language.images import image_features, open_image

                return image_features(open_image(io.BytesIO(request["image"])))
            if modality == "speech" and request.get("audio") is not None:
                from omnitune.modalities.speech.audio import features_of_file

                return features_of_file(io.BytesIO(request["audio"]), 16_000)
        except Exception:  # unreadable media: recorded without its features
            self.stats.unparsed += 1
        return {}

    def _keep_media(self, request: dict[str, Any], modality: str) -> tuple[str, str] | None:
        """("image_path" | "audio_path", path) of the request's media written under
        `media_dir` (once per content), or None when no folder is set or the write fails."""
        folder = self.section.media_dir
        key = {"vision_language": "image", "speech": "audio"}.get(modality)
        data = request.get(key) if key else None
        if folder is None or not data:
            return None
        import hashlib

        path = Path(folder).resolve() / (hashlib.sha256(data).hexdigest()[:32] + _suffix(data))
        try:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
                partial.write_bytes(data)
                partial.replace(path)  # readers never see half a file
        except OSError:
            logger.exception("could not keep a request's %s under %s", key, folder)
            return None
        return f"{key}_path", str(path)

    def _clean(self, text: str) -> str:
        if not self.section.redact or not text:
            return text
        from omnitune.monitor.safety import build_scanners, redact, scan

        if self._scanners is None:
            self._scanners = build_scanners(["pii"], None)
        return redact(text, scan(text, self._scanners, "input"))


MEDIA_SUFFIXES = (
    (b"\x89PNG", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF8", ".gif"),
    (b"fLaC", ".flac"),
    (b"OggS", ".ogg"),
    (b"ID3", ".mp3"),
)


def _suffix(data: bytes) -> str:
    """The file suffix of image or audio bytes, from their magic number (readers that pick a
    decoder by suffix need it; unknown formats keep `.bin` and are sniffed by content)."""
    if data[:4] == b"RIFF" and data[8:12] in (b"WAVE", b"WEBP"):
        return ".wav" if data[8:12] == b"WAVE" else ".webp"
    return next((suffix for magic, suffix in MEDIA_SUFFIXES if data.startswith(magic)), ".bin")


def _status_class(status: int | None) -> str | None:
    if status is None or status < 400:
        return None
    return "4xx" if status < 500 else "5xx"


def _parse_request(call: Call, roles: list[str]) -> dict[str, Any] | None:
    """{"model", "text", "image" (bytes), "audio" (bytes)} of a request body, or None."""
    if call.path == TRANSCRIPTIONS:
        return _parse_upload(call.request_body, call.request_type)
    try:
        body = json.loads(call.request_body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    parsed: dict[str, Any] = {"model": body.get("model")}
    if call.path == CHAT:
        texts, image = _chat_input(body.get("messages"), roles)
        parsed["text"], parsed["image"] = "\n".join(texts), image
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = "\n".join(p for p in prompt if isinstance(p, str))
        parsed["text"] = prompt if isinstance(prompt, str) else ""
    return parsed


def _chat_input(messages: Any, roles: list[str]) -> tuple[list[str], bytes | None]:
    """The text of the messages of `roles`, and the first image part given as a data URL."""
    texts: list[str] = []
    image: bytes | None = None
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts if isinstance(parts, list) else []:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text" and message.get("role") in roles:
                if isinstance(part.get("text"), str):
                    texts.append(part["text"])
            elif part.get("type") == "image_url" and image is None:
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                image = _data_url_bytes(url)
    return texts, image


def _data_url_bytes(url: Any) -> bytes | None:
    """The bytes of a `data:<type>;base64,<data>` URL (remote URLs are not fetched)."""
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        return None
    try:
        return base64.b64decode(url.split(";base64,", 1)[1], validate=False)
    except (binascii.Error, ValueError):
        return None


def _parse_upload(body: bytes, content_type: str) -> dict[str, Any] | None:
    """model, prompt and the `file` bytes of a multipart/form-data transcription request
    (parsed with the standard library's MIME parser)."""
    import email
    import email.policy

    if not content_type.lower().startswith("multipart/form-data"):
        return None
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body,
        policy=email.policy.HTTP,
    )
    if not message.is_multipart():
        return None
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            fields[name] = part.get_payload(decode=True) or b""
    model, prompt = fields.get("model"), fields.get("prompt")
    return {
        "model": model.decode(errors="replace") if model is not None else None,
        "audio": fields.get("file"),
        "text": prompt.decode(errors="replace") if prompt is not None else "",
    }


def _parse_answer(call: Call) -> tuple[str | None, dict[str, Any]] | None:
    """(generated text, usage) of a response body, streamed or not; None when unreadable."""
    body = call.response_body
    if "text/event-stream" in call.response_type:
        return _parse_stream(body)
    if call.path == TRANSCRIPTIONS and "json" not in call.response_type:
        return body.decode(errors="replace").strip(), {}  # response_format text, srt, vtt
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(answer, dict):
        return None
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    if call.path == TRANSCRIPTIONS:
        return (answer.get("text") if isinstance(answer.get("text"), str) else None), usage
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None, usage
    choice = choices[0]
    if call.path == CHAT:
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        return (content if isinstance(content, str) else None), usage
    return (choice.get("text") if isinstance(choice.get("text"), str) else None), usage


def _parse_stream(body: bytes) -> tuple[str | None, dict[str, Any]]:
    pieces: list[str] = []
    usage: dict[str, Any] = {}
    for line in body.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]" or not data:
            continue
        try:
            chunk = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(chunk, dict):
            continue
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        pieces.append(chunk_text(chunk))
    return "".join(pieces), usage


def chunk_text(chunk: dict[str, Any]) -> str:
    """The generated text one streamed chunk carries ('' for role-only or final chunks)."""
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict) and isinstance(delta.get("content"), str):
        return delta["content"]
    return choice["text"] if isinstance(choice.get("text"), str) else ""
