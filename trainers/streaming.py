"""`data.streaming`: a text file read lazily through a seeded shuffle buffer, resumable exactly.

The file is read row by row (`read_records`: JSONL, CSV, Parquet a batch at a time), so a file
larger than memory or disk space for a prepared copy trains all the same. Rows pass through a
buffer of `data.shuffle_buffer` rows: once it is full, each new row replaces one drawn at
random (a seeded numpy generator), which is emitted; at the end of the file the rest of the
buffer is emitted in random order and the next epoch starts with a generator seeded for it.
An emitted row is tokenised then; one that cannot be used is counted under its reason (in the
first epoch) and the next row takes its place.

The position is small and goes into every checkpoint (`TrainState.stream`): the epoch, the rows
read so far, the line numbers in the buffer, the generator's state and the batches taken. A
resumed run reads the file again up to that row, keeping the buffered lines, and continues
with the very rows the uninterrupted run would have taken. With several processes, every rank
reads the same stream and takes every `world`-th example.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from omnitune.core.errors import DataError
from omnitune.modalities.base import Examples, read_records
from omnitune.modalities.text.data import _encode, overlong_reason
from omnitune.modalities.text.options import text_options
from omnitune.trainers.batches import batch_seed, seeded_collate

if TYPE_CHECKING:
    from omnitune.trainers.config import RunConfig


class TextStream:
    """Examples of `source` in the buffer-shuffled order of one seed, one at a time."""

    def __init__(self, source: str, config: RunConfig, tokenizer: Any) -> None:
        self.source, self.tokenizer = source, tokenizer
        self.seed = config.train.seed
        self.size = config.data.shuffle_buffer
        self.limit = config.data.max_length
        self.overlong = text_options(config).overlong
        self.assistant_only = config.objective.assistant_only_loss
        self.skipped: Counter[str] = Counter()
        self.truncated = 0
        self.epoch, self.read, self.emitted = 0, 0, 0
        self.rng = np.random.default_rng([self.seed, 0])
        self.buffer: list[tuple[int, dict[str, Any]]] = []
        self._rows: Iterator[tuple[int, dict[str, Any] | None, str | None]] | None = None

    # position ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "read": self.read,
            "emitted": self.emitted,
            "buffer": [line for line, _ in self.buffer],
            "rng": copy.deepcopy(self.rng.bit_generator.state),
            "skipped": dict(self.skipped),
            "truncated": self.truncated,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from `saved`: read the file again up to the saved row, keeping the lines
        that were in the buffer (in their saved order)."""
        self.epoch, self.emitted = saved["epoch"], saved["emitted"]
        self.skipped, self.truncated = Counter(saved["skipped"]), saved["truncated"]
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = saved["rng"]
        wanted = {line: at for at, line in enumerate(saved["buffer"])}
        found: list[tuple[int, dict[str, Any]] | None] = [None] * len(wanted)
        self._rows = iter(read_records(self.source))
        self.read = 0
        while self.read < saved["read"]:
            line, record, _ = next(self._rows)
            self.read += 1
            if line in wanted and record is not None:
                found[wanted[line]] = (line, record)
        if any(entry is None for entry in found):
            raise DataError(f"{self.source}: the file changed since the checkpoint was written")
        self.buffer = [entry for entry in found if entry is not None]

    # reading ----------------------------------------------------------------------------------

    def next_example(self) -> tuple[int, dict[str, Any]]:
        """(line, encoded example) of the next usable row, crossing epochs as needed."""
        for _attempt in range(10_000_000):
            line, record = self._next_row()
            encoded, problem = self._usable(record)
            if encoded is not None:
                self.emitted += 1
                return line, encoded
            if self.epoch == 0:
                self.skipped[problem] += 1
        raise DataError(f"{self.source}: no usable training examples ({self.summary()})")

    def _next_row(self) -> tuple[int, dict[str, Any]]:
        while True:
            if self._rows is None:
                self._rows = iter(read_records(self.source))
            incoming = next(self._rows, None)
            if incoming is None:  # the file is done: drain the buffer, then a new epoch
                if self.buffer:
                    return self._take(None)
                if self.read == 0:
                    raise DataError(f"{self.source}: no rows")
                self.epoch, self.read, self._rows = self.epoch + 1, 0, None
                self.rng = np.random.default_rng([self.seed, self.epoch])
                continue
            line, record, problem = incoming
            self.read += 1
            if record is None:
                if self.epoch == 0:
                    self.skipped[problem or "unreadable row"] += 1
                continue
            if len(self.buffer) < self.size:
                self.buffer.append((line, record))
                continue
            return self._take((line, record))

    def _take(self, replacement: tuple[int, dict[str, Any]] | None) -> tuple[int, dict[str, Any]]:
        at = int(self.rng.integers(len(self.buffer)))
        taken = self.buffer[at]
        if replacement is not None:
            self.buffer[at] = replacement
        else:  # swap-remove: O(1), and the order stays a function of the draws
            self.buffer[at] = self.buffer[-1]
            self.buffer.pop()
        return taken

    def _usable(self, record: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        encoded, problem = _encode(record, self.tokenizer, self.assistant_only)
        if encoded is None or len(encoded["input_ids"]) <= self.limit:
            return encoded, problem
        if self.overlong == "fail":
            raise DataError(
                f"{self.source}: a row of {len(encoded['input_ids'])} tokens, over "
                f"data.max_length={self.limit}; raise it, or set data.options.overlong=drop"
            )
        if self.overlong == "drop":
            return None, overlong_reason(self.limit)
        encoded["input_ids"] = encoded["input_ids"][: self.limit]
        encoded["labels"] = encoded["labels"][: self.limit]
        if self.epoch == 0:
            self.truncated += 1
        return encoded, ""

    # what the loop asks of a dataset ----------------------------------------------------------

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        text = f"{self.source}: streamed (epoch {self.epoch}, {self.emitted} examples so far)"
        return text + (f"; skipped {skipped}" if skipped else "")

    def head(self, count: int) -> Examples:
        """The first `count` usable rows in file order (the reference profile's sample)."""
        examples = Examples(items=[], source=self.source)
        for _, record, _ in read_records(self.source):
            if len(examples) >= count:
                break
            encoded, _ = self._usable(record) if record is not None else (None, "")
            if encoded is not None:
                examples.add(encoded, record, None, length=len(encoded["input_ids"]))
        return examples


class StreamBatchSource:
    """The next (line numbers, collated batch) from a stream, keeping `state.stream` current."""

    def __init__(
        self,
        stream: TextStream,
        collate: Callable[[list[Any]], Any],
        state: Any,
        rank: int,
        world: int,
        batch_size: int,
        seed: int,
    ) -> None:
        self.stream, self.collate, self.state = stream, collate, state
        self.rank, self.world, self.batch_size, self.seed = rank, world, batch_size, seed
        if state.stream is not None:
            stream.restore(state.stream)
        self.batches = state.stream["batches"] if state.stream else 0

    def next(self) -> tuple[list[int], Any]:
        lines, items = [], []
        while len(items) < self.batch_size:
            index = self.stream.emitted
            line, example = self.stream.next_example()
            if index % self.world == self.rank:
                lines.append(line)
                items.append(example)
        seed = batch_seed(self.seed, self.stream.epoch, self.batches, self.rank)
        batch = seeded_collate(self.collate, items, seed)
        self.batches += 1
        self.state.epoch, self.state.batch_in_epoch = self.stream.epoch, 0
        self.state.stream = {**self.stream.snapshot(), "batches": self.batches}
        return lines, batch

    def close(self) -> None:
        pass
