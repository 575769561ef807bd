"""Turning the daemon's events and status, and training runs, into tables the pages plot.

Pure pandas: no Streamlit here, so each function is tested on its own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd


def events_frame(events: list[dict[str, Any]]) -> pd.DataFrame:
    columns = ["id", "ts", "model", "adapter", "latency_s", "error", "flags"]
    if not events:
        return pd.DataFrame(columns=[*columns, "time"])
    frame = pd.DataFrame([{c: e.get(c) for c in columns} for e in events])
    frame["time"] = pd.to_datetime(frame["ts"], unit="s")
    frame["error"] = frame["error"].fillna(False).astype(bool)
    return frame


def traffic_over_time(
    frame: pd.DataFrame, bucket: str = "10s", now: float | None = None
) -> pd.DataFrame:
    """Per model/adapter and time bucket: requests/s, error rate, latency p50/p95/p99.

    The newest bucket is still filling: its requests are divided by the seconds it has
    covered up to `now` (default: the clock), not by the whole bucket, or every chart of live
    traffic would end in a dip to a fraction of the real rate."""
    if frame.empty:
        return pd.DataFrame(
            columns=[
                "time",
                "model",
                "adapter",
                "requests_per_s",
                "error_rate",
                "p50",
                "p95",
                "p99",
            ]
        )
    seconds = pd.Timedelta(bucket).total_seconds()
    grouped = frame.groupby(["model", "adapter", pd.Grouper(key="time", freq=bucket)])
    table = grouped.agg(
        requests=("id", "count"),
        errors=("error", "sum"),
        p50=("latency_s", lambda s: s.quantile(0.5)),
        p95=("latency_s", lambda s: s.quantile(0.95)),
        p99=("latency_s", lambda s: s.quantile(0.99)),
    ).reset_index()
    current = pd.Timestamp(time.time() if now is None else now, unit="s")
    ends = (table["time"] + pd.Timedelta(bucket)).clip(upper=current)
    covered = (ends - table["time"]).dt.total_seconds()
    # Events stamped after `now` (a clock ahead of this one) count over the whole bucket.
    covered = covered.where(covered > 0, seconds).clip(lower=1.0)
    table["requests_per_s"] = table["requests"] / covered
    table["error_rate"] = table["errors"] / table["requests"]
    return table


def safety_over_time(frame: pd.DataFrame, bucket: str = "10s") -> pd.DataFrame:
    """Per model, category@side and time bucket: the share of events flagged."""
    if frame.empty:
        return pd.DataFrame(columns=["time", "model", "flag", "rate"])
    totals = frame.groupby(["model", pd.Grouper(key="time", freq=bucket)])["id"].count()
    exploded = frame.explode("flags").dropna(subset=["flags"])
    if exploded.empty:
        return pd.DataFrame(columns=["time", "model", "flag", "rate"])
    counts = exploded.groupby(["model", pd.Grouper(key="time", freq=bucket), "flags"])["id"].count()
    table = counts.reset_index().rename(columns={"flags": "flag", "id": "flagged"})
    table["total"] = [totals[(m, t)] for m, t in zip(table["model"], table["time"], strict=True)]
    table["rate"] = table["flagged"] / table["total"]
    return table


DRIFT_NOW_COLUMNS = [
    "model",
    "feature",
    "test",
    "score",
    "threshold",
    "drifted",
    "warning",
    "delay_events",
    "delay_s",
    "since",
]


def drift_table(status: dict[str, Any]) -> pd.DataFrame:
    """One row per model and feature: the deciding test's score, threshold, state (drifted, or a
    warning: a calibrated alarm below the materiality gate), the alarm's detection delay in
    events and seconds from the estimated change point, and since when it drifts."""
    rows = []
    for model, state in status.get("models", {}).items():
        for feature, drift in state.get("drift", {}).items():
            decision = drift["decision"]
            rows.append(
                {
                    "model": model,
                    "feature": feature,
                    "test": decision["test"],
                    "score": decision["score"],
                    "threshold": decision["threshold"],
                    "drifted": decision["drifted"],
                    "warning": decision.get("warning", False),
                    "delay_events": decision.get("delay_events"),
                    "delay_s": decision.get("delay_s"),
                    "since": pd.to_datetime(drift["since"], unit="s").round("s")
                    if drift["since"]
                    else None,
                }
            )
    return pd.DataFrame(rows, columns=DRIFT_NOW_COLUMNS)


def drift_history_frame(history: dict[str, Any]) -> pd.DataFrame:
    """The daemon's GET /v1/drift answer as rows of time, feature, test, score, threshold."""
    frames = [
        pd.DataFrame(series).assign(feature=feature)
        for feature, series in history.get("features", {}).items()
    ]
    if not frames:
        return pd.DataFrame(columns=DRIFT_COLUMNS)
    frame = pd.concat(frames, ignore_index=True)
    frame["model"] = history["model"]
    frame["time"] = pd.to_datetime(frame["ts"], unit="s")
    frame["ratio"] = frame["score"] / frame["threshold"]
    return frame[DRIFT_COLUMNS]


DRIFT_COLUMNS = ["time", "model", "feature", "test", "score", "threshold", "ratio"]


