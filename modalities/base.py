"""The modality interface the trainer core calls, and the registry that finds modalities by name.

A modality is a small frozen dataclass of functions, not a base class: the core calls these and
nothing else, so no modality-specific branch is needed in the trainer. Each modality package
builds one `Modality` in its `__init__.py`; the registry imports it only when it is asked for.
"""

from __future__ import annotations

import importlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from omnitune.core.errors import ConfigError, DataError
from omnitune.modalities.hf_sources import hf_plain_rows, is_hf_source

#: modality name -> module whose `MODALITY` attribute is its `Modality`.
MODALITIES: dict[str, str] = {
    "text": "omnitune.modalities.text",
    "vision_language": "omnitune.modalities.vision_language",
    "speech": "omnitune.modalities.speech",
}

#: modality name -> "module:Class" of the pydantic model for its `data.options`.
OPTIONS_MODELS: dict[str, str] = {
    "text": "omnitune.modalities.text.options:TextOptions",
    "speech": "omnitune.modalities.speech.options:SpeechOptions",
    "vision_language": "omnitune.modalities.vision_language.options:VisionOptions",
}


def default_cache_root() -> Path:
    """Where omnitune caches derived data (features, spilled media): $OMNITUNE_CACHE, else
    ~/.cache/omnitune, as HF_HOME is for the hub cache."""
    import os

    root = os.environ.get("OMNITUNE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "omnitune"


def options_model(modality: str) -> Any:
    """The pydantic model that validates `modality`'s `data.options`, or None (free-form)."""
    target = OPTIONS_MODELS.get(modality)
    if target is None:
        return None
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


class RunSettings(Protocol):
    """What a modality reads of a run's config: the sections below (the trainer's
    `omnitune.trainers.config.RunConfig` is one). A protocol, so that the modalities, a layer
    below the trainer, name what they need without importing it."""

    @property
    def model(self) -> Any: ...  # name_or_path, modality, dtype

    @property
    def data(self) -> Any: ...  # limits, options, cache, num_proc

    @property
    def eval(self) -> Any: ...  # batch size, metrics, generation

    @property
    def objective(self) -> Any: ...  # assistant_only_loss


@dataclass
class Examples:
    """A dataset read from disk: usable examples, and what was skipped, counted by reason.

    `groups[i]` is example i's value of the balancing field (None when unbalanced), so the
    sampler can weight examples without reading them again.
    """

    items: list[dict[str, Any]]
    source: str
    skipped: Counter[str] = field(default_factory=Counter)
    groups: list[str | None] = field(default_factory=list)
    lengths: list[float] = field(default_factory=list)
    #: examples kept but cut to data.max_length (text under `data.options.overlong: truncate`)
    truncated: int = 0
    #: for packed rows (`data.packing`), the examples they were packed from
    unpacked: Examples | None = None
    #: what one item is, for summaries: "examples", "pairs"
    noun: str = "examples"
    #: where a prepared dataset came from ("from cache: PATH", "prepared in 3.1 s: PATH")
    origin: str | None = None
    #: reason -> the files (or rows) skipped for it, in source order, for the log and summary
    skipped_files: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]

    def usable_records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """`(line, record)` for each row of `self.source` that parses; the others are counted
        in `skipped` under their reason."""
        if is_hf_source(self.source):
            for index, record in enumerate(hf_plain_rows(self.source)):
                yield index, record
            return
        for line, record, problem in read_records(self.source):
            if record is None:
                self.skipped[problem or "unreadable row"] += 1
                continue
            yield line, record

    def add(
        self,
        item: dict[str, Any],
        record: dict[str, Any],
        group_field: str | None,
        length: float = 0.0,
    ) -> None:
        """Keep `item`, remembering its record's balancing group (None without one) and its
        length (tokens, seconds: what `data.group_by_length` sorts by)."""
        self.items.append(item)
        self.lengths.append(float(length))
        self.groups.append(
            str(record[group_field]) if group_field and group_field in record else None
        )

    def skip(self, reason: str, where: str | None = None) -> None:
        """Count a skipped row under `reason`, remembering its file (or row) when known."""
        self.skipped[reason] += 1
        if where:
            self.skipped_files.setdefault(reason, []).append(os.path.normpath(where))

    def skipped_listing(self, first: int = 3) -> list[str]:
        """`longer than 2 s: a.wav, b.wav, c.wav (+2 more)`: a line per reason with files."""
        lines = []
        for reason, files in sorted(self.skipped_files.items()):
            more = f" (+{len(files) - first} more)" if len(files) > first else ""
            lines.append(f"{reason}: {', '.join(files[:first])}{more}")
        return lines

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        if self.unpacked is not None:
            # Packed by the trainer (trainers/packing.py): each row records how many it holds.
            examples = sum(item["rows"] for item in self.items)
            text = (
                f"{self.source}: packed {examples} examples ({sum(self.lengths):.0f} tokens) "
                f"into {len(self)} rows"
            )
        else:
            text = f"{self.source}: {len(self)} {self.noun}"
        if self.truncated:
            text += f"; truncated {self.truncated} to data.max_length"
        return text + (f"; skipped {skipped}" if skipped else "")


