"""The PEFT trainer core every modality runs on, plus the CLI and config system.

Importing this package is cheap (no torch): the CLI, the config models and the error types are
used by the torch-free monitor install too. The training loop lives in submodules that import
torch when they are imported.
"""

from omnitune.core.errors import ConfigError, DataError, OmnituneError, UsageError

__all__ = ["ConfigError", "DataError", "OmnituneError", "UsageError"]
