"""Text preference data: pairs for DPO and ORPO (a prompt, a chosen and a rejected answer),
and unpaired answers for KTO (a prompt, a completion and a desirable/undesirable label).

Answers are encoded after their prompt with the chat template; labels keep only the final
answer's tokens. A pair whose prompt plus either answer (an unpaired row whose prompt plus its
completion) is longer than `data.max_length` is dropped and counted (or fails the run under
`data.options.overlong: fail`): it is never truncated, which would score the two answers on
different prefixes. An unpaired row also carries its prompt followed by another row's
completion (`modalities.preference.mismatched_partners`), which KTO's KL estimate scores; that
row is cut to `data.max_length` where needed, since it only samples the policy's drift.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from omnitune.core.errors import DataError
from omnitune.modalities.base import Examples
from omnitune.modalities.preference import (
    PAIR_SIDES,
    add_mismatched,
    last_span,
    overlong_reason,
    pair_answers,
    parse_pair,
    parse_unpaired,
    unpaired_answers,
    with_item_tensors,
)
from omnitune.modalities.text.collate import padded_batch
from omnitune.modalities.text.data import IGNORE, encode_chat
from omnitune.modalities.text.options import text_options

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings


def read_text_pairs(source: str, config: RunSettings, tokenizer: Any, training: bool) -> Examples:
    return _read(
        source,
        config,
        tokenizer,
        Examples(items=[], source=source, noun="pairs"),
        parse_pair,
        pair_answers,
    )


def read_text_unpaired(
    source: str, config: RunSettings, tokenizer: Any, training: bool
) -> Examples:
    answers = _read(
        source,
        config,
        tokenizer,
        Examples(items=[], source=source, noun="answers"),
        parse_unpaired,
        unpaired_answers,
    )
    add_mismatched(answers.items)
    limit = config.data.max_length
    for item in answers.items:
        ids, labels = encode_answer(tokenizer, item["prompt_messages"], item["mismatched"])
        item["mismatched_ids"], item["mismatched_labels"] = ids[:limit], labels[:limit]
    return answers


def _read(
    source: str,
    config: RunSettings,
    tokenizer: Any,
    found: Examples,
    parse: Callable[[dict[str, Any]], tuple],
    answers_of: Callable[[tuple], tuple[dict[str, str], dict[str, Any]]],
) -> Examples:
    """Fill `found` with the rows that `parse` accepts whose prompt plus each answer fits.
    `answers_of(parsed)` gives the answers by side (each kept as `SIDE`, `SIDE_ids` and
    `SIDE_labels`; the first is the one generated metrics compare with) and the item's other
    fields. The rest are counted in `found.skipped` by reason, or an over-long row stops the
    run under `data.options.overlong: fail`."""
    fail = text_options(config).overlong == "fail"
    limit = config.data.max_length
    for line, record in found.usable_records():
        parsed = parse(record)
        prompt = parsed[0]
        if prompt is None:
            found.skipped[parsed[-1]] += 1
            continue
        if any(not isinstance(m["content"], str) for m in prompt):
            found.skipped["prompt content is not text"] += 1
            continue
        answers, fields = answers_of(parsed)
        noun = "pair" if len(answers) == 2 else "row"
        item: dict[str, Any] = {}
        for side, answer in answers.items():
            ids, labels = encode_answer(tokenizer, prompt, answer)
            item[side], item[f"{side}_ids"], item[f"{side}_labels"] = answer, ids, labels
        if any(all(t == IGNORE for t in item[f"{side}_labels"]) for side in answers):
            found.skipped["no answer tokens after the chat template"] += 1
            continue
        tokens = max(len(item[f"{side}_ids"]) for side in answers)
        if tokens > limit:
            if fail:
                raise DataError(
                    f"{source}:{line}: {noun} of {tokens} tokens, over data.max_length={limit}; "
                    f"raise it, or set data.options.overlong=drop to skip such {noun}s"
                )
            found.skipped[overlong_reason(limit, noun)] += 1
            continue
        item |= {
            **fields,
            "prompt": " ".join(str(m["content"]) for m in prompt),
            "prompt_messages": prompt,
            "answer": next(iter(answers.values())),
        }
        found.add(item, record, config.data.balance.by, length=tokens)
    return found


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
    tokenizer: Any, config: RunSettings, training: bool, sides: tuple[str, str] = PAIR_SIDES
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """2B right-padded rows: the B first answers (chosen, or KTO's completions), then the B
    second ones (rejected, or the mismatched completions), so one forward pass scores both;
    `reference_logps` and KTO's `desirable` flags ride along."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    first, second = sides

    def collate(pairs: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [(p[f"{first}_ids"], p[f"{first}_labels"]) for p in pairs]
        rows += [(p[f"{second}_ids"], p[f"{second}_labels"]) for p in pairs]
        batch = padded_batch(rows, pad_id)
        return with_item_tensors(batch, pairs)

    return collate
