"""The `omnitune` command line: the top-level parser, the shared parser helpers, and `main`.

The commands themselves belong to the packages that run them: each package listed in
`COMMAND_PROVIDERS` has an `add_commands(commands)` that adds its subcommands and points each
leaf's `handler` at a function of its own. The kernel names them only as strings, so that it
imports none of them statically (import-linter's layers hold) and the monitor-only install,
which has no torch, still builds the whole tree.

This module and every provider import only the standard library at load time: each handler
imports what it needs when it runs, so `omnitune --help` answers without torch. Exit status: 0
on success, 2 on a usage or config error (one line on stderr, no traceback), 1 on a failure
during the run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

Handler = Callable[[argparse.Namespace], int]

#: Modules with an `add_commands(commands)`, in the order their commands appear in `--help`.
COMMAND_PROVIDERS = (
    "omnitune.trainers.commands",
    "omnitune.trainers.closed_loop.commands",
    "omnitune.monitor.cli",
    "omnitune.dashboard.cli",
)

#: Top-level module -> the install extra that provides it, for "pip install" hints.
EXTRA_PROVIDING = {
    **dict.fromkeys(
        ("torch", "transformers", "peft", "accelerate", "trl", "tokenizers", "datasets"), "train"
    ),
    **dict.fromkeys(("torchaudio", "soundfile", "librosa", "jiwer"), "speech"),
    **dict.fromkeys(("PIL", "torchvision", "sklearn"), "vision"),
    **dict.fromkeys(("scipy", "prometheus_client", "starlette", "uvicorn"), "monitor"),
    **dict.fromkeys(("streamlit", "altair", "pandas"), "dashboard"),
}

#: What a command that takes overrides says about them under its example.
OVERRIDES_NOTE = (
    "Any key of the config can be set as section.key=value after the other arguments;\n"
    "values are read as YAML: 20, 1e-4, [q_proj,v_proj], null."
)


def _version() -> str:
    try:
        return metadata.version("omnitune")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; each leaf sets `handler` to a function taking the namespace."""
    parser = argparse.ArgumentParser(
        prog="omnitune",
        description=(
            "Parameter-efficient fine-tuning for text, vision-language and speech models, "
            "and a monitor that watches them in production."
        ),
    )
    parser.add_argument("--version", action="version", version=f"omnitune {_version()}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for provider in COMMAND_PROVIDERS:
        importlib.import_module(provider).add_commands(commands)
    parser.set_defaults(handler=help_of(parser))
    _show_overrides_in_usage(parser)
    return parser


#: The environment variable every `--token` defaults to: a token there stays off command
#: lines (and out of `ps` and shell history).
TOKEN_ENV = "OMNITUNE_TOKEN"


def accept_token(
    command: argparse.ArgumentParser, what: str = "bearer token, if the daemon wants one"
) -> None:
    """Add `--token`, defaulting to $OMNITUNE_TOKEN."""
    import os

    command.add_argument(
        "--token", default=os.environ.get(TOKEN_ENV) or None, help=f"{what} (default: ${TOKEN_ENV})"
    )


def with_example(command: argparse.ArgumentParser, example: str) -> None:
    """End `command`'s help with a command line that works for it, as written."""
    command.formatter_class = argparse.RawDescriptionHelpFormatter
    command.epilog = f"example:\n  {example}"


def accept_overrides(command: argparse.ArgumentParser, example: str) -> None:
    """Let `command` take `section.key=value` overrides anywhere on its command line; `example`
    shows one with keys of the config that command reads."""
    command.set_defaults(overrides=[])
    with_example(command, example)
    command.epilog += "\n\n" + OVERRIDES_NOTE


def help_of(parser: argparse.ArgumentParser) -> Handler:
    """The handler of a command group called without an action: its help, exit status 2."""

    def show_help(_: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return show_help


def _show_overrides_in_usage(parser: argparse.ArgumentParser) -> None:
    """Append `[section.key=value ...]` to the usage line of every command that takes
    overrides (argparse cannot declare them: they are the words it does not recognise)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _show_overrides_in_usage(command)
    if parser.get_default("overrides") is not None:
        usage = parser.format_usage().removeprefix("usage: ").rstrip()
        parser.usage = f"{usage} [section.key=value ...]"


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, collecting `key=value` words as overrides for commands that accept them.

    argparse cannot take a variable number of positionals after an option (`--json a=1`), so
    overrides are the words it did not recognise, each of which must contain '='.
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(word.startswith("-") for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(extra)  # each is checked for its '=' when it is applied
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (the console script passes it to sys.exit)."""
    parser = build_parser()
    args = parse_args(parser, argv)
    _configure_logging(args.verbose, getattr(args, "log_progress", False))
    from omnitune.core.errors import MissingDependencyError, OmnituneError

    try:
        try:
            return int(args.handler(args) or 0)
        except ModuleNotFoundError as exc:
            top = (exc.name or "").split(".")[0]
            if top not in EXTRA_PROVIDING:
                raise
            raise MissingDependencyError(top, EXTRA_PROVIDING[top]) from exc
    except OmnituneError as exc:
        print(f"omnitune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("omnitune: interrupted", file=sys.stderr)
        return 130


def _configure_logging(verbosity: int, progress: bool = False) -> None:
    """WARNING by default; long-running commands (train) show omnitune's INFO progress lines."""
    import logging
    import os

    if verbosity == 0:
        import warnings

        # Library chatter (weight-loading bars, deprecation notes) only with -v.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        warnings.filterwarnings("ignore", category=FutureWarning)

    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if progress and verbosity == 0:
        logging.getLogger("omnitune").setLevel(logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
