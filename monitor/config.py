"""The monitor daemon's config: one pydantic model per section, read like every omnitune config.

`omnitune monitor serve --config configs/monitor.yaml key=value ...` loads it through
`omnitune.core.configio`, so a bad field is reported as `drift.alpha: ...` with the file
name, exactly as run configs are. Field descriptions are the reference documentation
(docs/monitor.md lists them).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from omnitune.core import configio

#: Model names become folder names (captures) and label values: no path separators, no "..".
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSection(Section):
    host: str = Field("127.0.0.1", description="bind address; loopback unless you expose it")
    port: int = Field(9108, ge=0, le=65535, description="HTTP port (0 picks a free one)")
    token: str | None = Field(
        None, description="bearer token every request but /healthz must carry (none: no auth)"
    )
    metrics_token: bool = Field(
        True,
        description="whether /metrics needs the token too (false: a Prometheus without "
        "credentials may scrape; the counters hold no request content)",
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, gt=0, description="larger POST bodies are refused with 413"
    )
    max_events_per_request: int = Field(10_000, gt=0, description="more are refused with 413")
    max_label_bytes: int = Field(
        64 * 1024,
        gt=0,
        description="a feedback correction or comment longer than this is refused with 413",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="a request body not received in full within this time is refused with 408 "
        "(a stalled or very slow client holds no connection longer)",
    )


class StoreSection(Section):
    path: Path = Field(Path("runs/monitor/events.sqlite"), description="SQLite file (WAL mode)")
    retention_days: float | None = Field(
        30.0, gt=0, description="events older than this are deleted (none: keep by age)"
    )
    max_events: int | None = Field(
        5_000_000, gt=0, description="the oldest events beyond this count are deleted"
    )
    retention_interval_s: float = Field(60.0, gt=0, description="how often retention runs")
    fsync: bool = Field(
        False, description="fsync every commit (survives power loss; a crash is survived anyway)"
    )


class ModelSection(Section):
    modality: Literal["text", "vision_language", "speech"]
    reference: Path | None = Field(
        None,
        description="the drift baseline: a run's reference.json, a run folder, or a JSONL file "
        "of reference events (for embeddings and categorical features)",
    )
    features: list[str] | None = Field(
        None, description="features to test for drift (default: all in the reference)"
    )
    material: Literal["none", "psi", "ks", "wasserstein"] | None = Field(
        None,
        description="this model's materiality gate for sequential alarms (default: drift.material)",
    )


class WindowSection(Section):
    size: int = Field(1000, ge=10, description="events per model kept for drift and latency")
    min_events: int = Field(200, ge=10, description="no drift decision before this many events")


#: The ERT when the config states neither it nor a false-alarm rate: at 10,000 calls a day,
#: about one false alarm a day (docs/monitor.md, "What a drift alarm means").
DEFAULT_EXPECTED_RUN_EVENTS = 10_000


class DriftSection(Section):
    method: Literal["sequential", "windowed"] = Field(
        "sequential",
        description="sequential: every event updates calibrated online statistics whose "
        "model-level alarm has a stated expected run length (ERT); windowed: the window is "
        "re-tested every interval_s with fixed thresholds (no stated false-alarm rate)",
    )
    expected_run_events: int | None = Field(
        None,
        ge=100,
        le=10_000_000,
        description="sequential: mean events between false alarms when nothing drifted, for "
        f"the model as a whole (default {DEFAULT_EXPECTED_RUN_EVENTS:,} unless "
        "false_alarms_per_day is set)",
    )
    false_alarms_per_day: float | None = Field(
        None,
        gt=0,
        description="sequential: the false-alarm rate instead of the ERT; needs events_per_day "
        "(ERT = events_per_day / false_alarms_per_day)",
    )
    events_per_day: float | None = Field(
        None, gt=0, description="the model's traffic, to turn false_alarms_per_day into an ERT"
    )
    windows: list[int] = Field(
        [50, 200],
        description="sequential: window sizes in events, each a multiple of block_events; small "
        "windows catch large shifts fast, large ones catch small shifts",
    )
    block_events: int = Field(
        10,
        ge=1,
        le=1000,
        description="sequential: events per block (statistics are tested once per block)",
    )
    dedupe: bool = Field(
        True,
        description="sequential: an input repeated within the largest window (a retry, one "
        "user's session) is stored and counted but not tested again",
    )
    material: Literal["none", "psi", "ks", "wasserstein"] = Field(
        "wasserstein",
        description="sequential: an alarm is drift only if the shift since its estimated "
        "change point is at least this effect size (psi_threshold, ks_min_effect or "
        "wasserstein_threshold; categorical features: js_threshold); a smaller one is a "
        "warning. none: every calibrated alarm is drift",
    )
    scalar_test: Literal["psi", "ks", "wasserstein"] = Field(
        "psi", description="the score a scalar feature's alert and gauge follow"
    )
    psi_threshold: float = Field(0.25, gt=0, description="PSI at or above this is drift")
    psi_warning: float = Field(0.1, gt=0, description="PSI band that is reported as a warning")
    psi_bins: int = Field(10, ge=3, le=100, description="reference-quantile bins for PSI")
    ks_min_effect: float = Field(
        0.05,
        gt=0,
        le=1,
        description="KS distance needed besides a significant p-value: at large windows every "
        "trivial shift is significant (0.05 is below KS's critical distance at windows of a "
        "few hundred, so it costs no power there)",
    )
    wasserstein_threshold: float = Field(
        0.3, gt=0, description="Wasserstein distance divided by the reference's standard deviation"
    )
    alpha: float = Field(0.01, gt=0, lt=1, description="family-wise (or FDR) significance level")
    correction: Literal["bonferroni", "fdr", "none"] = Field(
        "bonferroni", description="multiple-testing correction across a model's features"
    )
    js_threshold: float = Field(
        0.1, gt=0, le=1, description="Jensen-Shannon distance for categorical features"
    )
    mmd_permutations: int = Field(100, ge=20, description="permutations calibrating MMD's cut-off")
    mmd_max_samples: int = Field(150, ge=20, description="events per side MMD compares")
    interval_s: float = Field(
        2.0, gt=0, description="how often the detectors re-evaluate (windowed) or report"
    )
    history: int = Field(
        900,
        ge=1,
        le=100_000,
        description="evaluations kept per model for GET /v1/drift (900 at 2 s: 30 minutes; "
        "Prometheus keeps the long history)",
    )

    @field_validator("windows")
    @classmethod
    def _windows(cls, value: list[int]) -> list[int]:
        if not value or any(w < 2 for w in value):
            raise ValueError("must be a non-empty list of window sizes of at least 2 events")
        return sorted(set(value))

    @model_validator(mode="after")
    def _blocks(self) -> DriftSection:
        for window in self.windows:
            if window % self.block_events:
                raise ValueError(
                    f"drift.windows: {window} is not a multiple of drift.block_events "
                    f"({self.block_events})"
                )
        return self

    def run_events(self) -> int:
        """The ERT the sequential detector is calibrated to, from whichever way it was stated."""
        if self.false_alarms_per_day is not None:
            if self.expected_run_events is not None:
                raise ValueError(
                    "drift.false_alarms_per_day: set it or drift.expected_run_events, not both"
                )
            if self.events_per_day is None:
                raise ValueError(
                    "drift.events_per_day: needed with drift.false_alarms_per_day (the model's "
                    "calls per day)"
                )
            ert = round(self.events_per_day / self.false_alarms_per_day)
            if not 100 <= ert <= 10_000_000:
                raise ValueError(
                    f"drift.false_alarms_per_day: events_per_day / false_alarms_per_day = {ert} "
                    "events between false alarms, outside 100..10,000,000"
                )
            return ert
        return self.expected_run_events or DEFAULT_EXPECTED_RUN_EVENTS


class LatencySection(Section):
    buckets: list[float] = Field(
        [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        description="histogram bucket bounds in seconds",
    )
    slo_quantile: float = Field(0.95, gt=0, lt=1, description="the quantile the SLO is set on")
    slo_seconds: float | None = Field(
        1.0, gt=0, description="breach when the window's quantile exceeds this (none: no SLO)"
    )

    @field_validator("buckets")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if not value or any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("must be a non-empty list of increasing bounds")
        if value[0] <= 0:
            raise ValueError("bounds must be positive seconds")
        return value


class SafetySection(Section):
    scanners: list[str] = Field(
        ["pii", "prompt_injection", "toxicity", "refusal"],
        description="scanners to run (see omnitune.monitor.safety.SCANNERS)",
    )
    toxicity_model: str | None = Field(
        None,
        description="a local transformers text-classification model folder for toxicity "
        "(default: the shipped lexicon)",
    )
    toxicity_label: str = Field("toxic", description="the model's label that means toxic")
    toxicity_threshold: float = Field(0.5, gt=0, lt=1)
    rate_threshold: float = Field(
        0.05, gt=0, le=1, description="alert when a category's share of the window exceeds this"
    )

    @field_validator("scanners")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        from omnitune.monitor.safety import SCANNERS

        unknown = [name for name in value if name not in SCANNERS]
        if unknown:
            raise ValueError(f"unknown scanner {unknown[0]!r} (known: {', '.join(SCANNERS)})")
        return value


class CaptureSection(Section):
    dir: Path | None = Field(
        Path("runs/monitor/capture"),
        description="where captured samples become datasets (none: capture off)",
    )
    on_drift: bool = Field(True, description="capture events that arrive while a model drifts")
    on_safety: bool = Field(True, description="capture events a safety scanner flagged")
    sample_rate: float = Field(1.0, gt=0, le=1, description="share of eligible events captured")
    max_per_model: int = Field(10_000, gt=0, description="stop capturing a model past this")


class TailSection(Section):
    paths: list[Path] = Field([], description="JSONL log files whose new lines are ingested")
    poll_s: float = Field(0.5, gt=0, description="how often the files are checked")


class ProxyRoute(Section):
    model: str = Field(description="the monitored model (a key of `models`) the calls count for")
    adapter: str = Field("", max_length=200, description="the adapter version serving them")


class CanarySection(Section):
    """A share of a model's calls (or the calls that ask for it by header) served by a
    challenger: `omnitune loop promote --canary` sets it on a running proxy."""

    share: float = Field(
        0.0, ge=0.0, le=1.0, description="share of calls the canary serves (exact per 100 calls)"
    )
    upstream: str | None = Field(
        None, description="the canary's server (default: proxy.upstream, with `model` rewritten)"
    )
    model: str | None = Field(
        None,
        description="the request `model` the canary's server knows it by (e.g. a vLLM LoRA "
        "adapter's name); JSON requests only (none: unchanged)",
    )
    adapter: str = Field(
        "canary",
        min_length=1,
        max_length=200,
        description="the adapter version its calls are recorded under (e.g. v3)",
    )
    header: str = Field(
        "x-omnitune-canary",
        description="a call with this header set to 1/true goes to the canary, 0/false never",
    )

    @field_validator("upstream")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"must be http(s)://HOST[:PORT], not {url!r}")
        return url.rstrip("/") if url else url

    @model_validator(mode="after")
    def _goes_somewhere(self) -> CanarySection:
        if self.upstream is None and self.model is None:
            raise ValueError("set the canary's upstream, or the model name it is served under")
        return self


class ProxySection(Section):
    upstream: str | None = Field(
        None,
        description="the OpenAI-compatible server the proxy forwards to, http(s)://HOST:PORT "
        "(`omnitune monitor proxy --upstream` sets it too)",
    )
    host: str = Field("127.0.0.1", description="the proxy's bind address")
    port: int = Field(9109, ge=0, le=65535, description="the proxy's port (0 picks a free one)")
    daemon_url: str | None = Field(
        None,
        description="where events go (default: http://server.host:server.port, with server.token)",
    )
    models: dict[str, ProxyRoute] = Field(
        {},
        description="request `model` -> monitored model and adapter; a request model that is "
        "itself a key of `models` needs no entry",
    )
    default_model: str | None = Field(
        None,
        description="the monitored model for calls whose request model is not mapped (none: "
        "such calls are forwarded but not recorded, and counted)",
    )
    input_roles: list[Literal["system", "user", "assistant", "tool", "developer"]] = Field(
        ["user"],
        description="chat messages whose text becomes the event's input (joined by newlines)",
    )
    record_output: bool = Field(True, description="store the generated text")
    redact: bool = Field(
        False,
        description="replace PII in input and output before the event leaves the proxy (the "
        "daemon then cannot flag it; it redacts what it stores anyway)",
    )
    timeout_s: float = Field(600.0, gt=0, description="upstream read timeout (a 504 past it)")
    connect_timeout_s: float = Field(5.0, gt=0, description="upstream connect timeout")
    max_connections: int = Field(256, gt=0, description="pooled upstream connections")
    max_queue: int = Field(
        10_000, gt=0, description="calls waiting to be recorded; more are dropped and counted"
    )
    media_dir: Path | None = Field(
        None,
        description="keep each request's image or audio here, named by its content, and give "
        "the event its path, so that captured samples can be trained on (none: features only)",
    )
    canary: CanarySection | None = Field(
        None, description="route a share of calls to a challenger (none: every call upstream)"
    )
    max_record_bytes: int = Field(
        32 * 1024 * 1024,
        gt=0,
        description="request or response bodies larger than this are forwarded, not parsed",
    )

    @field_validator("upstream", "daemon_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"must be http(s)://HOST[:PORT], not {url!r}")
        return url.rstrip("/") if url else url


class MonitorConfig(Section):
    server: ServerSection = ServerSection()
    store: StoreSection = StoreSection()
    models: dict[str, ModelSection] = Field(
        ..., description="the models events may name; events for others are refused with 422"
    )
    window: WindowSection = WindowSection()
    drift: DriftSection = DriftSection()
    latency: LatencySection = LatencySection()
    safety: SafetySection = SafetySection()
    capture: CaptureSection = CaptureSection()
    tail: TailSection = TailSection()
    proxy: ProxySection = ProxySection()

    @model_validator(mode="after")
    def _consistent(self) -> MonitorConfig:
        if not self.models:
            raise ValueError("models: declare at least one model")
        for name in self.models:
            if not MODEL_NAME.fullmatch(name):
                raise ValueError(
                    f"models.{name}: a model name is letters, digits, '.', '_' and '-', starting "
                    "with a letter or digit (it names the capture folder and metric labels)"
                )
        for name, route in self.proxy.models.items():
            if route.model not in self.models:
                raise ValueError(
                    f"proxy.models.{name}.model: {route.model!r} is not a declared model "
                    f"(declared: {', '.join(sorted(self.models))})"
                )
        if self.proxy.default_model is not None and self.proxy.default_model not in self.models:
            raise ValueError(
                f"proxy.default_model: {self.proxy.default_model!r} is not a declared model"
            )
        if self.window.min_events > self.window.size:
            raise ValueError(
                f"window.min_events: {self.window.min_events} is above window.size "
                f"{self.window.size}"
            )
        if self.drift.psi_warning >= self.drift.psi_threshold:
            raise ValueError("drift.psi_warning: must be below drift.psi_threshold")
        self.drift.run_events()  # the ERT settings are consistent
        return self


def load_monitor_config(path: str | Path, overrides: list[str] | None = None) -> MonitorConfig:
    """Read, override and validate a monitor config. Relative paths are relative to the working
    directory, as in run configs."""
    return configio.load_config(MonitorConfig, path, overrides)
