"""`make layers`: check the import contracts of pyproject.toml ([tool.importlinter]).

import-linter (through grimp) finds a package's modules by walking the folder its root package
comes from. omnitune's root package is `api/`, and the code folders are mapped under it by
pyproject.toml's `package-dir`, so the editable install has no folder that holds them all.
This script lays the Python files out as they are installed (api/ as omnitune/, trainers/ as
omnitune/trainers/, ...) in a scratch folder and runs `lint-imports` there, with that folder
first on the path. Exit status: lint-imports' own (0 when every contract is kept).

    python scripts/check_layers.py                  # the repository as it is
    python scripts/check_layers.py --plant omnitune.monitor.planted "import omnitune.trainers"
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def package_folders(repo: Path = REPO) -> dict[str, Path]:
    """Import package -> source folder, as pyproject.toml's `package-dir` maps them."""
    setuptools = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {package: repo / folder for package, folder in setuptools["package-dir"].items()}


def lay_out(tree: Path, repo: Path = REPO) -> Path:
    """Copy every package's .py files under `tree` at their installed place; returns `tree`."""
    for package, folder in package_folders(repo).items():
        target = tree.joinpath(*package.split("."))
        for source in folder.rglob("*.py"):
            relative = source.relative_to(folder)
            if "__pycache__" in relative.parts:
                continue
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    return tree


def check(plant: tuple[str, str] | None = None, repo: Path = REPO) -> subprocess.CompletedProcess:
    """Run lint-imports over the installed layout, with `plant` = (module, source) added to
    it first (how the tests show that a contract fails when it is broken)."""
    with tempfile.TemporaryDirectory(prefix="omnitune-layers-") as scratch:
        tree = lay_out(Path(scratch), repo)
        if plant is not None:
            module, source = plant
            path = tree.joinpath(*module.split(".")).with_suffix(".py")
            path.write_text(source + "\n")
        lint_imports = Path(sys.executable).parent / "lint-imports"
        return subprocess.run(
            [str(lint_imports), str(repo / "pyproject.toml"), "--no-cache"],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            capture_output=True,
            text=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/check_layers.py", description=__doc__)
    parser.add_argument(
        "--plant", nargs=2, metavar=("MODULE", "SOURCE"), help="add a module before checking"
    )
    args = parser.parse_args(argv)
    result = check(tuple(args.plant) if args.plant else None)
    print(result.stdout, end="")
    print(result.stderr, end="", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
