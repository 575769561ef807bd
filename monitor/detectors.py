"""Drift detectors: fit on reference values, score a current window, return the evidence.

Pure functions of arrays (numpy and scipy): no I/O, no globals, so each is tested on synthetic
data whose answer is known. Every test returns a `DriftResult` with its score, the threshold the
score is compared with, and a p-value where the test has one; `correct()` then adjusts a model's
p-values for the number of features tested (Bonferroni or Benjamini-Hochberg).

Decisions rest on effect sizes, not p-values alone: with windows of thousands of events a KS or
chi-squared test calls trivial shifts significant, the most common false alarm of drift tools.
So KS needs both a significant (corrected) p-value and a distance of at least `ks_min_effect`,
chi-squared a Jensen-Shannon distance of at least `js_threshold`, and PSI and Wasserstein are
effect sizes compared with fixed bands.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: PSI's floor for an empty bin, so that log(0) never happens (the usual 1e-4).
PSI_EPSILON = 1e-4


@dataclass(frozen=True)
class DriftResult:
    test: str
    score: float
    threshold: float
    drifted: bool
    p_value: float | None = None
    warning: bool = False


@dataclass(frozen=True)
class ScalarReference:
    values: np.ndarray  # sorted
    edges: np.ndarray  # inner bin edges (reference quantiles)
    proportions: np.ndarray
    std: float

    @classmethod
    def fit(cls, values: Sequence[float] | np.ndarray, bins: int = 10) -> ScalarReference:
        array = np.sort(np.asarray(values, dtype=np.float64))
        if array.size == 0:
            raise ValueError("a reference needs at least one value")
        # Inner quantile edges, plus the reference's range, so that values below its minimum or
        # above its maximum land in bins of their own (a feature that was constant in training,
        # such as an all-zero ratio, would otherwise share one bin with anything).
        inner = np.quantile(array, np.linspace(0, 1, bins + 1)[1:-1])
        edges = np.unique([array[0], *inner, np.nextafter(array[-1], np.inf)])
        counts = np.bincount(np.searchsorted(edges, array, side="right"), minlength=len(edges) + 1)
        std = float(array.std())
        if std == 0.0:
            std = max(abs(float(array[0])) * 1e-3, 1e-9)
        return cls(array, edges, counts / counts.sum(), std)


def psi(
    reference: ScalarReference, current: np.ndarray, threshold: float, warning: float
) -> DriftResult:
    """Population stability index over the reference's quantile bins (0.1 / 0.25 bands)."""
    bins = np.searchsorted(reference.edges, current, side="right")
    counts = np.bincount(bins, minlength=len(reference.edges) + 1)
    expected = np.maximum(reference.proportions, PSI_EPSILON)
    actual = np.maximum(counts / max(1, counts.sum()), PSI_EPSILON)
    score = float(np.sum((actual - expected) * np.log(actual / expected)))
    return DriftResult("psi", score, threshold, score >= threshold, warning=score >= warning)


def ks(
    reference: ScalarReference, current: np.ndarray, min_effect: float, alpha: float
) -> DriftResult:
    """Two-sample Kolmogorov-Smirnov with the asymptotic p-value (corrected later across a
    model's features); drift also needs a distance of at least `min_effect`.

    The reference is sorted once at fit time, so a test costs one sort of the window and four
    binary searches of its values; scipy's ks_2samp spends half a millisecond in its p-value
    (kstwo.sf) alone."""
    from scipy.special import kolmogorov

    window = np.sort(np.asarray(current, dtype=np.float64))
    n, m = window.size, reference.values.size
    if n == 0:
        return DriftResult("ks", 0.0, min_effect, False, 1.0)
    # Between two window values the window's ECDF is flat and the reference's rises, so the
    # largest gaps sit just below a window value (reference ahead) or at one (window ahead).
    reference_ahead = (
        np.searchsorted(reference.values, window, side="left") / m
        - np.searchsorted(window, window, side="left") / n
    )
    window_ahead = (
        np.searchsorted(window, window, side="right") / n
        - np.searchsorted(reference.values, window, side="right") / m
    )
    score = float(max(reference_ahead.max(), window_ahead.max(), 0.0))
    p_value = float(kolmogorov(np.sqrt(n * m / (n + m)) * score))
    return DriftResult("ks", score, min_effect, score >= min_effect and p_value < alpha, p_value)


def wasserstein(reference: ScalarReference, current: np.ndarray, threshold: float) -> DriftResult:
    """Earth mover's distance in units of the reference's standard deviation."""
    from scipy.stats import wasserstein_distance

    score = float(wasserstein_distance(reference.values, current)) / reference.std
    return DriftResult("wasserstein", score, threshold, score >= threshold)


