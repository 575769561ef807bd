"""How a doc's shown output is compared with what a command prints (tests/console_docs.py):
the rules must let machine-dependent figures vary and catch everything else."""

from __future__ import annotations

import pytest

from tests.console_docs import line_matches, missing_lines, parse_session


def test_a_session_splits_into_commands_with_their_shown_output():
    block = "\n".join(
        [
            "$ omnitune monitor serve --config c.yaml &",
            "omnitune monitor: listening on http://127.0.0.1:9108",
            "$ prometheus --config.file=p.yml \\",
            "    --web.listen-address=127.0.0.1:9090 &",
            "$ omnitune eval runs/x   # a comment",
            "loss 1.0",
            "...",
        ]
    )
    serve, prometheus, evaluate = parse_session(block)
    assert serve.background and serve.expected == [
        "omnitune monitor: listening on http://127.0.0.1:9108"
    ]
    assert prometheus.background and prometheus.text.endswith("127.0.0.1:9090 &")
    assert not evaluate.background and evaluate.expected == ["loss 1.0", "..."]


@pytest.mark.parametrize(
    ("shown", "printed"),
    [
        (
            "eval at step 60: loss 5.7924, perplexity 327.7958",
            "eval at step 60: loss 5.8100, perplexity 331.2",
        ),
        (
            "step 10/60 loss 6.0420 lr 0.0025 310.2 samples/s",
            "step 10/60 loss 6.0420 lr 0.0025 97.5 samples/s",
        ),
        (
            "sent 2000 of 2000 events in 2.06 s (972/s); dropped 0",
            "sent 2000 of 2000 events in 9.1 s (220/s); dropped 0",
        ),
        (
            "listening on http://127.0.0.1:9108 (store x)",
            "listening on http://127.0.0.1:41233 (store x)",
        ),
        ("+ transformers serve m --port 42565 &", "+ transformers serve m --port 39211 &"),
        (
            "from cache: /c/prepared/text/919527af5c7c99d5b32941b8",
            "from cache: /c/prepared/text/0a1b2c3d4e5f60718293a4b5",
        ),
        ("drifted (since 2026-12-03 23:30:53)", "drifted (since 2027-01-01 00:00:01)"),
        ("reward 0.1125, ..., kl 0.1307", "reward 0.1200, reward_std 0.3, entropy 1.9, kl 0.1307"),
        ("wer 0.2679, cer 0.2369", "wer 0.3000, cer 0.2369"),  # decimals: within 0.05
        ("generation_seconds 0.0658, kl 0.1307", "generation_seconds 1.4311, kl 0.1307"),
        ("{'summary/loop_seconds': 0.2139, 'x': 1}", "{'summary/loop_seconds': 3.5, 'x': 1}"),
        ('"latency_s": 0.1428,', '"latency_s": 0.06690024099953007,'),
    ],
)
def test_figures_that_measure_the_machine_or_drift_slightly_still_match(shown, printed):
    assert line_matches(shown, printed)


@pytest.mark.parametrize(
    ("shown", "printed"),
    [
        (
            "data train.jsonl: 200 examples; skipped 1 invalid JSON",
            "data train.jsonl: 200 examples",
        ),
        ("200 examples; skipped 1 invalid JSON", "200 examples; skipped 2 invalid JSON"),
        ("eval at step 60: loss 5.7924", "eval at step 60: loss 6.9000"),  # regressed
        (
            "trainable parameters: 3,584 of 110,400 (3.25%)",
            "trainable parameters: 7,168 of 110,400 (6.49%)",
        ),
        ("configs/a.yaml: ok (text, lora, sft)", "configs/a.yaml: ok (text, full, sft)"),
        ("wer 0.2679", "wer nan"),
    ],
)
def test_changed_words_counts_and_metrics_do_not_match(shown, printed):
    assert not line_matches(shown, printed)


def test_shown_lines_must_appear_in_order_and_may_leave_lines_out():
    output = "a 1\nprogress\nb 2\nc 3\n"
    assert missing_lines(["a 1", "...", "c 3"], output) == []
    assert missing_lines(["c 3", "a 1"], output) == ["a 1"]
    assert missing_lines(["d 4"], output) == ["d 4"]


def test_log_lines_match_without_their_time_stamp():
    output = "2026-12-04 10:59:12,046 INFO omnitune.train: data x.jsonl: 64 pairs\n"
    assert missing_lines(["INFO omnitune.train: data x.jsonl: 64 pairs"], output) == []
    assert missing_lines(["INFO omnitune.train: data x.jsonl: 80 pairs"], output) != []


@pytest.mark.parametrize(
    ("printed", "matches"),
    [
        ("wer 0.2900, cer 0.2100", True),
        ("wer 0.2600, cer 0.2100", True),  # bounds included
        ("wer 0.3500, cer 0.2100", True),
        ("wer 0.2599, cer 0.2100", False),
        ("wer 0.3501, cer 0.2100", False),
        ("wer 0.3000, cer 0.3000", False),  # the other figure is still compared as before
    ],
)
def test_a_range_is_a_figure_from_training_that_must_lie_within_it(printed, matches):
    """`0.26–0.35`: measured across CPU kernels (AVX-512, AVX2) and runs; exact bounds."""
    assert line_matches("wer 0.26–0.35, cer 0.2100", printed) is matches


def test_ranges_of_counts_and_in_tables():
    assert line_matches("got 120–150 of those wrong", "got 133 of those wrong")
    assert not line_matches("got 120–150 of those wrong", "got 151 of those wrong")
    assert line_matches("speech  wer  0.61–0.66 -> 0.30–0.42", "speech wer 0.640 -> 0.414")
