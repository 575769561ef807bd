"""Hypothesis settings shared by the fuzzing tests: derandomised (CI sees the same cases every
run), no example database, no deadline (a case may start a process or cross loopback)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def fuzz_settings(cases: int) -> settings:
    return settings(
        max_examples=cases,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
