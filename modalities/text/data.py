"""Reading text training data: chat JSONL, prompt/completion pairs, or plain text.

Accepted rows (JSONL, CSV, Parquet or a Hugging Face dataset): `{"messages": [{"role": ...,
"content": ...}, ...]}`, `{"prompt": ..., "completion": ...}` or `{"text": ...}`. Rows that
cannot be used are skipped and counted by reason; labels are -100 outside the assistant's turns
when the objective asks for an assistant-only loss. An example longer than `data.max_length` is
dropped and counted, fails the run, or is truncated, as `data.options.overlong` says.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnitune.core.errors import DataError
from omnitune.modalities.base import Examples
from omnitune.modalities.hf_sources import is_hf_source
from omnitune.modalities.text.options import text_options

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings

IGNORE = -100
#: File types read through the prepared (Arrow, cached, multi-process) path.
PREPARED_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet"}


def read_text_dataset(source: str, config: RunSettings, tokenizer: Any, training: bool) -> Examples:
    """The examples of a text source: prepared in Arrow (cached) for files and hub datasets
    when `data.cache` is on, else read row by row into memory (`data.cache: false`)."""
    if config.data.cache and (is_hf_source(source) or _prepared_kind(source) is not None):
        return read_prepared(source, config, tokenizer)
    return read_rows(source, config, tokenizer)


def read_rows(source: str, config: RunSettings, tokenizer: Any) -> Examples:
    examples = Examples(items=[], source=source)
    group_field = config.data.balance.by
    assistant_only = config.objective.assistant_only_loss
    overlong = text_options(config).overlong
    limit = config.data.max_length
    for line, record in examples.usable_records():
        encoded, problem = _encode(record, tokenizer, assistant_only)
        if encoded is None:
            examples.skipped[problem] += 1
            continue
        tokens = len(encoded["input_ids"])
        if tokens > limit:
            if overlong == "fail":
                raise DataError(
                    f"{source}:{line}: {tokens} tokens, over data.max_length={limit}; raise it, "
                    "or set data.options.overlong=drop (skip such examples) or truncate"
                )
            if overlong == "drop":
                examples.skipped[overlong_reason(limit)] += 1
                continue
            encoded["input_ids"] = encoded["input_ids"][:limit]
            encoded["labels"] = encoded["labels"][:limit]
            if all(label == IGNORE for label in encoded["labels"][1:]):
                examples.skipped["no trainable tokens within max_length"] += 1
                continue
            examples.truncated += 1
        examples.add(encoded, record, group_field, length=len(encoded["input_ids"]))
    return examples


def overlong_reason(limit: int) -> str:
    return f"longer than data.max_length ({limit} tokens)"


def chat_messages(record: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The row as chat messages (`messages`, or `prompt`/`completion`), or None."""
    messages = record.get("messages")
    if messages is None and "prompt" in record and "completion" in record:
        messages = [
            {"role": "user", "content": str(record["prompt"])},
            {"role": "assistant", "content": str(record["completion"])},
        ]
    return messages


def well_formed(messages: Any) -> bool:
    return isinstance(messages, list) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in messages
    )