def prometheus_frame(result: list[dict[str, Any]], name: str = "value") -> pd.DataFrame:
    """A PromQL range (matrix) answer as long rows: time, one column per label, `name`."""
    rows = [
        {**series["metric"], "time": float(ts), name: float(value)}
        for series in result
        for ts, value in series["values"]
    ]
    if not rows:
        return pd.DataFrame(columns=["time", name])
    frame = pd.DataFrame(rows)
    frame["time"] = pd.to_datetime(frame["time"], unit="s")
    frame[name] = frame[name].replace([float("inf"), float("-inf")], float("nan"))
    return frame


def first_to_drift(drifted: pd.DataFrame) -> pd.DataFrame:
    """Per model and feature, the earliest time in `drifted` (rows of time, model, feature at
    which the feature was found drifting), earliest first: columns model, feature, since."""
    if drifted.empty:
        return pd.DataFrame(columns=["model", "feature", "since"])
    first = drifted.groupby(["model", "feature"], as_index=False)["time"].min()
    return first.rename(columns={"time": "since"}).sort_values("since", ignore_index=True)


def projection(reference: list[list[float]], current: list[list[float]]) -> pd.DataFrame:
    """Reference and current embeddings on the first two principal components of both.

    The components are fit on the two samples pooled: a shift between them adds variance
    along the direction it moved, so that direction is among the two shown. Components of
    the reference alone can miss it entirely when the reference varies more elsewhere.
    """
    from sklearn.decomposition import PCA

    fitted = PCA(n_components=2).fit([*reference, *current])
    frames = [
        pd.DataFrame(fitted.transform(values), columns=["pc1", "pc2"]).assign(sample=sample)
        for sample, values in (("reference", reference), ("current", current))
        if len(values)
    ]
    return pd.concat(frames, ignore_index=True)


def run_metrics(run_dir: Path) -> pd.DataFrame:
    """A training run's metrics.jsonl as a table (kind: train or eval)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return pd.DataFrame()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows)


def find_runs(root: Path) -> list[Path]:
    """Folders under `root` (any depth up to 3) holding a metrics.jsonl, newest first."""
    found = [p.parent for p in root.glob("**/metrics.jsonl") if len(p.relative_to(root).parts) <= 4]
    return sorted(found, key=lambda p: p.joinpath("metrics.jsonl").stat().st_mtime, reverse=True)


# The loop's registry (written by `omnitune loop promote`; read here as plain JSON) -----------

GATE_COLUMNS = ["slice", "metric", "deciding", "champion", "challenger", "gain", "low", "high"]
COMPARE_COLUMNS = [
    "version",
    "events",
    "error_rate",
    "flagged_rate",
    "p50_s",
    "p95_s",
    "feedback",
    "mean_score",
]


def registry_models(root: Path) -> list[str]:
    """Models with a versions.json under the registry folder `root`."""
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob("*/versions.json"))


def registry_state(root: Path, model: str) -> dict[str, Any]:
    return json.loads((root / model / "versions.json").read_text())


def versions_table(state: dict[str, Any]) -> pd.DataFrame:
    """One row per version: its state (serving, canary, withdrawn, earlier), how it got in,
    its run, and when."""
    rows = []
    for name, version in state["versions"].items():
        if name == state.get("serving"):
            status = "serving"
        elif name == state.get("canary"):
            status = f"canary ({version.get('canary_share', 0):.0%})"
        elif version.get("withdrawn_at"):
            status = "withdrawn canary"
        else:
            status = "earlier"
        stamp = version.get("promoted_at") or version.get("canary_since")
        rows.append(
            {
                "version": name,
                "state": status,
                "how": version.get("how", ""),
                "run": version.get("run", ""),
                "since": pd.to_datetime(stamp, unit="s").round("s") if stamp else pd.NaT,
            }
        )
    return pd.DataFrame(rows, columns=["version", "state", "how", "run", "since"])


def gate_table(report: dict[str, Any]) -> pd.DataFrame:
    """The gate's differences, one row per slice and metric; `deciding` marks the metric
    that decided each slice."""
    rows = []
    for slice_name, part in report["slices"].items():
        for metric, difference in part["metrics"].items():
            rows.append(
                {
                    "slice": slice_name,
                    "metric": metric,
                    "deciding": metric == part["metric"],
                    **{k: difference[k] for k in ("champion", "challenger", "gain", "low", "high")},
                }
            )
    return pd.DataFrame(rows, columns=GATE_COLUMNS)


def compare_table(compared: dict[str, Any]) -> pd.DataFrame:
    """The daemon's per-version comparison (GET /v1/compare) as one row per version."""
    rows = []
    for version, entry in compared["adapters"].items():
        latency = entry.get("latency") or {}
        rows.append(
            {
                "version": version,
                "events": entry["events"],
                "error_rate": entry["error_rate"],
                "flagged_rate": entry["flagged_rate"],
                "p50_s": latency.get("p50"),
                "p95_s": latency.get("p95"),
                "feedback": entry["feedback"]["count"],
                "mean_score": entry["feedback"]["mean_score"],
            }
        )
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)
