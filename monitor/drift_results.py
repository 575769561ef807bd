"""What a model's drift evaluation decides, per feature, from a snapshot of its windows.

Two methods (drift.method): `sequential`, the calibrated online detector's statistic and latched
alarm, gated by an effect size since the change point (materiality); and `windowed`, the window
re-tested with fixed thresholds and corrected across the model's features. The tests come from
`detectors.DETECTORS`, chosen by each feature's kind; the config names which scalar test decides
(drift.scalar_test) and which gates an alarm (drift.material).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from omnitune.monitor import detectors
from omnitune.monitor.config import DriftSection
from omnitune.monitor.windows import ModelState

#: Fewest events an effect size (materiality, the window's PSI/KS/Wasserstein) is computed on.
MIN_EFFECT_EVENTS = 50

Results = dict[str, dict[str, detectors.DriftResult]]
Decisions = dict[str, detectors.DriftResult]


def sequential_results(
    state: ModelState, online: dict[str, Any], snapshot: dict[str, list[Any]], cfg: DriftSection
) -> tuple[Results, Decisions]:
    """Each feature's calibrated statistic (the window nearest its threshold) and alarm; an
    alarm is drift when the shift since its change point is material, else a warning.
    `online` is the sequential detector's state, read under the monitor's lock."""
    rule = state.section.material or cfg.material
    results: Results = {}
    deciding: Decisions = {}
    for name, now_state in online.items():
        if now_state["scores"] is None:
            continue
        scores = np.asarray(now_state["scores"])
        thresholds = np.asarray(now_state["thresholds"])
        nearest = int(np.argmax(scores / thresholds))
        alarm = now_state["alarm"]
        tests = effect_sizes(state, name, snapshot[name], cfg) if name in snapshot else {}
        material = True
        if alarm is not None:
            since = snapshot.get(name, [])[-max(alarm.events_since_change, MIN_EFFECT_EVENTS) :]
            material = is_material(state, name, since, rule, cfg)
        decided = detectors.DriftResult(
            now_state["test"],
            float(scores[nearest]),
            float(thresholds[nearest]),
            alarm is not None and material,
            warning=alarm is not None and not material,
            delay_events=None if alarm is None else alarm.delay_events,
            delay_s=None if alarm is None else alarm.delay_s,
            fired_score=None if alarm is None else alarm.score,
            fired_threshold=None if alarm is None else alarm.threshold,
            fired_at=None if alarm is None else alarm.since_ts,
        )
        results[name] = {decided.test: decided, **tests}
        deciding[name] = decided
    return results, deciding


def effect_sizes(
    state: ModelState, name: str, values: list[Any], cfg: DriftSection
) -> dict[str, detectors.DriftResult]:
    """The window's effect sizes, shown beside the calibrated statistic (scalars only: the
    categorical and embedding tests' own scores are the calibrated ones)."""
    reference = state.scalar_refs.get(name)
    if reference is None or len(values) < MIN_EFFECT_EVENTS:
        return {}
    return {
        d.name: d.run(reference, values, cfg, 1.0, 1.0) for d in detectors.detectors_of("scalar")
    }


def is_material(
    state: ModelState, name: str, values: list[Any], rule: str, cfg: DriftSection
) -> bool:
    """Whether the values since the change point moved at least the rule's effect size.
    Embeddings have no effect-size gate: their calibrated alarm decides."""
    if rule == "none" or not values:
        return True
    kind = state.kind(name)
    if kind == "scalar":
        return (
            detectors.DETECTORS[rule].run(state.reference_for(name), values, cfg, 1.0, 1.0).drifted
        )
    if kind == "categorical":
        (test,) = detectors.detectors_of("categorical")
        result = test.run(state.reference_for(name), values, cfg, 1.0, 1.0)
        return result.score >= cfg.js_threshold
    return True


def windowed_results(
    state: ModelState, snapshot: dict[str, list[Any]], cfg: DriftSection, min_events: int
) -> tuple[Results, Decisions]:
    """The window re-tested with fixed thresholds, corrected across the model's features."""
    results: Results = {}
    deciding: Decisions = {}
    tested = [n for n, v in snapshot.items() if len(v) >= min_events]
    alpha_each = cfg.alpha / max(1, len(tested)) if cfg.correction == "bonferroni" else cfg.alpha
    for name in tested:
        reference = state.reference_for(name)
        tests = {
            d.name: d.run(reference, snapshot[name], cfg, cfg.alpha, alpha_each)
            for d in detectors.detectors_of(state.kind(name))
        }
        # The configured scalar test decides for scalars; other kinds have one test each.
        deciding[name] = tests.get(cfg.scalar_test) or next(iter(tests.values()))
        results[name] = tests
    return results, detectors.correct(deciding, cfg.correction, cfg.alpha)
