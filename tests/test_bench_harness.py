"""The benchmark harness itself: interleaving, per-pair ratios, scale rounds and the table.

The sides are tiny Python commands that log when they ran and print fixed figures, so the
assertions are about the harness, not about any machine's speed.
"""

from __future__ import annotations

import json
import math
import sys

from bench.harness import Comparison, compare, scale, write_results


def side(log, name: str, value: float, extra: str = "") -> list[str]:
    code = (
        "import json, sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n'); print('noise'); "
        f"print(json.dumps({{'x': float(sys.argv[3]), 'peak_rss_mb': 10.0{extra}}}))"
    )
    return [sys.executable, "-c", code, str(log), name, str(value)]


def test_compare_interleaves_after_a_warm_up_and_reports_pair_ratios(tmp_path):
    log = tmp_path / "order.log"
    row = compare(
        Comparison(task="t", figure="x", unit="u", higher_is_better=True, also=("y",)),
        side(log, "A", 3.0, ", 'y': 1.0"),
        side(log, "B", 1.5),
        pairs=3,
    )
    assert log.read_text().split() == ["A", "B", "A", "B", "B", "A", "A", "B"]
    assert len(row.omnitune) == len(row.reference) == 3
    assert row.pair_ratios() == [2.0, 2.0, 2.0] and row.ratio == 2.0
    assert row.median("omnitune", "y") == 1.0
    assert math.isnan(row.median("reference", "y"))  # a figure one side never reported

    lower = compare(
        Comparison(task="t", figure="x", unit="u", higher_is_better=False),
        side(log, "A", 1.0),
        side(log, "B", 4.0),
        pairs=3,
        warmup=False,
    )
    assert lower.ratio == 4.0  # reference / omnitune when lower is better


def test_scale_runs_points_in_alternating_order_after_a_base_warm_up(tmp_path):
    log = tmp_path / "order.log"
    points = {k: side(log, k, v) for k, v in (("1x", 1.0), ("2x", 2.0), ("4x", 4.0))}
    results = scale(points, "1x", rounds=3)
    assert log.read_text().split() == [
        *["1x"],
        *["1x", "2x", "4x"],
        *["4x", "2x", "1x"],
        *["1x", "2x", "4x"],
    ]
    assert [r["x"] for r in results["4x"]] == [4.0, 4.0, 4.0]


def test_results_table_has_every_column_and_keeps_other_rows_when_run_alone(tmp_path):
    log = tmp_path / "order.log"
    first = compare(
        Comparison(task="first", figure="x", unit="u/s", higher_is_better=True),
        side(log, "A", 2.0),
        side(log, "B", 1.0),
        pairs=3,
        warmup=False,
    )
    write_results([first], tmp_path)
    second = compare(
        Comparison(task="second", figure="x", unit="u/s", higher_is_better=True),
        side(log, "A", 1.0),
        side(log, "B", 1.0),
        pairs=3,
        warmup=False,
    )
    write_results([second], tmp_path, keep_others=True)
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["task"] for r in rows] == ["first", "second"]
    assert rows[0]["ratio"] == 2.0 and rows[0]["omnitune"] == 2.0 and rows[0]["reference"] == 1.0
    table = (tmp_path / "results.md").read_text().splitlines()
    header = table[4]
    for column in ("task", "figure", "omnitune", "reference", "ratio", "machine", "date"):
        assert f" {column} " in header
    assert table[6].startswith("| first | x (u/s) | 2.0 | 1.0 (reference) | 2.000 |")
