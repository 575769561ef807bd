"""Drift detection power, false alarms and speed: omnitune's detectors against Alibi Detect's
KSDrift and MMDDrift (PyTorch backend), and against Evidently's per-column KS drift, on the
same synthetic windows.

The windows are drawn from seeded numpy generators, so both sides test identical data:
- ks: a 2,000 x 5 reference; 100 windows of 500 from the same distribution (false alarms) and
  100 with feature 0 shifted by 0.3 standard deviations (power). Both sides run a two-sample KS
  test per feature with a Bonferroni correction at alpha = 0.01; omnitune's decision also needs
  a KS distance of at least `drift.ks_min_effect` (its default, 0.05).
- mmd: a 500 x 16 reference of embeddings; 20 windows of 200 from the same distribution and 20
  shifted by 0.15 in every dimension; RBF kernel, 100 permutations, alpha = 0.05.

Alibi Detect 0.13 pins numpy < 2 and transformers < 5, so it and Evidently 0.7 run from their
own virtualenv (bench/.venv-peers, made by `make bench`), reusing the project's torch.

    python -m bench.monitor_drift --side omnitune|alibi|evidently --test ks|mmd
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

KS_FEATURES, KS_REFERENCE, KS_WINDOW, KS_WINDOWS, KS_SHIFT = 5, 2000, 500, 100, 0.3
MMD_DIM, MMD_REFERENCE, MMD_WINDOW, MMD_WINDOWS, MMD_SHIFT = 16, 500, 200, 20, 0.15


def ks_data() -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, (KS_REFERENCE, KS_FEATURES))
    null = [rng.normal(0, 1, (KS_WINDOW, KS_FEATURES)) for _ in range(KS_WINDOWS)]
    shifted = []
    for _ in range(KS_WINDOWS):
        window = rng.normal(0, 1, (KS_WINDOW, KS_FEATURES))
        window[:, 0] += KS_SHIFT
        shifted.append(window)
    return reference, null, shifted


def mmd_data() -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 1, (MMD_REFERENCE, MMD_DIM)).astype(np.float32)
    null = [rng.normal(0, 1, (MMD_WINDOW, MMD_DIM)).astype(np.float32) for _ in range(MMD_WINDOWS)]
    shifted = [
        (rng.normal(0, 1, (MMD_WINDOW, MMD_DIM)) + MMD_SHIFT).astype(np.float32)
        for _ in range(MMD_WINDOWS)
    ]
    return reference, null, shifted


def omnitune_detector(test: str, reference: np.ndarray):
    from omnitune.monitor import detectors
    from omnitune.monitor.config import DriftSection

    min_effect = DriftSection().ks_min_effect  # the daemon's default

    if test == "ks":
        fitted = [detectors.ScalarReference.fit(reference[:, i]) for i in range(KS_FEATURES)]

        def decide(window: np.ndarray) -> bool:
            results = {
                str(i): detectors.ks(fitted[i], window[:, i], min_effect, 0.01)
                for i in range(KS_FEATURES)
            }
            return any(r.drifted for r in detectors.correct(results, "bonferroni", 0.01).values())

        return decide

    def decide_mmd(window: np.ndarray) -> bool:
        return detectors.mmd(
            reference, window, alpha=0.05, permutations=100, max_samples=MMD_REFERENCE
        ).drifted

    return decide_mmd


def alibi_detector(test: str, reference: np.ndarray):
    if test == "ks":
        from alibi_detect.cd import KSDrift

        detector = KSDrift(reference, p_val=0.01, correction="bonferroni")
    else:
        from alibi_detect.cd import MMDDrift

        detector = MMDDrift(reference, backend="pytorch", p_val=0.05, n_permutations=100)
    return lambda window: bool(detector.predict(window)["data"]["is_drift"])


def evidently_detector(test: str, reference: np.ndarray):
    """Evidently 0.7's per-column KS drift (`DriftedColumnsCount(method="ks")`) over pandas
    frames, with the p-value threshold Bonferroni-corrected by hand (alpha 0.01 / features);
    a window drifts when any column does, as on the other sides."""
    if test != "ks":
        raise SystemExit("evidently: only the ks comparison is defined")
    import pandas as pd
    from evidently import Report
    from evidently.metrics import DriftedColumnsCount

    columns = [f"f{i}" for i in range(reference.shape[1])]
    frame = pd.DataFrame(reference, columns=columns)
    report = Report([DriftedColumnsCount(method="ks", threshold=0.01 / len(columns))])

    def decide(window: np.ndarray) -> bool:
        snapshot = report.run(pd.DataFrame(window, columns=columns), frame)
        return snapshot.dict()["metrics"][0]["value"]["count"] >= 1

    return decide


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["omnitune", "alibi", "evidently"], required=True)
    parser.add_argument("--test", choices=["ks", "mmd"], required=True)
    args = parser.parse_args()
    reference, null, shifted = ks_data() if args.test == "ks" else mmd_data()
    build = {
        "omnitune": omnitune_detector,
        "alibi": alibi_detector,
        "evidently": evidently_detector,
    }[args.side]
    decide = build(args.test, reference)
    decide(null[0])  # warm-up: imports, kernels
    start = time.perf_counter()
    false_alarms = sum(decide(window) for window in null)
    detected = sum(decide(window) for window in shifted)
    elapsed = time.perf_counter() - start
    print(
        json.dumps(
            {
                "windows_per_second": (len(null) + len(shifted)) / elapsed,
                "power": detected / len(shifted),
                "false_alarm_rate": false_alarms / len(null),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
