"""Compare recordings of the docs' console sessions made under different CPU kernels, and
propose each shown line with the figures that differ written as ranges (`0.26–0.35`).

A figure that comes out of training depends on the order in which the CPU's vector kernels
sum (AVX-512 and AVX2 differ, and a tiny model's run drifts on from there). To measure which
figures vary and by how much, record the docs' sessions once per capability:

    OMNITUNE_DOCS_RECORD=/tmp/rec-default.jsonl .venv/bin/python -m pytest README.md docs
    ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \\
        OMNITUNE_DOCS_RECORD=/tmp/rec-avx2.jsonl .venv/bin/python -m pytest README.md docs
    .venv/bin/python scripts/docs_figures.py /tmp/rec-default.jsonl /tmp/rec-avx2.jsonl [--docs]

(`--docs`: compare the lines the docs show now, after editing them, instead of the lines they
showed when recorded.)

For every shown line whose figures disagree beyond the docs' tolerance, between the doc and
the recordings, it prints the doc's line, each recording's line, and a proposed line: the
first recording's, with each disagreeing figure replaced by the range of the values seen,
widened by half its width on each side (three samples are few; the docs say so).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("OMNITUNE_DOCS_RECORD", os.devnull)  # align lines ignoring figures
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import console_docs

NUMBER = console_docs.NUMBER


def aligned(expected: list[str], output: str) -> list[tuple[str, str | None]]:
    """Each shown line with the output line it stands for, in order: the first later line
    whose whole numbers (steps, counts) are the same, else the first of the same shape."""
    actual = [console_docs.LOG_TIME.sub("", line) for line in output.splitlines()]
    pairs, position = [], 0
    for line in expected:
        if not line.strip() or line.strip() == "...":
            continue
        candidates = [
            i for i in range(position, len(actual)) if console_docs.line_matches(line, actual[i])
        ]
        same_counts = [i for i in candidates if _same_whole_numbers(line, actual[i])]
        chosen = (same_counts or candidates or [None])[0]
        pairs.append((line, None if chosen is None else actual[chosen]))
        if chosen is not None:
            position = chosen + 1
    return pairs


def _same_whole_numbers(shown: str, line: str) -> bool:
    pattern, numbers = console_docs._pattern(re.sub(r"(?<=\S) {2,}", " ", shown))
    found = pattern.fullmatch(re.sub(r"(?<=\S) {2,}", " ", line.rstrip()))
    if found is None:
        return False
    return all(
        n == g
        for n, g in zip(numbers, found.groups(), strict=True)
        if "." not in n and "–" not in n
    )


def figures(line: str) -> list[str]:
    """The compared figures of a line (machine figures masked), as the docs' checker sees them."""
    masked = console_docs.TIMING_FIELD.sub(lambda m: m.group(1) + "\x00", line)
    for volatile in console_docs.VOLATILE:
        masked = re.sub(volatile, "\x00", masked)
    return [
        m.group() for m in re.finditer(console_docs.RANGE.pattern + "|" + NUMBER.pattern, masked)
    ]


def widened(values: list[float], decimals: int) -> str:
    low, high = min(values), max(values)
    margin = (high - low) / 2
    scale = 10**decimals
    low = math.floor((low - margin) * scale) / scale
    high = math.ceil((high + margin) * scale) / scale
    if min(values) >= 0:
        low = max(low, 0.0)
    return f"{low:.{decimals}f}–{high:.{decimals}f}"


def propose(shown: str, lines: list[str]) -> str | None:
    """The shown line with each figure that disagrees (between the doc and the recordings, or
    among the recordings) written as a range; None when every figure agrees."""
    pattern, _ = console_docs._pattern(re.sub(r"(?<=\S) {2,}", " ", shown))
    shown_figures = figures(shown)
    seen_by_line = []
    for line in lines:
        found = pattern.fullmatch(re.sub(r"(?<=\S) {2,}", " ", line.rstrip()))
        if found is None or len(found.groups()) != len(shown_figures):
            return f"(by hand: the line changed) {lines[0]}"
        seen_by_line.append(found.groups())
    proposed, position, changed = shown, 0, False
    for index, shown_figure in enumerate(shown_figures):
        seen = [groups[index] for groups in seen_by_line]
        start = proposed.find(shown_figure, position)
        agree = all(_close(shown_figure, s) for s in seen) and all(_close(seen[0], s) for s in seen)
        if agree:
            position = start + len(shown_figure)
            continue
        changed = True
        values = [float(s.replace(",", "")) for s in seen]
        values += [float(n.replace(",", "")) for n in shown_figure.split("–")]
        decimals = len(seen[0].split(".")[1]) if "." in seen[0] else 0
        written = widened(values, decimals)
        proposed = proposed[:start] + written + proposed[start + len(shown_figure) :]
        position = start + len(written)
    return proposed if changed else None


def _close(shown: str, got: str) -> bool:
    saved = console_docs.RECORD
    console_docs.RECORD = None
    try:
        return console_docs._close(shown, got)
    finally:
        console_docs.RECORD = saved


def keyed(path: str) -> dict[tuple[str, str, int], dict]:
    """A recording's commands by (document, command, how many times it ran before): two
    recordings made from different revisions of the docs still pair up command by command."""
    found: dict[tuple[str, str, int], dict] = {}
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        seen = sum(1 for k in found if k[:2] == (row["document"], row["command"]))
        found[(row["document"], row["command"], seen)] = row
    return found


def shown_now() -> dict[tuple[str, str, int], list[str]]:
    """The lines each command of README.md and docs/*.md shows today, keyed like a recording
    (so that docs edited after the recordings are compared with them)."""
    from tests.console_docs import parse_session

    root = Path(__file__).resolve().parent.parent
    found: dict[tuple[str, str, int], list[str]] = {}
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        blocks = re.findall(r"```console\n(.*?)```", path.read_text(), flags=re.S)
        for block in blocks:
            for command in parse_session(block):
                seen = sum(1 for k in found if k[:2] == (path.name, command.text))
                found[(path.name, command.text, seen)] = command.expected
    return found


def main(paths: list[str]) -> None:
    current = "--docs" in paths
    paths = [p for p in paths if p != "--docs"]
    recordings = [keyed(p) for p in paths]
    today = shown_now() if current else {}
    for key, first in recordings[0].items():
        commands = [r.get(key) for r in recordings]
        if any(c is None for c in commands) or (current and key not in today):
            print(f"\n{key[0]}: $ {key[1][:120]}: not in every recording (or not in the docs)")
            continue
        expected = today[key] if current else first["expected"]
        reports = []
        matched = [dict(aligned(expected, c["output"])) for c in commands]
        for shown in expected:
            if not shown.strip() or shown.strip() == "...":
                continue
            lines = [m.get(shown) for m in matched]
            if any(line is None for line in lines):
                reports.append(f"  not in every output: {shown}")
                continue
            proposal = propose(shown, lines)
            if proposal is not None:
                reports += [f"  shown:    {shown}"]
                reports += [f"  {Path(p).stem:<9} {x}" for p, x in zip(paths, lines, strict=True)]
                reports += [f"  proposed: {proposal}"]
        codes = {c["returncode"] for c in commands}
        if reports or codes - {0, None}:
            print(f"\n{key[0]}: $ {key[1][:120]} (exit {sorted(codes, key=str)})")
            print("\n".join(reports))


if __name__ == "__main__":
    main(sys.argv[1:])
