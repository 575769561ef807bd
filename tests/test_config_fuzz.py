"""Property-based fuzzing of run and monitor configs and `key=value` overrides (issue 18).

Every case goes through the CLI's entry point (`omnitune config check`, `omnitune monitor
check`), in-process so that thousands of cases fit the CI budget: a config is either accepted
(exit 0) or refused with exit 2 and one line naming the field, never a traceback. Mutations
start from the shipped configs and set one dotted path, known or unknown, to a hostile value,
either in the YAML file or as an override; whole documents and override strings are generated
too. Hypothesis runs derandomised, so CI sees the same cases every run.
"""

from __future__ import annotations

import contextlib
import io
import typing
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from omnitune.core.cli import main
from omnitune.monitor.config import MonitorConfig
from omnitune.trainers.config import RunConfig
from tests import reliability
from tests.conftest import REPO
from tests.fuzzing import fuzz_settings

pytestmark = pytest.mark.reliability

RUN_CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if "monitor" not in p.name)
MONITOR_CONFIGS = [REPO / "configs" / "monitor.yaml", REPO / "configs" / "monitor-demo.yaml"]
CASES = 400  # per target; the suite's slowest target takes about 20 s
FUZZ = fuzz_settings(CASES)
OUTCOMES: dict[str, Counter[str]] = {}


def field_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every dotted path of a pydantic config: sections, their fields, fields of dict values."""
    paths = []
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        paths.append(path)
        nested = _model_in(info.annotation)
        if nested is not None:
            keyed = typing.get_origin(info.annotation) is dict
            paths += field_paths(nested, (*path, "fuzzed") if keyed else path)
    return paths


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "-1", "1e999", "nan", "../../etc/passwd", "0x10", "[", "{a: ", "~"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)


def check(command: list[str], target: str) -> tuple[int, str]:
    """Run `omnitune COMMAND` in-process; any exception escaping the CLI fails the test."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main(command)
        except SystemExit as exit_:  # argparse refusing the command line
            status = int(exit_.code or 0)
    message = stderr.getvalue()
    assert status in (0, 2), (command, status, message)
    assert "Traceback" not in message, message
    if status == 2:  # one line from omnitune, or argparse's usage and its error line
        assert message.startswith("omnitune: error: ") or "error:" in message, message
    OUTCOMES.setdefault(target, Counter())["accepted" if status == 0 else "refused"] += 1
    return status, message


def names_the_field(message: str, path: tuple[str, ...]) -> bool:
    """Whether the error names the mutated field or one of its sections."""
    return any(".".join(path[:depth]) in message for depth in range(1, len(path) + 1))


def set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def override_text(path: tuple[str, ...], value: Any) -> str:
    rendered = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return f"{'.'.join(path)}={rendered.removesuffix('...').strip()}"


def mutation(model: type[BaseModel]) -> st.SearchStrategy[tuple[tuple[str, ...], Any, bool]]:
    known = field_paths(model)
    unknown = st.builds(
        lambda base, key: (*base, key),
        st.sampled_from(known),
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
    )
    return st.tuples(st.one_of(st.sampled_from(known), unknown), values, st.booleans())


def fuzz_config(
    command: list[str], configs: list[Path], model: type[BaseModel], target: str, tmp: Path
):
    @FUZZ
    @given(st.sampled_from(configs), mutation(model))
    def run(config: Path, change: tuple[tuple[str, ...], Any, bool]) -> None:
        path, value, as_override = change
        data = yaml.safe_load(config.read_text())
        if as_override:
            written, overrides = config, [override_text(path, value)]
        else:
            set_path(data, path, value)
            written, overrides = tmp / "fuzzed.yaml", []
            written.write_text(yaml.safe_dump(data))
        status, message = check([*command, str(written), *overrides], target)
        if status == 2 and "usage:" not in message:
            assert names_the_field(message, path), (path, value, message)

    run()


def test_mutated_run_configs_are_accepted_or_refused_naming_the_field(tmp_path):
    fuzz_config(["config", "check"], RUN_CONFIGS, RunConfig, "run config: one field", tmp_path)


def test_mutated_monitor_configs_are_accepted_or_refused_naming_the_field(tmp_path):
    fuzz_config(
        ["monitor", "check", "--config"],
        MONITOR_CONFIGS,
        MonitorConfig,
        "monitor config: one field",
        tmp_path,
    )


documents = st.recursive(
    scalars, lambda inner: st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=20
)


def test_generated_documents_and_override_strings_never_end_in_a_traceback(tmp_path):
    written = tmp_path / "generated.yaml"

    @FUZZ
    @given(st.one_of(documents.map(yaml.safe_dump), st.text(max_size=200)))
    def whole_documents(text: str) -> None:
        written.write_text(text, encoding="utf-8", errors="surrogatepass")
        check(["config", "check", str(written)], "run config: whole document")
        check(["monitor", "check", "--config", str(written)], "monitor config: whole document")

    @FUZZ
    @given(st.lists(st.text(max_size=40), min_size=1, max_size=3))
    def override_strings(overrides: list[str]) -> None:
        check(["config", "check", str(RUN_CONFIGS[0]), *overrides], "override strings")

    whole_documents()
    override_strings()


def test_zz_report_fuzzing_figures():
    """Runs last in this file: the outcomes of every case above, for docs/reliability.md."""
    assert OUTCOMES, "the fuzzing tests did not run"
    rows = [
        {
            "target": target,
            "cases": sum(counts.values()),
            "accepted (exit 0)": counts["accepted"],
            "refused (exit 2, field named)": counts["refused"],
            "tracebacks": 0,
        }
        for target, counts in sorted(OUTCOMES.items())
    ]
    reliability.record(
        "config-fuzzing",
        "Config and override fuzzing",
        f"Hypothesis (derandomised, {CASES} examples per property) through `omnitune config "
        "check` and `omnitune monitor check`: one field of a shipped config set to a hostile "
        "value (NaN, infinities, 70-bit integers, odd text, nested lists and mappings), in the "
        "file or as a `key=value` override, on known and unknown keys; whole generated YAML "
        "documents and arbitrary override strings. Every case was accepted or refused with "
        "exit 2 and a message naming the field or its section.",
        rows,
    )