def categorical(
    reference: Mapping[str, int], current: Sequence[str], js_threshold: float, alpha: float
) -> DriftResult:
    """Chi-squared homogeneity test with a Jensen-Shannon distance (base 2) as the effect size."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import chi2_contingency

    seen = Counter(current)
    names = sorted(set(reference) | set(seen))
    table = np.array([[reference.get(n, 0) for n in names], [seen.get(n, 0) for n in names]])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return DriftResult("chi2", 0.0, js_threshold, False, 1.0)
    p_value = float(chi2_contingency(table + 0.5).pvalue)
    distance = float(jensenshannon(table[0] / table[0].sum(), table[1] / table[1].sum(), base=2))
    return DriftResult(
        "chi2", distance, js_threshold, distance >= js_threshold and p_value < alpha, p_value
    )


def mmd(
    reference: np.ndarray,
    current: np.ndarray,
    alpha: float,
    permutations: int = 100,
    max_samples: int = 200,
    seed: int = 0,
) -> DriftResult:
    """Maximum mean discrepancy with an RBF kernel (median-heuristic bandwidth); the p-value and
    the threshold come from `permutations` random splits of the pooled samples.

    All permutations are scored at once: with the splits as columns of an indicator matrix A,
    one product K @ A gives every within- and between-sample kernel sum, instead of slicing
    the kernel matrix once per permutation."""
    rng = np.random.default_rng(seed)
    x = _subsample(np.asarray(reference, dtype=np.float64), max_samples, rng)
    y = _subsample(np.asarray(current, dtype=np.float64), max_samples, rng)
    # float32 kernel and products: the statistics are differences of sums of a few hundred
    # thousand terms in [0, 1], well inside float32's precision, at half the cost.
    pooled = np.concatenate([x, y]).astype(np.float32)
    total, m, n = len(pooled), len(x), len(y)
    squared = np.sum(pooled**2, axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * pooled @ pooled.T, 0.0)
    rows, columns = rng.integers(total, size=(2, 20_000))  # random pairs for the median
    pairs = distances[rows[rows != columns], columns[rows != columns]]
    bandwidth = float(np.median(pairs)) or 1.0
    kernel = np.exp(-distances / np.float32(bandwidth))
    splits = np.zeros((total, permutations + 1), dtype=np.float32)
    splits[:m, 0] = 1.0  # column 0: the observed split
    for column in range(1, permutations + 1):
        splits[rng.permutation(total)[:m], column] = 1.0
    row_sums = kernel.sum(axis=1, dtype=np.float64)
    grand = row_sums.sum()
    within_a = np.einsum("ij,ij->j", splits, kernel @ splits, dtype=np.float64)
    a_rows = splits.T.astype(np.float64) @ row_sums
    between = a_rows - within_a
    within_b = grand - 2 * a_rows + within_a
    diagonal = float(np.trace(kernel, dtype=np.float64)) / total  # 1 for an RBF kernel
    statistics = (
        (within_a - m * diagonal) / (m * (m - 1))
        + (within_b - n * diagonal) / (n * (n - 1))
        - 2 * between / (m * n)
    )
    observed, null = float(statistics[0]), statistics[1:]
    p_value = float((1 + np.sum(null >= observed)) / (1 + permutations))
    threshold = float(np.quantile(null, 1 - alpha))
    return DriftResult("mmd", observed, threshold, p_value < alpha, p_value)


def _subsample(array: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    if array.ndim == 1:
        array = array[:, None]
    if len(array) <= limit:
        return array
    return array[rng.choice(len(array), size=limit, replace=False)]


def correct(results: dict[str, DriftResult], method: str, alpha: float) -> dict[str, DriftResult]:
    """Re-decide the p-value tests in `results` with p-values adjusted across all of them.

    A test's decision needs its adjusted p-value below `alpha` and its effect size at or above
    its threshold (KS distance, JS distance); MMD's effect is its permutation p-value itself.
    """
    keyed = [(name, r) for name, r in results.items() if r.p_value is not None]
    if not keyed or method == "none":
        return results
    p_values = np.array([r.p_value for _, r in keyed])
    if method == "bonferroni":
        adjusted = np.minimum(1.0, p_values * len(p_values))
    else:
        from scipy.stats import false_discovery_control

        adjusted = false_discovery_control(p_values, method="bh")
    out = dict(results)
    for (name, r), p_adj in zip(keyed, adjusted.tolist(), strict=True):
        effect_ok = r.test == "mmd" or r.score >= r.threshold
        out[name] = DriftResult(
            r.test, r.score, r.threshold, effect_ok and p_adj < alpha, p_adj, r.warning
        )
    return out


#: detector name -> what it tests; the engine picks by the feature's kind and the config.
DETECTORS: dict[str, Callable[..., DriftResult]] = {
    "psi": psi,
    "ks": ks,
    "wasserstein": wasserstein,
    "chi2": categorical,
    "mmd": mmd,
}


def describe(result: DriftResult) -> dict[str, Any]:
    return {
        "test": result.test,
        "score": round(result.score, 6),
        "threshold": round(result.threshold, 6),
        "drifted": result.drifted,
        "warning": result.warning,
        "p_value": None if result.p_value is None else float(f"{result.p_value:.6g}"),
    }
