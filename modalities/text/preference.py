"""Text preference pairs for DPO and ORPO: a prompt, a chosen and a rejected answer.

Both answers are encoded after the same prompt with the chat template; labels keep only the
final answer's tokens. A pair whose prompt plus either answer is longer than
`data.max_length` is dropped and counted (or fails the run under `data.options.overlong:
fail`): it is never truncated, which would score the two answers on different prefixes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from omnitune.core.errors import DataError
from omnitune.modalities.base import Examples
from omnitune.modalities.preference import (
    last_span,
    overlong_pair_reason,
    parse_pair,
    with_reference_logps,
)
from omnitune.modalities.text.collate import padded_batch
from omnitune.modalities.text.data import IGNORE, encode_chat
from omnitune.modalities.text.options import text_options

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings


def read_text_pairs(source: str, config: RunSettings, tokenizer: Any, training: bool) -> Examples:
    pairs = Examples(items=[], source=source, noun="pairs")
    group_field = config.data.balance.by
    fail = text_options(config).overlong == "fail"
    limit = config.data.max_length
    for line, record in pairs.usable_records():
        prompt, chosen, rejected, problem = parse_pair(record)
        if prompt is None:
            pairs.skipped[problem] += 1
            continue
        if any(not isinstance(m["content"], str) for m in prompt):
            pairs.skipped["prompt content is not text"] += 1
            continue
        encoded = {}
        for side, answer in (("chosen", chosen), ("rejected", rejected)):
            ids, labels = encode_answer(tokenizer, prompt, answer)
            encoded[f"{side}_ids"], encoded[f"{side}_labels"] = ids, labels
        if any(all(t == IGNORE for t in encoded[f"{s}_labels"]) for s in ("chosen", "rejected")):
            pairs.skipped["no answer tokens after the chat template"] += 1
            continue
        tokens = max(len(encoded["chosen_ids"]), len(encoded["rejected_ids"]))
        if tokens > limit:
            if fail:
                raise DataError(
                    f"{source}:{line}: pair of {tokens} tokens, over data.max_length={limit}; "
                    "raise it, or set data.options.overlong=drop to skip such pairs"
                )
            pairs.skipped[overlong_pair_reason(limit)] += 1
            continue
        item = {
            **encoded,
            "prompt": " ".join(str(m["content"]) for m in prompt),
            "prompt_messages": prompt,
            "answer": chosen,
        }
        pairs.add(item, record, group_field, length=tokens)
    return pairs


def encode_answer(tokenizer: Any, prompt: list[dict[str, Any]], answer: str) -> tuple[list, list]:
    """Token ids of prompt + answer and labels on the answer only.

    Uses the template's assistant mask ({% generation %}); for templates without one, the
    answer is what follows the prompt rendered with `add_generation_prompt`."""
    messages = [*prompt, {"role": "assistant", "content": answer}]
    ids, labels = encode_chat(tokenizer, messages, assistant_only=True)
    if any(t != IGNORE for t in labels):
        return ids, last_span(labels)
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    prompt_ids = list(prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids)
    if ids[: len(prompt_ids)] != prompt_ids:
        return ids, [IGNORE] * len(ids)
    return ids, [IGNORE] * len(prompt_ids) + ids[len(prompt_ids) :]


def make_pair_collator(
    tokenizer: Any, config: RunSettings, training: bool
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """2B right-padded rows: the B chosen answers, then the B rejected ones (one forward pass
    scores both); `reference_logps` rides along where they were precomputed."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def collate(pairs: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [(p["chosen_ids"], p["chosen_labels"]) for p in pairs]
        rows += [(p["rejected_ids"], p["rejected_labels"]) for p in pairs]
        batch = padded_batch(rows, pad_id)
        return with_reference_logps(batch, pairs)

    return collate
