"""Train small byte-level BPE tokenizers offline, for the tiny models the tests and demos use.

Real checkpoints bring their own tokenizers; this exists so that the project can build complete,
loadable models (`AutoTokenizer.from_pretrained(folder)`) without reaching a model hub.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer


def shipped_corpus() -> list[str]:
    """The small English corpus shipped with omnitune (prose, commands, digit strings)."""
    text = (
        resources.files("omnitune.modalities")
        .joinpath("assets/tiny_corpus.txt")
        .read_text(encoding="utf-8")
    )
    return [line for line in text.splitlines() if line.strip()]


def train_bpe(
    vocab_size: int,
    special_tokens: list[str],
    corpus: Iterable[str] | None = None,
) -> Tokenizer:
    """A byte-level BPE trained on `corpus` (default: the shipped one).

    Special tokens get the first ids, in the order given: Whisper relies on that order to
    compute language ids.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus or shipped_corpus()), trainer)
    return tokenizer
