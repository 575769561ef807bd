"""The closed loop's settings: the `loop` section (how a challenger is retuned) and the `gate`
section (what it must show to be promoted). Given as `loop.key=value` / `gate.key=value` on
the command line, or in a YAML file with `--settings`; everything else on a `loop retune`
line overrides the challenger's run config."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from omnitune.core.configio import Section, apply_overrides, read_yaml, validate


class LoopSection(Section):
    replay_ratio: float = Field(
        0.5,
        ge=0.0,
        le=0.95,
        description=(
            "Share of the challenger's training rows replayed from the champion's own training "
            "data (seeded sample); replay guards against forgetting what the champion knew. "
            "0: labelled captures only."
        ),
    )
    replay_data: str | None = Field(
        None,
        description="Data to replay (default: the champion's data.train); it must be in the "
        "challenger objective's format.",
    )
    start: Literal["adapter", "base"] = Field(
        "adapter",
        description="Start the challenger from the champion's adapter (continued training) or "
        "from the base model (a fresh adapter).",
    )
    min_labels: int = Field(
        20, ge=1, description="Labelled training rows needed before a retune runs."
    )
    seed: int = Field(0, ge=0, description="Seeds the replay sample.")


class GateSection(Section):
    metric: str | None = Field(
        None,
        description="The metric that decides (default: the challenger's selection metric: "
        "eval.early_stopping_metric or its objective's first, e.g. loss, wer, vqa_accuracy, "
        "reward_accuracy); perplexity is read from the per-example losses.",
    )
    min_gain: float = Field(
        0.0,
        ge=0.0,
        description="What the capture slice's gain must exceed, in the metric's units, at the "
        "lower end of the confidence interval (0: a gain that is shown at all).",
    )
    max_regression: float = Field(
        0.05,
        ge=0.0,
        description="How much the original slice may get worse (measured difference), in the "
        "metric's units.",
    )
    confidence: float = Field(
        0.9, gt=0.5, lt=1.0, description="Two-sided confidence of the bootstrap intervals."
    )
    resamples: int = Field(2000, ge=100, le=100_000, description="Bootstrap resamples.")
    seed: int = Field(0, ge=0, description="Seeds the bootstrap.")


class WatchedModel(Section):
    daemon: str = Field(
        description="the monitor daemon's URL: labels are exported from it, references go to it"
    )
    registry: str = Field("registry", description="the registry folder of the model's versions")
    champion: str | None = Field(
        None, description="the serving run while the registry has no version yet"
    )
    proxy: str | None = Field(
        None, description="the recording proxy's URL, to route the canary (none: no canary)"
    )
    canary_share: float = Field(0.1, gt=0.0, le=1.0, description="share of calls to a canary")
    canary_upstream: str | None = Field(
        None, description="where the canary is served (an upstream serving the challenger)"
    )
    canary_served_as: str | None = Field(
        None, description="the model name the upstream serves the challenger's adapter as"
    )
    overrides: list[str] = Field(
        default_factory=list,
        description="overrides of the challenger's run config (e.g. train.max_steps=40)",
    )


class WatchSection(Section):
    host: str = Field("127.0.0.1", description="where `omnitune loop watch` listens")
    port: int = Field(9110, ge=0, le=65535, description="its port (0: a free one)")
    alerts: list[str] = Field(
        ["OmnituneInputDrift"], description="alert names that start a round for their model"
    )
    promote: Literal["canary", "full"] = Field(
        "canary",
        description="what a passing gate leads to: a canary (a person promotes it in full), "
        "or a full promotion",
    )
    workdir: str = Field("runs/loop", description="where each round's labels and runs go")
    poll_s: float = Field(30.0, gt=0, description="how often to re-export while labels are few")
    max_wait_s: float = Field(
        3600.0, gt=0, description="give a round up when loop.min_labels are not there by then"
    )
    models: dict[str, WatchedModel] = Field(
        default_factory=dict, description="the monitored models a round may retune"
    )


class LoopSettings(Section):
    loop: LoopSection = Field(default_factory=LoopSection)
    gate: GateSection = Field(default_factory=GateSection)
    watch: WatchSection = Field(default_factory=WatchSection)


SECTIONS = ("loop", "gate", "watch")


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(loop/gate overrides, the rest): the rest override the challenger's run config."""
    ours = [o for o in overrides if o.split("=", 1)[0].split(".", 1)[0] in SECTIONS]
    return ours, [o for o in overrides if o not in ours]


def load_settings(path: str | Path | None, overrides: list[str]) -> LoopSettings:
    """The settings from `path` (optional YAML with `loop:` and `gate:`) and the overrides;
    errors name the field (`gate.min_gain: ...`)."""
    data = read_yaml(path) if path else {}
    source = str(path) if path else "loop settings"
    return validate(LoopSettings, apply_overrides(data, overrides), source=source)
