"""The `omnitune` command line as users meet it: help, version, config check/show."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import OMNITUNE, REPO, run_cli, run_python

HEAVY_MODULES = ("torch", "transformers", "peft", "streamlit", "scipy", "pydantic")


def test_help_lists_the_commands_and_exits_zero():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("config", "models"):
        assert command in result.stdout


def test_help_imports_no_heavy_library():
    code = textwrap.dedent(
        f"""
        import sys
        from omnitune.core.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        loaded = [m for m in {HEAVY_MODULES!r} if m in sys.modules]
        print("LOADED", loaded)
        """
    )
    result = run_python(code)
    assert "LOADED []" in result.stdout, result.stdout + result.stderr


def test_help_answers_within_one_cpu_second():
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([str(OMNITUNE), "--help"], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 1.0, f"omnitune --help used {cpu:.2f} s of CPU"


def test_version_matches_the_installed_distribution():
    from importlib.metadata import version

    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"omnitune {version('omnitune')}"


def test_unknown_command_is_a_usage_error():
    result = run_cli("fly")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


@pytest.fixture
def config_file(tmp_path: Path):
    def write(text: str) -> Path:
        path = tmp_path / "run.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


VALID = """
    model: {name_or_path: some/model, modality: text}
    data: {train: data.jsonl}
    train: {max_steps: 10}
"""


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_config_check_accepts_a_valid_config(config_file):
    result = run_cli("config", "check", str(config_file(VALID)))
    assert result.returncode == 0, result.stderr
    assert "ok (text, lora, sft)" in result.stdout


def test_typo_in_a_nested_key_is_named_on_one_line(config_file):
    path = config_file(VALID + "    peft: {method: lora, alpah: 32}\n")
    line = _one_error_line(run_cli("config", "check", str(path)))
    assert "peft.alpah: unknown key" in line
    assert "did you mean 'alpha'" in line


def test_wrong_type_and_out_of_range_values_are_named(config_file):
    path = config_file(VALID)
    line = _one_error_line(
        run_cli("config", "check", str(path), "train.lr=-0.1", "train.batch_size=many")
    )
    assert "train.lr:" in line and "greater than 0" in line
    assert "train.batch_size:" in line and "'many'" in line


def test_unknown_choice_lists_what_is_allowed(config_file):
    line = _one_error_line(run_cli("config", "check", str(config_file(VALID)), "peft.method=lorax"))
    assert "peft.method:" in line and "'dora'" in line


def test_a_run_needs_steps_or_epochs(config_file):
    path = config_file(VALID.replace("{max_steps: 10}", "{batch_size: 4}"))
    line = _one_error_line(run_cli("config", "check", str(path)))
    assert "train.max_steps or train.epochs" in line


def test_preference_objectives_are_refused_for_speech(config_file):
    path = config_file(VALID)
    line = _one_error_line(
        run_cli("config", "check", str(path), "model.modality=speech", "objective.name=dpo")
    )
    assert "objective.name: dpo" in line


def test_each_objective_takes_only_its_own_options(config_file):
    """The objective section is the named objective's own model: another objective's option
    is an unknown key listing this one's, a misspelt one gets a did-you-mean, errors name
    the field as written (no tag), and `config show` prints only the options that apply."""
    path = config_file(VALID)
    line = _one_error_line(run_cli("config", "check", str(path), "objective.beta=0.5"))
    assert line.endswith(
        "objective.beta: unknown key (known keys: assistant_only_loss, focal_gamma, loss, name)"
    )
    dpo = ["objective.name=dpo"]
    assert run_cli("config", "check", str(path), *dpo, "objective.beta=0.5").returncode == 0
    line = _one_error_line(run_cli("config", "check", str(path), *dpo, "objective.bta=0.5"))
    assert line.endswith("objective.bta: unknown key; did you mean 'beta'?")
    line = _one_error_line(run_cli("config", "check", str(path), *dpo, "objective.beta=-1"))
    assert line.endswith("objective.beta: Input should be greater than 0 (got -1)")
    line = _one_error_line(run_cli("config", "check", str(path), "objective.name=simpo"))
    known = "sft, dpo, orpo, kto, grpo, ppo, distill"
    assert line.endswith(f"objective.name: unknown 'simpo' (known: {known})")
    shown = run_cli("config", "show", str(path), "objective.name=grpo", "--json")
    objective = json.loads(shown.stdout)["objective"]
    assert objective["name"] == "grpo" and "num_generations" in objective
    assert not {"beta", "loss", "ppo_epochs"} & set(objective)


def test_invalid_yaml_names_the_line(config_file):
    path = config_file("model:\n  name_or_path: [unclosed\n")
    line = _one_error_line(run_cli("config", "check", str(path)))
    assert "line" in line and "invalid YAML" in line


def test_missing_config_file_is_a_config_error(tmp_path):
    line = _one_error_line(run_cli("config", "check", str(tmp_path / "nope.yaml")))
    assert "no such config file" in line


def test_overrides_are_typed_and_show_prints_the_resolved_config(config_file):
    path = config_file(VALID)
    result = run_cli(
        "config",
        "show",
        str(path),
        "--json",
        "train.max_steps=20",
        "peft.target_modules=[q_proj,v_proj]",
        "output_dir=/tmp/run",
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["train"]["max_steps"] == 20
    assert shown["peft"]["target_modules"] == ["q_proj", "v_proj"]
    assert shown["output_dir"] == "/tmp/run"
    assert shown["peft"]["r"] == 8, "defaults are filled in"


def test_show_prints_yaml_that_check_accepts_again(config_file, tmp_path):
    shown = run_cli("config", "show", str(config_file(VALID)), "train.lr=0.001")
    assert shown.returncode == 0
    again = tmp_path / "again.yaml"
    again.write_text(shown.stdout)
    assert run_cli("config", "check", str(again)).returncode == 0
    assert "lr: 0.001" in shown.stdout


@pytest.mark.parametrize("override", ["train.max_steps", "=5", "train..lr=1"])
def test_malformed_overrides_are_usage_errors(config_file, override):
    line = _one_error_line(run_cli("config", "check", str(config_file(VALID)), override))
    assert "override" in line


def test_overriding_into_a_value_is_refused(config_file):
    line = _one_error_line(
        run_cli("config", "check", str(config_file(VALID)), "train.max_steps.sub=1")
    )
    assert "train.max_steps: is a value, not a section" in line


# configs/monitor*.yaml configure the monitor daemon; tests/monitor validates those.
SHIPPED_RUN_CONFIGS = sorted(
    p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("monitor")
)


def test_configs_are_shipped():
    assert SHIPPED_RUN_CONFIGS, "configs/*.yaml should hold the example run configs"


@pytest.mark.parametrize("path", SHIPPED_RUN_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    from omnitune.trainers.config import load_run_config

    load_run_config(path)


def test_main_returns_the_exit_status_without_exiting(config_file):
    from omnitune.core.cli import main

    assert main(["config", "check", str(config_file(VALID))]) == 0
    assert main(["config", "check", str(config_file(VALID)), "train.lr=0"]) == 2


def test_cli_module_runs_with_python_dash_m():
    result = subprocess.run(
        [sys.executable, "-m", "omnitune", "--version"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stdout.startswith("omnitune ")