def encode_chat(
    tokenizer: Any, messages: list[dict[str, Any]], assistant_only: bool
) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and its labels (-100 outside assistant turns if asked)."""
    encoded = tokenizer.apply_chat_template(
        messages, return_dict=True, return_assistant_tokens_mask=assistant_only
    )
    ids = list(encoded["input_ids"])
    if not assistant_only:
        return ids, list(ids)
    mask = encoded["assistant_masks"]
    return ids, [t if m else IGNORE for t, m in zip(ids, mask, strict=True)]


def _encode(
    record: dict[str, Any], tokenizer: Any, assistant_only: bool
) -> tuple[dict[str, Any] | None, str]:
    messages = chat_messages(record)
    extra: dict[str, Any] = {}
    if messages is not None:
        if not well_formed(messages):
            return None, "malformed messages"
        ids, labels = encode_chat(tokenizer, messages, assistant_only)
        prompt = " ".join(str(m["content"]) for m in messages if m["role"] != "assistant")
        if messages and messages[-1]["role"] == "assistant":
            # What a generated metric (exact_match) asks and expects.
            extra = {"prompt_messages": messages[:-1], "answer": messages[-1]["content"]}
    elif isinstance(record.get("text"), str):
        ids = tokenizer(record["text"])["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = [*ids, tokenizer.eos_token_id]
        labels = list(ids)
        prompt = record["text"]
    else:
        return None, "no messages, prompt/completion or text field"
    if not ids:
        return None, "empty text"
    if all(label == IGNORE for label in labels[1:]):
        return None, "no trainable tokens"
    return {"input_ids": ids, "labels": labels, "prompt": prompt, **extra}, ""


# The prepared path --------------------------------------------------------------------------


def _prepared_kind(source: str) -> str | None:
    """The `datasets` builder that reads `source` whole, or None (a folder, an odd suffix)."""
    path = Path(source)
    if not path.is_file():
        return None if path.exists() else "json-lines"  # missing: the reader names it
    suffix = path.suffix.lower()
    if suffix not in PREPARED_SUFFIXES:
        return None
    return {"csv": "csv", "parquet": "parquet"}.get(suffix[1:], "json-lines")


def read_prepared(source: str, config: RunSettings, tokenizer: Any) -> Examples:
    """Tokenise `source` once into an Arrow dataset under $OMNITUNE_CACHE/prepared/text/
    (with `data.num_proc` processes), or open the one an earlier run built."""
    import numpy as np

    from omnitune.modalities.prepared import (
        ArrowItems,
        content_fingerprint,
        prepare,
        processor_fingerprint,
    )

    hub = is_hf_source(source)
    if not hub and not Path(source).is_file():
        raise DataError(f"{source}: no such data file")
    kind = "hf" if hub else _prepared_kind(source)
    encoder = Encoder(
        assistant_only=config.objective.assistant_only_loss,
        limit=config.data.max_length,
        overlong=text_options(config).overlong,
        group_field=config.data.balance.by,
        form=kind or "json-lines",
        tokenizer=tokenizer,
    )
    if hub:
        from omnitune.modalities.hf_sources import hf_fingerprint

        content = hf_fingerprint(source)
    else:
        content = content_fingerprint(source)
    settings = {
        "kind": "text",
        "content": content,
        "form": encoder.form,
        "tokenizer": processor_fingerprint(tokenizer),
        **encoder.settings(),
    }

    def build(scratch: Path) -> tuple[Any, Counter[str], int]:
        return _build(source, encoder, config.data.num_proc, scratch)

    prepared = prepare("text", settings, build)
    how = f"prepared in {prepared.seconds:.1f} s" if prepared.built else "from cache"
    dataset = prepared.dataset
    if dataset is None:  # every row skipped: the summary says why
        return Examples(items=[], source=source, skipped=prepared.skipped, origin=how)
    # Straight from the memory-mapped Arrow table: datasets' numpy formatting of a 10^6-row
    # column took 0.5 s; this takes milliseconds.
    lengths = dataset.data.column("length").to_numpy().astype(np.float64)
    if encoder.group_field:
        groups: Any = np.asarray(dataset.data.column("group").to_pylist(), dtype=object)
    else:
        groups = np.full(len(dataset), None, dtype=object)
    items = dataset.remove_columns(["length", "group", "line"])
    return Examples(
        items=ArrowItems(items, json_columns=("prompt_messages",)),
        source=source,
        skipped=prepared.skipped,
        groups=groups,
        lengths=lengths,
        truncated=prepared.truncated,
        origin=f"{how}: {prepared.path}",
    )


def _build(
    source: str, encoder: Encoder, num_proc: int | None, scratch: Path
) -> tuple[Any, Counter[str], int]:
    import datasets
    import numpy as np

    from omnitune.modalities.prepared import workers_for

    raw_cache = str(scratch / "raw")
    if encoder.form == "hf":
        from omnitune.modalities.hf_sources import load_hf

        raw = load_hf(source)
    elif encoder.form == "csv":
        # Every cell as text, blanks as "": what csv.DictReader gives the row-by-row reader.
        raw = datasets.load_dataset(
            "csv",
            data_files=source,
            split="train",
            cache_dir=raw_cache,
            dtype=str,
            keep_default_na=False,
        )
    elif encoder.form == "parquet":
        raw = datasets.load_dataset(
            "parquet", data_files=source, split="train", cache_dir=raw_cache
        )
    else:
        raw = datasets.load_dataset("text", data_files=source, split="train", cache_dir=raw_cache)
    encoded = raw.map(
        encoder,
        batched=True,
        batch_size=1000,
        with_indices=True,
        num_proc=workers_for(len(raw), num_proc),
        remove_columns=raw.column_names,
        features=encoder.features(),
        cache_file_name=str(scratch / "encoded.arrow"),
        desc=f"tokenising {Path(source).name}",
    )
    # Counted with pyarrow on the memory-mapped column: as a numpy array of strings, 10^6
    # reasons took 160 MB (fixed-width unicode) in the process that trains next.
    import pyarrow.compute as pc

    reasons = encoded.data.column("skip")
    failed = pc.index(pc.starts_with(reasons, "fail:"), True).as_py()
    if failed >= 0:
        first = encoded[failed]
        tokens = first["skip"].removeprefix("fail:")
        raise DataError(
            f"{source}:{first['line']}: {tokens} tokens, over data.max_length={encoder.limit}; "
            "raise it, or set data.options.overlong=drop (skip such examples) or truncate"
        )
    counts = pc.value_counts(reasons).to_pylist()
    skipped = Counter(
        {c["values"]: c["counts"] for c in counts if c["values"] not in ("", "blank line")}
    )
    usable = pc.equal(reasons, "")
    truncated = pc.sum(pc.and_(usable, encoded.data.column("truncated"))).as_py() or 0
    kept = encoded.select(np.flatnonzero(usable.to_numpy(zero_copy_only=False)))
    return kept.remove_columns(["skip", "truncated"]), skipped, truncated


class Encoder:
    """`datasets.map` function: a batch of raw rows to token ids, labels and the fields the
    metrics need, one output row per input row (`skip` says why a row is not used)."""

    def __init__(
        self,
        assistant_only: bool,
        limit: int,
        overlong: str,
        group_field: str | None,
        form: str,
        tokenizer: Any,
    ) -> None:
        self.assistant_only, self.limit, self.overlong = assistant_only, limit, overlong
        self.group_field, self.form, self.tokenizer = group_field, form, tokenizer

    def settings(self) -> dict[str, Any]:
        return {
            "assistant_only": self.assistant_only,
            "max_length": self.limit,
            "overlong": self.overlong,
            "group_field": self.group_field,
        }

    def features(self) -> Any:
        from datasets import Features, Sequence, Value

        return Features(
            {
                "input_ids": Sequence(Value("int32")),
                "labels": Sequence(Value("int32")),
                "prompt": Value("string"),
                "answer": Value("string"),
                "prompt_messages": Value("string"),
                "group": Value("string"),
                "length": Value("int32"),
                "line": Value("int64"),
                "skip": Value("string"),
                "truncated": Value("bool"),
            }
        )

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {name: [] for name in self.features()}
        columns = list(batch)
        first_line = {"csv": 2, "hf": 0}.get(self.form, 1)  # hub rows: their index
        for index, values in zip(indices, zip(*batch.values(), strict=True), strict=True):
            line = index + first_line
            record, problem = self._record(dict(zip(columns, values, strict=True)))
            encoded = None
            if record is not None:
                encoded, problem = _encode(record, self.tokenizer, self.assistant_only)
            truncated = False
            if encoded is not None:
                encoded, problem, truncated = self._fit(encoded)
            row = encoded or {}
            messages = row.get("prompt_messages")
            out["input_ids"].append(row.get("input_ids", []))
            out["labels"].append(row.get("labels", []))
            out["prompt"].append(row.get("prompt", ""))
            out["answer"].append(None if row.get("answer") is None else str(row["answer"]))
            out["prompt_messages"].append(json.dumps(messages) if messages is not None else "")
            group = record.get(self.group_field) if record and self.group_field else None
            out["group"].append(None if group is None else str(group))
            out["length"].append(len(row.get("input_ids", [])))
            out["line"].append(line)
            out["skip"].append(problem)
            out["truncated"].append(truncated)
        return out

    def _record(self, values: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        if self.form != "json-lines":
            return values, ""
        text = values["text"]
        if not text.strip():
            return None, "blank line"
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            return None, "invalid JSON"
        if not isinstance(record, dict):
            return None, "not a JSON object"
        return record, ""

    def _fit(self, encoded: dict[str, Any]) -> tuple[dict[str, Any] | None, str, bool]:
        """data.max_length applied as `overlong` says: (row or None, skip reason, truncated)."""
        tokens = len(encoded["input_ids"])
        if tokens <= self.limit:
            return encoded, "", False
        if self.overlong == "fail":
            return None, f"fail:{tokens}", False
        if self.overlong == "drop":
            return None, overlong_reason(self.limit), False
        encoded["input_ids"] = encoded["input_ids"][: self.limit]
        encoded["labels"] = encoded["labels"][: self.limit]
        if all(label == IGNORE for label in encoded["labels"][1:]):
            return None, "no trainable tokens within max_length", False
        return encoded, "", True
