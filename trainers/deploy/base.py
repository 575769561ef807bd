"""What a deployment format is, and what its runtime must answer for the parity report.

The parity report (trainers/deploy/parity.py) asks the same questions of the PyTorch model and
of the exported one in its real runtime, through one of two small interfaces:

- `TextRuntime`: the next-token logits at every position of a token sequence, a greedy
  continuation of a prompt, and (where the runtime brings its own tokenizer) the token ids of
  a text;
- `SpeechRuntime`: greedy transcripts of 16 kHz clips, and the decoder's logits for given
  features and decoder tokens where the runtime exposes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from omnitune.core.errors import ConfigError


class TextRuntime(Protocol):
    def logits(self, tokens: list[int]) -> Any:
        """[len(tokens), vocab] float32 logits: row i predicts token i + 1."""

    def greedy(self, prompt: list[int], max_new_tokens: int, stop: set[int]) -> list[int]:
        """The argmax continuation of `prompt`, ending at the first token in `stop` (kept)."""

    def tokenize(self, text: str) -> list[int] | None:
        """The runtime's own token ids of `text` (special tokens parsed), or None if it takes
        ids only."""


class SpeechRuntime(Protocol):
    def transcribe(
        self, clips: list[Any], language: str | None, task: str, max_new_tokens: int
    ) -> list[str]:
        """Greedy transcripts of 16 kHz float32 clips (`language`: a code such as "en", or
        None to let the model detect it)."""

    # A runtime that exposes the decoder's logits also defines
    # `decoder_logits(features [mel bins, frames], tokens) -> [len(tokens), vocab]`, and the
    # report compares them with PyTorch's.


@dataclass(frozen=True)
class DeployFormat:
    """One deployment format.

    families: modality -> the `model_type`s (config.json) the runtime takes;
    quantizations: the types `--quantize` accepts, the first being the unquantised one whose
    parity decides the exit status; write(hf_folder, out_folder, quantize, modality) -> the
    exported model's path (file or folder); load(path, quantize, modality, hf_folder) -> a
    TextRuntime or SpeechRuntime; launch(path, modality) -> the line that serves it.
    """

    name: str
    runtime: str
    families: dict[str, tuple[str, ...]]
    quantizations: tuple[str, ...]
    write: Callable[[Path, Path, str, str], Path]
    load: Callable[[Path, str, str, Path], Any]
    launch: Callable[[Path, str], str]
    logit_tolerance: float | None = None
    #: (modality, the model's transformers config) -> why the runtime cannot take this model
    #: beyond its family (a shape it does not support), or None
    refuse: Callable[[str, Any], str | None] | None = None

    @property
    def unquantized(self) -> str:
        return self.quantizations[0]

    def check(self, modality: str, model_config: Any, quantize: str) -> None:
        """Refuse, before any work, what this format or its runtime cannot take."""
        family = model_config.model_type
        accepted = self.families.get(modality, ())
        if family not in accepted:
            takes = "; ".join(f"{m}: {', '.join(f)}" for m, f in self.families.items())
            raise ConfigError(
                f"--format {self.name}: {self.runtime} does not run the {family} family "
                f"({modality}); it takes {takes}"
            )
        if quantize not in self.quantizations:
            raise ConfigError(
                f"--quantize: {self.name} has no '{quantize}' (known: "
                f"{', '.join(self.quantizations)})"
            )
        reason = self.refuse(modality, model_config) if self.refuse else None
        if reason:
            raise ConfigError(f"--format {self.name}: {reason}")


def folder_size_mb(path: Path) -> float:
    """Megabytes on disk of a file, or of every file under a folder."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6
