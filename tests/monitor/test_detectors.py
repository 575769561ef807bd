"""Drift detectors on synthetic data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from omnitune.monitor import detectors as d


@pytest.fixture
def reference() -> d.ScalarReference:
    return d.ScalarReference.fit(np.random.default_rng(0).normal(0, 1, 2000))


def test_scalar_tests_flag_a_real_shift_and_not_the_same_distribution(reference):
    rng = np.random.default_rng(1)
    same, shifted = rng.normal(0, 1, 1000), rng.normal(1.0, 1, 1000)
    assert not d.psi(reference, same, 0.25, 0.1).drifted
    assert d.psi(reference, shifted, 0.25, 0.1).drifted
    assert not d.ks(reference, same, 0.1, 0.01).drifted
    assert d.ks(reference, shifted, 0.1, 0.01).drifted
    assert not d.wasserstein(reference, same, 0.3).drifted
    result = d.wasserstein(reference, shifted, 0.3)
    assert result.drifted and result.score == pytest.approx(1.0, abs=0.15)


def test_psi_bands_follow_the_usual_cut_offs(reference):
    rng = np.random.default_rng(2)
    mild = d.psi(reference, rng.normal(0.4, 1, 5000), 0.25, 0.1)
    assert mild.warning and not mild.drifted  # 0.1 <= PSI < 0.25


def test_ks_at_large_n_needs_an_effect_not_just_a_p_value():
    rng = np.random.default_rng(3)
    reference = d.ScalarReference.fit(rng.normal(0, 1, 50_000))
    trivial = d.ks(reference, rng.normal(0.05, 1, 50_000), min_effect=0.1, alpha=0.01)
    assert trivial.p_value < 1e-6  # "significant"...
    assert not trivial.drifted  # ...but a 0.05-sigma shift is not drift


def test_constant_reference_feature_still_sees_values_outside_its_range():
    reference = d.ScalarReference.fit(np.zeros(500))
    assert d.psi(reference, np.full(300, 0.25), 0.25, 0.1).drifted
    assert not d.psi(reference, np.zeros(300), 0.25, 0.1).drifted


def test_categorical_uses_chi_squared_and_jensen_shannon():
    reference = {"en": 800, "fr": 150, "de": 50}
    same = ["en"] * 160 + ["fr"] * 30 + ["de"] * 10
    shifted = ["en"] * 60 + ["fr"] * 40 + ["ja"] * 100
    assert not d.categorical(reference, same, 0.1, 0.01).drifted
    result = d.categorical(reference, shifted, 0.1, 0.01)
    assert result.drifted and result.p_value < 1e-10


def test_mmd_permutation_threshold_separates_shifted_embeddings():
    rng = np.random.default_rng(4)
    reference = rng.normal(0, 1, (300, 16))
    assert not d.mmd(reference, rng.normal(0, 1, (200, 16)), alpha=0.05).drifted
    shifted = d.mmd(reference, rng.normal(0.4, 1, (200, 16)), alpha=0.05)
    assert shifted.drifted and shifted.score > shifted.threshold


def test_bonferroni_and_fdr_correct_across_features():
    results = {
        name: d.DriftResult("ks", 0.2, 0.1, True, p)
        for name, p in {"a": 0.004, "b": 0.02, "c": 0.5, "d": 0.001}.items()
    }
    bonferroni = d.correct(results, "bonferroni", 0.01)
    assert {n for n, r in bonferroni.items() if r.drifted} == {"d"}
    fdr = d.correct(results, "fdr", 0.01)  # Benjamini-Hochberg: less strict than Bonferroni
    assert {n for n, r in fdr.items() if r.drifted} == {"a", "d"}
    fdr_loose = d.correct(results, "fdr", 0.05)
    assert {n for n, r in fdr_loose.items() if r.drifted} == {"a", "b", "d"}


def test_false_alarm_rate_under_no_shift_stays_near_alpha(reference):
    """200 windows from the reference distribution, six features each, Bonferroni at 1%."""
    rng = np.random.default_rng(5)
    alarms = 0
    for _ in range(200):
        window = {f"f{i}": d.ks(reference, rng.normal(0, 1, 300), 0.0001, 0.01) for i in range(6)}
        if any(r.drifted for r in d.correct(window, "bonferroni", 0.01).values()):
            alarms += 1
    assert alarms / 200 <= 0.03


def test_fast_ks_statistic_equals_scipys_with_ties():
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(6)
    for _ in range(200):
        a = np.round(rng.normal(0, 1, rng.integers(5, 300)), 1)  # rounding makes ties
        b = np.round(rng.normal(rng.normal(0, 0.5), 1, rng.integers(3, 200)), 1)
        ours = d.ks(d.ScalarReference.fit(a), b, 0.05, 0.01)
        assert ours.score == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)
