"""The package layers of pyproject.toml's [tool.importlinter] hold, and a break is caught.

The contracts (docs/design.md draws them): the kernel `omnitune.core` at the bottom; the
modalities on it; the trainer on the modalities; the monitor on the modalities and the kernel;
the dashboard on the monitor; the trainer and the monitor/dashboard never importing each
other. Together they leave no room for an import cycle between top-level packages.
"""

from __future__ import annotations

import pytest

from scripts.check_layers import check


def test_every_layer_contract_is_kept():
    result = check()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "source", "broken"),
    [
        (
            "omnitune.monitor.planted",
            "from omnitune.trainers.loop import train",
            "The monitor and the dashboard run without the trainer",
        ),
        (
            "omnitune.modalities.planted",
            "from omnitune.trainers.config import RunConfig",
            "Training builds on the modalities, the modalities on the kernel",
        ),
        (
            "omnitune.core.planted",
            "import omnitune.monitor.store",
            "The dashboard reads the monitor, the monitor builds on the modalities",
        ),
        (
            "omnitune.trainers.planted",
            "def later():\n    from omnitune.dashboard.cli import add_commands",
            "The trainer knows nothing of the monitor or the dashboard",
        ),
    ],
)
def test_a_planted_violation_breaks_its_contract(module, source, broken):
    """An import across a boundary, even one inside a function, fails the check and the
    report names the contract and the offending import."""
    result = check(plant=(module, source))
    assert result.returncode == 1, result.stdout[-4000:]
    assert "1 broken" in result.stdout
    broken_section = result.stdout[result.stdout.index("Broken contracts") :]
    assert broken in " ".join(broken_section.split())
    assert module in broken_section
