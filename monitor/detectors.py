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

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from omnitune.monitor.config import DriftSection

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
    #: sequential detectors: events and seconds from the estimated change point to the alarm.
    delay_events: int | None = None
    delay_s: float | None = None
    #: sequential detectors: the statistic and threshold that fired the (latched) alarm, and when
    fired_score: float | None = None
    fired_threshold: float | None = None
    fired_at: float | None = None


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
@dataclass(frozen=True)
class Detector:
    """A windowed test as the monitor runs it: which features it applies to (`kind`, the side
    of the reference they are on) and how the drift settings configure it. `run` takes the
    reference (a `ScalarReference`, the reference embeddings or category counts), the window's
    values, the `drift` config section, the test's alpha (1.0: effect size only) and the
    corrected per-feature alpha (which sets how many permutations a permutation test needs)."""

    name: str
    kind: str
    run: Callable[[Any, Sequence[Any], DriftSection, float, float], DriftResult]


def _scalars(values: Sequence[Any]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _embeddings(values: Sequence[Any]) -> np.ndarray:
    return np.asarray([v for v in values if isinstance(v, list)], dtype=np.float64)


#: The windowed tests, by name: drift.scalar_test and drift.material name scalar ones; each
#: categorical and embedding feature is tested by the one test of its kind.
DETECTORS: dict[str, Detector] = {
    detector.name: detector
    for detector in (
        Detector(
            "psi",
            "scalar",
            lambda ref, values, cfg, alpha, each: psi(
                ref, _scalars(values), cfg.psi_threshold, cfg.psi_warning
            ),
        ),
        Detector(
            "ks",
            "scalar",
            lambda ref, values, cfg, alpha, each: ks(
                ref, _scalars(values), cfg.ks_min_effect, alpha
            ),
        ),
        Detector(
            "wasserstein",
            "scalar",
            lambda ref, values, cfg, alpha, each: wasserstein(
                ref, _scalars(values), cfg.wasserstein_threshold
            ),
        ),
        Detector(
            "chi2",
            "categorical",
            lambda ref, values, cfg, alpha, each: categorical(
                ref, [str(v) for v in values], cfg.js_threshold, alpha
            ),
        ),
        Detector(
            "mmd",
            "embedding",
            lambda ref, values, cfg, alpha, each: mmd(
                ref,
                _embeddings(values),
                alpha,
                # Enough permutations that the corrected alpha is reachable at all.
                permutations=max(cfg.mmd_permutations, math.ceil(2 / each)),
                max_samples=cfg.mmd_max_samples,
            ),
        ),
    )
}


def detectors_of(kind: str) -> list[Detector]:
    """The registered windowed tests for features of `kind`, in registration order."""
    return [d for d in DETECTORS.values() if d.kind == kind]


def describe(result: DriftResult) -> dict[str, Any]:
    return {
        "test": result.test,
        "score": round(result.score, 6),
        "threshold": round(result.threshold, 6),
        "drifted": result.drifted,
        "warning": result.warning,
        "p_value": None if result.p_value is None else float(f"{result.p_value:.6g}"),
        "delay_events": result.delay_events,
        "delay_s": None if result.delay_s is None else round(result.delay_s, 3),
        "fired_score": None if result.fired_score is None else round(result.fired_score, 6),
        "fired_threshold": (
            None if result.fired_threshold is None else round(result.fired_threshold, 6)
        ),
        "fired_at": result.fired_at,
    }


# Online statistics ---------------------------------------------------------------------------
#
# The sequential detector (`omnitune.monitor.sequential`) sees a feature as a stream of blocks
# of a few events. Each statistic turns an event's value into a fixed-length contribution
# vector, so a window's evidence is the sum of its blocks' vectors: adding an event costs O(1),
# and a simulated null stream needs no per-event work at all (`simulate_blocks` draws the block
# sums directly). Thresholds come from those simulations (`omnitune.monitor.calibration`).


class OnlineStatistic:
    """A statistic of a window's summed contributions; larger means further from reference."""

    test: str = ""
    width: int = 0

    def contributions(self, values: Sequence[Any]) -> np.ndarray:
        raise NotImplementedError

    def statistic(self, sums: np.ndarray, n: int) -> np.ndarray:
        """The statistic of windows whose contribution sums are the rows of `sums`."""
        raise NotImplementedError

    def simulate_blocks(
        self, rng: np.random.Generator, blocks: int, block: int, segments: int
    ) -> np.ndarray:
        """Block sums of a stream drawn from the reference's distribution.

        The stream is cut into `segments`, each drawn from a distribution re-sampled from the
        reference's own uncertainty: live traffic comes from the true distribution, which
        differs from a finite reference, and a threshold calibrated on the reference alone
        would alarm too often."""
        raise NotImplementedError

    def change_score(self, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Log-likelihood-ratio-like evidence that the events of each segment differ from the
        reference (the argmax over segment starts estimates the change point)."""
        raise NotImplementedError


class BinnedCramerVonMises(OnlineStatistic):
    """Cramer-von Mises distance over the reference's quantile bins.

    Binning makes the window's ECDF a running count per bin, so the statistic is updated per
    event instead of re-sorting the window; with 16 bins it keeps a CvM test's power against
    shifts of location and scale. Values outside the reference's range have bins of their own."""

    test = "cvm"

    def __init__(self, values: np.ndarray, bins: int = 16) -> None:
        fitted = ScalarReference.fit(values, bins)
        self.edges = fitted.edges
        self.width = len(self.edges) + 1
        counts = np.bincount(
            np.searchsorted(self.edges, fitted.values, side="right"), minlength=self.width
        ).astype(np.float64)
        self.prior = counts + 0.5
        self.probabilities = self.prior / self.prior.sum()
        cumulative = np.cumsum(self.probabilities)[:-1]
        weights = self.probabilities[:-1]
        # n * sum_k w_k (S_k / n - c_k)^2 with S = A s (A: the cumulative-sum matrix) is a
        # quadratic form in the bin counts s: (s' M s) / n - 2 s'v + n k, one matrix product
        # instead of a cumulative sum per window (calibration evaluates millions of windows).
        below = np.tril(np.ones((self.width - 1, self.width)))
        self.form = below.T @ (weights[:, None] * below)
        self.linear = below.T @ (weights * cumulative)
        self.constant = float(np.sum(weights * cumulative**2))

    def contributions(self, values: Sequence[Any]) -> np.ndarray:
        bins = np.searchsorted(self.edges, np.asarray(values, dtype=np.float64), side="right")
        out = np.zeros((len(bins), self.width), dtype=np.float64)
        out[np.arange(len(bins)), bins] = 1.0
        return out

    def statistic(self, sums: np.ndarray, n: int) -> np.ndarray:
        quadratic = np.einsum("...i,...i->...", sums @ self.form, sums)
        return quadratic / n - 2.0 * (sums @ self.linear) + n * self.constant

    def simulate_blocks(
        self, rng: np.random.Generator, blocks: int, block: int, segments: int
    ) -> np.ndarray:
        out = np.empty((blocks, self.width))
        for part in np.array_split(np.arange(blocks), segments):
            edges = np.cumsum(rng.dirichlet(self.prior))[:-1]
            bins = np.searchsorted(edges, rng.random((len(part), block)), side="right")
            rows = np.arange(len(part))[:, None] * self.width
            counts = np.bincount((rows + bins).ravel(), minlength=len(part) * self.width)
            out[part] = counts.reshape(len(part), self.width)
        return out

    def change_score(self, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        shares = sums / np.maximum(counts, 1)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(sums > 0, sums * np.log(shares / self.probabilities), 0.0)
        return terms.sum(axis=1)


class CategoricalChiSquared(BinnedCramerVonMises):
    """Pearson's chi-squared over the reference's categories plus one bin for unseen ones."""

    test = "chi2"

    def __init__(self, counts: Mapping[str, int]) -> None:
        self.names = sorted(counts)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.width = len(self.names) + 1
        self.prior = np.array([counts[n] for n in self.names] + [0], dtype=np.float64) + 0.5
        self.probabilities = self.prior / self.prior.sum()

    def contributions(self, values: Sequence[Any]) -> np.ndarray:
        out = np.zeros((len(values), self.width), dtype=np.float64)
        unseen = self.width - 1
        out[np.arange(len(values)), [self.index.get(str(v), unseen) for v in values]] = 1.0
        return out

    def statistic(self, sums: np.ndarray, n: int) -> np.ndarray:
        expected = n * self.probabilities
        return np.sum((sums - expected) ** 2 / expected, axis=-1)


class FourierMMD(OnlineStatistic):
    """Online maximum mean discrepancy through random Fourier features.

    With features phi whose inner products approximate the RBF kernel (bandwidth by the median
    heuristic, as in `mmd`), MMD^2 of a window is the squared distance between its mean feature
    vector and the reference's, so a window's evidence is again a running sum."""

    test = "mmd"

    def __init__(self, reference: np.ndarray, features: int = 64, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        matrix = np.asarray(reference, dtype=np.float64)
        pairs = rng.integers(len(matrix), size=(2, 4000))
        pairs = pairs[:, pairs[0] != pairs[1]]
        squared = np.sum((matrix[pairs[0]] - matrix[pairs[1]]) ** 2, axis=1)
        bandwidth = float(np.median(squared)) or 1.0  # kernel exp(-d^2 / bandwidth)
        self.frequencies = rng.normal(0.0, np.sqrt(2.0 / bandwidth), (matrix.shape[1], features))
        self.phases = rng.uniform(0, 2 * np.pi, features)
        self.width = features
        self.dimension = matrix.shape[1]
        self.pool = self.contributions(matrix)
        self.mean = self.pool.mean(axis=0)
        self.centered = self.pool - self.mean

    def contributions(self, values: Sequence[Any]) -> np.ndarray:
        matrix = np.asarray(values, dtype=np.float64).reshape(-1, self.dimension)
        return np.sqrt(2.0 / self.width) * np.cos(matrix @ self.frequencies + self.phases)

    def statistic(self, sums: np.ndarray, n: int) -> np.ndarray:
        return np.sum((sums / n - self.mean) ** 2, axis=-1)

    def simulate_blocks(
        self, rng: np.random.Generator, blocks: int, block: int, segments: int
    ) -> np.ndarray:
        # Each segment's distribution is the reference moved by a draw of the reference mean's
        # own sampling error (covariance / N): resampling the reference alone would pretend
        # its mean is the truth.
        size = len(self.pool)
        out = np.empty((blocks, self.width))
        for part in np.array_split(np.arange(blocks), segments):
            offset = self.centered.T @ rng.standard_normal(size) / size
            for chunk in np.array_split(part, max(1, len(part) * block // 200_000 + 1)):
                draws = rng.integers(size, size=(len(chunk), block))
                out[chunk] = self.pool[draws].sum(axis=1) + block * offset
        return out

    def change_score(self, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        n = np.maximum(counts, 1)
        return n * np.sum((sums / n[:, None] - self.mean) ** 2, axis=1)


#: online statistic per feature kind; the sequential detector builds one per tracked feature.
ONLINE_DETECTORS: dict[str, Callable[..., OnlineStatistic]] = {
    "scalar": BinnedCramerVonMises,
    "categorical": CategoricalChiSquared,
    "embedding": FourierMMD,
}