@dataclass(frozen=True)
class Targets:
    """Where parameter-efficient methods attach by default for one model."""

    lora: list[str] | str
    modules_to_save: list[str] | None = None
    ia3: list[str] | None = None
    ia3_feedforward: list[str] | None = None
    #: Fused expert weights of a Mixture-of-Experts model (LoRA `target_parameters`), and the
    #: names of its router modules; empty for a dense model (modalities.experts).
    parameters: tuple[str, ...] = ()
    routers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Modality:
    """What the trainer core needs from a modality; every field is a plain function.

    - load(model_section, **from_pretrained_options) -> (model, processor)
    - dataset(source, run_config, processor, training) -> Examples
    - collator(processor, run_config, training) -> callable(list of examples) -> batch dict
    - evaluate(model, processor, examples, run_config) -> {metric: value}
    - profile(examples) -> reference dict (the drift baseline the monitor compares with)
    - targets(model) -> Targets (default PEFT attachment points)
    - metric_directions: metric name -> "min" or "max", for best checkpoints and early stopping
    - pairs(source, run_config, processor, training) -> Examples of preference pairs, for the
      preference objectives (None: the modality has no preference data)
    - pair_collator(processor, run_config, training, sides=("chosen", "rejected")) ->
      callable(pairs) -> batch of the chosen rows then the rejected rows (KTO's answers pass
      sides=("completion", "mismatched"))
    - unpaired(source, run_config, processor, training) -> Examples of answers labelled
      desirable or not, each with a mismatched answer for the KL estimate, for KTO (None: the
      modality has no such data)
    - pair_metrics(model, processor, pairs, run_config) -> generated metrics of the chosen
      answers that `eval.metrics` asks for (exact_match, vqa_accuracy)
    - prompt_batch(processor, items, run_config) -> left-padded generation inputs (input_ids,
      attention_mask and the family's image fields) of each item's prompt, for the online
      objectives' rollouts (None: the modality has no prompts to sample from)
    - adapt(model, processor, run_config) -> None: fits a freshly loaded model to the run's
      options before training, so that what is saved behaves the same outside omnitune (None:
      nothing to fit)
    """

    name: str
    load: Callable[..., tuple[Any, Any]]
    dataset: Callable[..., Examples]
    collator: Callable[..., Callable[[list[dict[str, Any]]], dict[str, Any]]]
    evaluate: Callable[..., dict[str, float]]
    profile: Callable[[Examples], dict[str, Any]]
    targets: Callable[[Any], Targets]
    metric_directions: dict[str, str]
    task_type: str | None  # peft TaskType name (CAUSAL_LM), or None to wrap the model as is
    pairs: Callable[..., Examples] | None = None
    pair_collator: Callable[..., Callable[[list[dict[str, Any]]], dict[str, Any]]] | None = None
    pair_metrics: Callable[..., dict[str, float]] | None = None
    pair_metric_directions: dict[str, str] = field(default_factory=dict)
    unpaired: Callable[..., Examples] | None = None
    prompt_batch: Callable[..., dict[str, Any]] | None = None
    adapt: Callable[[Any, Any, Any], None] | None = None


#: Rows drawn together by `sample_examples`: whole runs of neighbouring rows, so a sample of a
#: memory-mapped dataset reads a few hundred stretches of the file, not one page per row.
SAMPLE_BLOCK = 64


def sample_examples(examples: Examples, limit: int, seed: int = 0) -> Examples:
    """At most `limit` of the examples, drawn with `seed` as blocks of `SAMPLE_BLOCK`
    neighbouring rows (without replacement), in dataset order: what the reference profile is
    computed from, so its cost stops growing with the dataset (the drift tests keep at most a
    few thousand values per feature anyway). Row-at-a-time sampling of a 10^6-row Arrow file
    touched most of its pages, which all count in the process's memory."""
    import numpy as np

    if len(examples) <= limit:
        return examples
    blocks = -(-len(examples) // SAMPLE_BLOCK)
    wanted = min(blocks, -(-limit // SAMPLE_BLOCK))
    starts = np.sort(np.random.default_rng(seed).choice(blocks, wanted, replace=False))
    rows = (starts[:, None] * SAMPLE_BLOCK + np.arange(SAMPLE_BLOCK)).ravel()
    picked = rows[rows < len(examples)][:limit]
    items = examples.items
    dataset = getattr(items, "dataset", None)
    if dataset is not None:  # ArrowItems: one read of the picked rows
        rows = list(type(items)(dataset.select(picked), items.json_columns))
    else:
        rows = [items[int(i)] for i in picked]
    return Examples(items=rows, source=examples.source, noun=examples.noun)


def lazy(target: str) -> Callable[..., Any]:
    """The function `module:name`, imported on its first call: a modality's package stays
    cheap to import (no torch, no audio or image libraries) until its code actually runs."""
    module, name = target.split(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = name
    return call


def get_modality(name: str) -> Modality:
    """The registered modality called `name` (imports its package on first use)."""
    if name not in MODALITIES:
        raise ConfigError(f"model.modality: unknown '{name}' (known: {', '.join(MODALITIES)})")
    return importlib.import_module(MODALITIES[name]).MODALITY


def read_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Yield `(line_number, record, problem)` for each row of a JSONL, CSV or Parquet file.

    A row that cannot be parsed yields `(line, None, reason)`, so callers count and skip it;
    a missing or unreadable file is a DataError naming the path. Parquet rows are numbered
    from 1 and read a batch at a time (pyarrow, which `datasets` brings).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    if path.suffix.lower() == ".parquet":
        yield from _parquet_records(path)
        return
    if path.suffix.lower() == ".csv":
        import csv

        with path.open(newline="", encoding="utf-8") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                yield line, dict(row), None
        return
    with path.open(encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                yield line, None, "invalid JSON"
                continue
            if not isinstance(record, dict):
                yield line, None, "not a JSON object"
                continue
            yield line, record, None


def _parquet_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    try:
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path)
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
    except Exception as exc:  # pyarrow's ArrowInvalid and friends: not a Parquet file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    line = 0
    for batch in table.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            line += 1
            yield line, record, None
