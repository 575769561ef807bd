"""The event a serving process reports per inference call, and parsing request bodies into events.

A body is one JSON object, a JSON array of objects, or JSON lines. Parsing and validation happen
in pydantic-core (Rust) in one call per body, so a batch of a thousand events costs a few
milliseconds; every problem is reported with the event's index and the field's path.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

FeatureValue = float | list[float] | str


class Event(BaseModel):
    """One inference call. Only `model` is required; everything else sharpens the picture."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=100_000)

    model: str = Field(min_length=1, max_length=200, description="the model id (declared)")
    adapter: str = Field("", max_length=200, description="adapter version serving the call")
    modality: Literal["text", "vision_language", "speech"] | None = Field(
        None, description="defaults to the declared model's modality"
    )
    ts: float | None = Field(None, ge=0, description="unix seconds (default: arrival time)")
    latency_s: float | None = Field(None, ge=0, description="the call's latency in seconds")
    input: str | dict[str, Any] | None = Field(
        None, description="the prompt text, or e.g. {'text': ..., 'audio_path': ...}"
    )
    features: dict[str, FeatureValue] = Field(
        default_factory=dict,
        description="precomputed features: numbers, vectors (embeddings) or categories",
    )
    output: str | None = Field(None, description="the model's answer")
    label: str | None = Field(None, description="ground truth, when known")
    request_id: str | None = Field(
        None, max_length=200, description="repeated ids are stored once (client retries)"
    )
    error: bool = Field(False, description="the call failed")
    error_class: Literal["4xx", "5xx", "connect", "timeout", "protocol"] | None = Field(
        None,
        description="why the call failed, as the proxy saw it: the upstream's 4xx or 5xx, a "
        "refused connection, a timeout, or a broken response",
    )
    status: int | None = Field(None, ge=100, le=599, description="the HTTP status returned")
    ttft_s: float | None = Field(
        None, ge=0, description="time to the first token (streamed) or first byte, seconds"
    )
    prompt_tokens: int | None = Field(None, ge=0, description="from the answer's usage")
    completion_tokens: int | None = Field(None, ge=0, description="from the answer's usage")

    def input_text(self) -> str:
        """The textual part of the input ('' when there is none)."""
        if isinstance(self.input, str):
            return self.input
        if isinstance(self.input, dict):
            for key in ("text", "prompt", "question"):
                value = self.input.get(key)
                if isinstance(value, str):
                    return value
        return ""


EVENTS = TypeAdapter(list[Event])


class BodyError(ValueError):
    """A request body that is not valid events; the message says which event and field."""


def parse_events(body: bytes, content_type: str = "") -> list[Event]:
    """Events from a body holding one JSON object, an array, or JSON lines."""
    stripped = body.strip()
    if not stripped:
        raise BodyError("empty body: send one JSON event, a JSON array, or JSON lines")
    if stripped[:1] == b"[":
        payload, lines = stripped, None
    elif "ndjson" in content_type or "jsonl" in content_type or b"\n" in stripped:
        lines = [line for line in stripped.split(b"\n") if line.strip()]
        payload = b"[" + b",".join(lines) + b"]"
    else:
        payload, lines = b"[" + stripped + b"]", None
    try:
        return EVENTS.validate_json(payload)
    except ValidationError as exc:
        raise BodyError(describe(exc, lines is not None)) from None


def describe(exc: ValidationError, by_line: bool = False, limit: int = 5) -> str:
    """'event 3: latency_s: Input should be a finite number', at most `limit` problems."""
    problems = []
    for error in exc.errors()[:limit]:
        loc = list(error["loc"])
        if error["type"] == "json_invalid":
            problems.append(f"invalid JSON ({error['msg'].removeprefix('Invalid JSON: ')})")
            continue
        where = ""
        if loc and isinstance(loc[0], int):
            index = loc.pop(0)
            where = f"line {index + 1}: " if by_line else f"event {index}: "
        # Union members show up in the path (features.x.float); they say nothing to a user.
        loc = [p for p in loc if p not in {"float", "str", "list[float]", "dict[str,any]"}]
        field = ".".join(str(p) for p in loc)
        problems.append(f"{where}{field + ': ' if field else ''}{error['msg']}")
    more = len(exc.errors()) - limit
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")
