"""Every command's --help ends with an example that applies to it, and the usage line of every
command that takes `section.key=value` overrides shows them (issue 21)."""

from __future__ import annotations

import argparse
import re
import shlex

from omnitune.core.cli import build_parser
from tests.conftest import REPO, run_cli


def leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of every command that does something (not a group)."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield path, parser
    for group in groups:
        for name, command in group.choices.items():
            yield from leaf_commands(command, (*path, name))


def test_every_command_shows_a_working_example_and_its_overrides():
    commands = dict(leaf_commands(build_parser()))
    assert len(commands) >= 17
    for words, command in commands.items():
        text = command.format_help()
        example = re.search(r"\nexample:\n  (omnitune .+)\n", text + "\n")
        assert example, f"omnitune {' '.join(words)} --help has no example"
        argv = shlex.split(example.group(1))
        assert argv[1 : 1 + len(words)] == list(words), example.group(1)
        for config in (word for word in argv if word.startswith("configs/")):
            assert (REPO / config).is_file(), f"{example.group(1)}: no {config}"
        takes_overrides = command.get_default("overrides") is not None
        usage = command.format_usage()
        assert usage.rstrip().endswith("[section.key=value ...]") == takes_overrides, usage
        if takes_overrides:
            assert any("=" in word and not word.startswith("-") for word in argv[2:]), argv


def test_the_examples_of_the_check_commands_pass_as_written():
    for words in (("config", "check"), ("monitor", "check")):
        command = dict(leaf_commands(build_parser()))[words]
        line = re.search(r"\nexample:\n  (omnitune .+)\n", command.format_help()).group(1)
        result = run_cli(*shlex.split(line)[1:])
        assert result.returncode == 0, (line, result.stderr)
        assert ": ok" in result.stdout
