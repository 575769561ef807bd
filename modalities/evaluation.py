"""Evaluation helpers every modality shares: token-weighted loss over a dataset, generations
with their loss, the check that generation is long enough to score, per-example predictions
for `omnitune eval --predictions`, and per-example scores for the loop's gate (a paired
bootstrap resamples examples, so it needs each example's share of every metric)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omnitune.modalities.base import RunSettings


def token_loss(
    model: Any,
    examples: Any,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    batch_size: int,
    max_samples: int | None = None,
) -> float:
    """Mean cross-entropy per target token over `examples` (padding and masked tokens excluded).

    Batches are weighted by their number of target tokens, so the result does not depend on the
    batch size. Causal models predict token t+1 from t, so their first label never counts.
    """
    import torch

    count = len(examples) if max_samples is None else min(len(examples), max_samples)
    shift = 0 if model.config.is_encoder_decoder else 1
    device = next(model.parameters()).device
    per_example = _SCORES.get() is not None
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    # no_grad rather than inference_mode here and in every evaluation the loop runs: FSDP
    # reuses the buffers a forward gathers parameters into, and a tensor made in inference
    # mode can never be written outside it (the next training step would fail).
    with torch.no_grad():
        for start in range(0, count, batch_size):
            batch = collate([examples[i] for i in range(start, min(start + batch_size, count))])
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            n = int((batch["labels"][:, shift:] != -100).sum())
            if per_example:
                sums, counts = _row_losses(model(**batch), batch["labels"], shift)
                log_example_scores("loss", sums, counts)
                total += sum(sums)
            elif n:
                total += float(model(**batch).loss) * n
            tokens += n
    model.train(was_training)
    return total / tokens if tokens else float("nan")


def _row_losses(output: Any, labels: Any, shift: int) -> tuple[list[float], list[float]]:
    """Each row's summed target-token cross-entropy and its number of target tokens: what the
    batch's mean loss is made of (a causal model's logits predict the next position)."""
    import torch

    logits = output.logits[:, -labels.shape[1] :]  # prompt tuning prepends virtual tokens
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
    )
    counts = (labels != -100).sum(-1)
    return losses.sum(-1).tolist(), counts.float().tolist()


def loss_and_generations(
    model: Any,
    examples: Any,
    config: RunSettings,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    generate: Callable[[list[dict[str, Any]]], list[str]],
) -> tuple[list[dict[str, Any]], float, list[str]]:
    """Token loss and generated outputs on the first `data.max_eval_samples` examples.

    `generate(subset)` runs with the model in eval mode; the model's mode is restored after,
    so evaluating in the middle of training leaves dropout as it was.
    """
    limit = config.data.max_eval_samples or len(examples)
    subset = [examples[i] for i in range(min(limit, len(examples)))]
    loss = token_loss(model, subset, collate, config.eval.batch_size)
    was_training = model.training
    model.eval()
    try:
        outputs = generate(subset)
    finally:
        model.train(was_training)
    return subset, loss, outputs


#: (max_new_tokens, longest reference) pairs already warned about in this process: a run
#: evaluates many times, and the warning says the same each time.
_WARNED: set[tuple[int, int, int]] = set()


def warn_if_generation_too_short(
    tokenizer: Any, references: list[str], config: RunSettings
) -> None:
    """Warn when `eval.generation.max_new_tokens` is shorter than some reference answers: those
    can never be generated whole, so they can never score (a VQA answer of 4 tokens under a
    cap of 3 is always wrong, whatever the model learned)."""
    import logging

    limit = config.eval.generation.max_new_tokens
    lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references if r]
    longer = [n for n in lengths if n > limit]
    if not longer:
        return
    key = (limit, max(longer), len(longer))
    if key in _WARNED:
        return
    _WARNED.add(key)
    logging.getLogger("omnitune.eval").warning(
        "eval.generation.max_new_tokens is %d, but %d of %d reference answers are longer (up to "
        "%d tokens): they cannot be generated whole and always score as wrong; raise it to at "
        "least %d",
        limit,
        len(longer),
        len(lengths),
        max(longer),
        max(longer),
    )


#: Where `record_predictions` collects per-example rows; None: nobody asked (the usual case).
_PREDICTIONS: ContextVar[list[dict[str, Any]] | None] = ContextVar("predictions", default=None)


@contextmanager
def record_predictions() -> Iterator[list[dict[str, Any]]]:
    """Collect, while the block runs, one row per generated example: its input, reference,
    prediction and score (what `omnitune eval --predictions FILE` writes)."""
    rows: list[dict[str, Any]] = []
    token = _PREDICTIONS.set(rows)
    try:
        yield rows
    finally:
        _PREDICTIONS.reset(token)


def log_predictions(
    inputs: list[Any],
    references: list[str],
    predictions: list[str],
    score: Callable[[str, str], float],
) -> None:
    """Hand a modality's generated examples to `record_predictions`, when it is collecting;
    `score(reference, prediction)` runs only then (evaluation during training pays nothing)."""
    rows = _PREDICTIONS.get()
    if rows is None:
        return
    for item, reference, prediction in zip(inputs, references, predictions, strict=True):
        rows.append(
            {
                "input": item,
                "reference": reference,
                "prediction": prediction,
                "score": score(reference, prediction),
            }
        )


#: Where `record_example_scores` collects per-example scores; None: nobody asked.
_SCORES: ContextVar[dict[str, tuple[list[float], list[float]]] | None] = ContextVar(
    "example_scores", default=None
)


@contextmanager
def record_example_scores() -> Iterator[dict[str, tuple[list[float], list[float]]]]:
    """Collect, while the block runs, each metric's per-example parts as `{metric: (values,
    weights)}`: the metric over any subset of examples is sum(values) / sum(weights) (exact
    match: 1 or 0 over 1; WER: word errors over reference words; loss: summed token loss over
    target tokens). Examples come in evaluation order, so two models scored on the same data
    line up example by example."""
    scores: dict[str, tuple[list[float], list[float]]] = {}
    token = _SCORES.set(scores)
    try:
        yield scores
    finally:
        _SCORES.reset(token)


def log_example_scores(
    metric: str, values: Sequence[float], weights: Sequence[float] | None = None
) -> None:
    """Hand per-example parts of `metric` to `record_example_scores` (weights default to 1);
    does nothing unless it is collecting."""
    scores = _SCORES.get()
    if scores is None:
        return
    column = scores.setdefault(metric, ([], []))
    column[0].extend(float(v) for v in values)
    column[1].extend([1.0] * len(values) if weights is None else [float(w) for w in weights])


def example_scores_wanted() -> bool:
    """Whether someone collects per-example scores (so a modality computes them)."""
    return _SCORES.get() is not None
