"""Calibrated online drift detection: omnitune's sequential detector against Alibi Detect's
online detectors (CVMDriftOnline, MMDDriftOnline with the PyTorch backend), and against the
daemon's previous default (the windowed PSI / permutation-MMD re-test), on the same streams.

Each of `REFERENCES` references is drawn from N(0, I) (a deployment's reference is one sample
of its traffic); each side configures its detector on it once (Alibi's configuration takes
minutes at this ERT, so not once per run), then runs `RUNS_PER_REFERENCE` streams from the
same distribution, the detector's state reset before each:
- run length: events to the first alarm with no drift (capped at `CAP_ERTS` x ERT), each side
  counted from where its own ERT is defined to start (omnitune: the first full largest window;
  Alibi's CVMDriftOnline: the smallest window; its MMDDriftOnline: t = 0; windowed: the
  `window.min_events`-th event). Closer to the target ERT is better.
- delay: a second stream per run whose feature 0 moves by one standard deviation after
  `CHANGE` events of its warm-up; events from the change to the alarm (runs that alarmed before
  the change are left out).
- events/s: events through the detector per second of detection work (calibration excluded;
  omnitune takes the daemon's batches of 50 events, Alibi one instance per call as its API
  does; the windowed side re-tests every 50 events, as the daemon does every interval_s).

Streams: `scalar` (5 features, reference 2,000; windows 50 and 200) and `embedding` (8-d
vectors, reference 1,000; one window of 100: Alibi's MMD takes one).

    python -m bench.monitor_online --side omnitune|alibi|windowed --stream scalar|embedding
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np

ERT, CAP_ERTS, CHANGE, BATCH = 500, 10, 100, 50
REFERENCES, RUNS_PER_REFERENCE = 6, 6
#: omnitune's drift.block_events (its default); `--block` changes it.
BLOCK_EVENTS = 10
#: Alibi's advice: bootstrap simulations "at least an order of magnitude larger than the ERT".
ALIBI_BOOTSTRAPS = 10 * ERT
STREAMS: dict[str, dict[str, Any]] = {
    "scalar": {"dim": 5, "reference": 2000, "windows": [50, 200]},
    "embedding": {"dim": 8, "reference": 1000, "windows": [100]},
}


class Side:
    """A configured detector: `start` events before its ERT is counted, `reset` starts a new
    run, `feed` returns the index (within the batch) of the first alarm or None."""

    start: int
    reset: Callable[[], None]
    feed: Callable[[np.ndarray], int | None]


def omnitune_side(stream: str, reference: np.ndarray, seed: int, block: int, ert: int) -> Side:
    from omnitune.monitor.calibration import calibrate
    from omnitune.monitor.detectors import BinnedCramerVonMises, FourierMMD
    from omnitune.monitor.sequential import SequentialDrift

    windows = STREAMS[stream]["windows"]
    if stream == "scalar":
        statistics = {
            f"x{i}": BinnedCramerVonMises(reference[:, i]) for i in range(reference.shape[1])
        }
    else:
        statistics = {"e": FourierMMD(reference, seed=seed)}
    thresholds = calibrate(statistics, windows, block, ert, seed=seed).thresholds
    state: dict[str, Any] = {}
    side = Side()
    side.start = max(windows)
    sent = [0]

    def reset() -> None:
        state["detector"] = SequentialDrift(statistics, thresholds, windows, block, dedupe=False)
        sent[0] = 0

    def feed(batch: np.ndarray) -> int | None:
        if stream == "scalar":
            rows = [{f"x{i}": float(v) for i, v in enumerate(row)} for row in batch]
        else:
            rows = [{"e": row.tolist()} for row in batch]
        stamps = [float(sent[0] + i) for i in range(len(rows))]  # the alarm's ts is its index
        sent[0] += len(rows)
        alarms = state["detector"].update(rows, stamps)
        if not alarms:
            return None
        return int(min(alarm.since_ts for _, alarm in alarms) - stamps[0])

    side.reset, side.feed = reset, feed
    return side


def alibi_side(stream: str, reference: np.ndarray, seed: int, block: int, ert: int) -> Side:
    import torch

    torch.manual_seed(seed)
    windows = STREAMS[stream]["windows"]
    if stream == "scalar":
        from alibi_detect.cd import CVMDriftOnline

        detector = CVMDriftOnline(
            reference, ert=ERT, window_sizes=windows, n_bootstraps=ALIBI_BOOTSTRAPS, verbose=False
        )
        start = min(windows)
    else:
        from alibi_detect.cd import MMDDriftOnline

        detector = MMDDriftOnline(
            reference.astype(np.float32),
            ert=ERT,
            window_size=windows[0],
            backend="pytorch",
            n_bootstraps=ALIBI_BOOTSTRAPS,
            verbose=False,
        )
        start = 0
    side = Side()
    side.start = start

    def feed(batch: np.ndarray) -> int | None:
        for i, x in enumerate(batch):
            if detector.predict(x.astype(np.float32))["data"]["is_drift"]:
                return i
        return None

    side.reset, side.feed = detector.reset_state, feed
    return side


def windowed_side(stream: str, reference: np.ndarray, seed: int, block: int, ert: int) -> Side:
    """The daemon's previous default: the newest `window.size` events re-tested every 50
    events once `window.min_events` arrived; PSI >= 0.25 for scalars, a permutation MMD test
    (Bonferroni alpha 0.01) for embeddings."""
    from omnitune.monitor import detectors
    from omnitune.monitor.config import DriftSection, WindowSection

    cfg, window = DriftSection(), WindowSection()
    fitted = [
        detectors.ScalarReference.fit(reference[:, i], cfg.psi_bins)
        for i in range(reference.shape[1])
    ]
    recent: list[np.ndarray] = []
    side = Side()
    side.start = window.min_events

    def reset() -> None:
        recent.clear()

    def drifted(current: np.ndarray) -> bool:
        if stream == "scalar":
            return any(
                detectors.psi(f, current[:, i], cfg.psi_threshold, cfg.psi_warning).drifted
                for i, f in enumerate(fitted)
            )
        result = detectors.mmd(
            reference, current, cfg.alpha, cfg.mmd_permutations, cfg.mmd_max_samples, seed
        )
        return result.drifted

    def feed(batch: np.ndarray) -> int | None:
        recent.extend(batch)
        del recent[: max(0, len(recent) - window.size)]
        if len(recent) >= window.min_events and drifted(np.asarray(recent)):
            return len(batch) - 1
        return None

    side.reset, side.feed = reset, feed
    return side


SIDES = {"omnitune": omnitune_side, "alibi": alibi_side, "windowed": windowed_side}


def run(side_name: str, stream: str, block: int = BLOCK_EVENTS, ert: int = ERT) -> dict[str, float]:
    dim, size = STREAMS[stream]["dim"], STREAMS[stream]["reference"]
    runs, delays = [], []
    configure = detect = 0.0
    events = 0
    for seed in range(REFERENCES):
        rng = np.random.default_rng([seed, 0])
        reference = rng.normal(0, 1, (size, dim))
        began = time.perf_counter()
        side = SIDES[side_name](stream, reference, seed, block, ert)
        configure += time.perf_counter() - began
        for run_index in range(2 * RUNS_PER_REFERENCE):
            shifted = run_index % 2 == 1
            rng = np.random.default_rng([seed, 1, run_index])  # the same streams on every side
            side.reset()
            change = side.start + CHANGE if shifted else None
            limit = side.start + (change or 0) + CAP_ERTS * ERT
            sent, alarm = 0, None
            while sent < limit and alarm is None:
                batch = rng.normal(0, 1, (BATCH, dim))
                if change is not None:
                    batch[max(0, change - sent) :, 0] += 1.0
                began = time.perf_counter()
                found = side.feed(batch)
                detect += time.perf_counter() - began
                events += BATCH
                if found is not None:
                    alarm = sent + found + 1
                sent += BATCH
            if not shifted:
                runs.append((alarm if alarm is not None else limit) - side.start)
            elif alarm is not None and alarm > change:
                delays.append(alarm - change)
    return {
        "events_per_second": events / detect,
        "mean_run_events": float(np.mean(runs)),
        "run_to_ert": float(np.mean(runs)) / ERT,
        "mean_delay_events": float(np.mean(delays)) if delays else float("nan"),
        "detected_runs": len(delays),
        "configure_seconds": configure / REFERENCES,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=list(SIDES), required=True)
    parser.add_argument("--stream", choices=list(STREAMS), required=True)
    parser.add_argument("--block", type=int, default=BLOCK_EVENTS, help="omnitune's block size")
    parser.add_argument(
        "--ert",
        type=int,
        default=ERT,
        help="omnitune's calibrated ERT (to compare delays at an equal measured run length; "
        "run lengths are still reported against ERT)",
    )
    args = parser.parse_args()
    print(json.dumps(run(args.side, args.stream, args.block, args.ert)))


if __name__ == "__main__":
    main()
