"""Deployment formats by name: `omnitune export RUN --format NAME [--quantize TYPE]`.

A format is a `DeployFormat` (trainers/deploy/base.py): the model families it takes per
modality, its quantisation types, how it writes a merged Hugging Face folder into its own files,
and how its real runtime loads them for the parity report (trainers/deploy/parity.py). Each
format module builds one as its `FORMAT` attribute; the registry imports a module only when its
format is asked for, so a refusal (unknown format, family or quantisation) costs no import of
the runtimes, which the `export` extra installs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from omnitune.core.errors import ConfigError

if TYPE_CHECKING:
    from omnitune.trainers.deploy.base import DeployFormat

#: format name -> module whose `FORMAT` attribute is its `DeployFormat`.
FORMATS: dict[str, str] = {
    "gguf": "omnitune.trainers.deploy.gguf",
    "ctranslate2": "omnitune.trainers.deploy.ctranslate2",
    "onnx": "omnitune.trainers.deploy.onnx",
}


def get_format(name: str) -> DeployFormat:
    if name not in FORMATS:
        raise ConfigError(f"--format: unknown '{name}' (known: {', '.join(FORMATS)})")
    return importlib.import_module(FORMATS[name]).FORMAT
