"""`omnitune monitor label --teacher URL --model NAME`: a stronger model labels the review queue.

Each queued event's input goes to an OpenAI-compatible endpoint (chat completions for text, a
chat with the image for vision-language, an audio transcription for speech); its answer is
stored as the event's correction, from annotator `teacher:TEACHER_MODEL`, with a score of 1
where it agrees with the model's own output and 0 where it does not. The queue holds only
events nobody has labelled, so a person's label is never overwritten and never duplicated,
and a run that is killed resumes where it stopped: what it labelled has left the queue.
"""

from __future__ import annotations

import base64
import logging
import mimetypes
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnitune.core.errors import OmnituneError
from omnitune.monitor.daemon_api import DaemonApi

logger = logging.getLogger("omnitune.monitor.teacher")

#: Events fetched from the queue per request.
BATCH = 20


@dataclass
class TeacherRun:
    labelled: int = 0
    agreed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # request_id -> reason (once each)
    seconds: float = 0.0


class Teacher:
    """The teacher endpoint: `answer(event)` is its answer to the event's input."""

    def __init__(self, url: str, model: str, key: str | None = None, timeout_s: float = 120):
        import httpx

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.model = model
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def answer(self, event: dict[str, Any]) -> str:
        raw = event.get("input")
        text = raw if isinstance(raw, str) else (raw or {}).get("text") or ""
        if event["modality"] == "speech":
            path = Path((raw or {}).get("audio_path") or "")
            with path.open("rb") as clip:
                files = {"file": (path.name, clip, mimetypes.guess_type(path.name)[0])}
                response = self.http.post(
                    "/v1/audio/transcriptions", data={"model": self.model}, files=files
                )
            return self._checked(response)["text"].strip()
        content: Any = text
        if event["modality"] == "vision_language":
            path = Path((raw or {}).get("image_path") or "")
            kind = mimetypes.guess_type(path.name)[0] or "image/png"
            image = f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"
            content = [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": image}},
            ]
        body = {"model": self.model, "messages": [{"role": "user", "content": content}]}
        response = self.http.post("/v1/chat/completions", json=body)
        return self._checked(response)["choices"][0]["message"]["content"].strip()

    @staticmethod
    def _checked(response: Any) -> dict[str, Any]:
        if response.status_code >= 400:
            raise OmnituneError(f"teacher: {response.status_code} {response.text[:300]}")
        return response.json()


def label_queue(
    daemon: DaemonApi,
    teacher: Teacher,
    model: str,
    *,
    limit: int | None = None,
    rate: float = 0.0,
) -> TeacherRun:
    """Label `model`'s queue with `teacher` until it is empty (or `limit` labels); at most
    `rate` teacher calls a second (0: no limit). An event the teacher cannot answer (a
    missing media file, a refused request) is skipped, named and left for a person."""
    run, started = TeacherRun(), time.monotonic()
    annotator = f"teacher:{teacher.model}"
    while limit is None or run.labelled < limit:
        queue = daemon.get("/v1/review", model=model, limit=BATCH + len(run.skipped))
        todo = [e for e in queue["events"] if e["request_id"] not in run.skipped]
        if not todo:
            break
        for event in todo[: BATCH if limit is None else min(BATCH, limit - run.labelled)]:
            called = time.monotonic()
            try:
                answer = teacher.answer(event)
            except (OSError, OmnituneError, KeyError, ValueError) as exc:
                run.skipped[event["request_id"]] = str(exc)
                logger.info("skipped %s: %s", event["request_id"], exc)
                continue
            agrees = _normal(answer) == _normal(event.get("output") or "")
            body = {"request_id": event["request_id"], "correction": answer}
            daemon.post("/v1/feedback", {**body, "score": agrees, "annotator": annotator})
            run.labelled += 1
            run.agreed += agrees
            if rate > 0:
                time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - called)))
    run.seconds = time.monotonic() - started
    return run


def _normal(text: str) -> str:
    return " ".join(text.lower().split())
