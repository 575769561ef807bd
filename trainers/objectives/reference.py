"""The reference policy of DPO and KTO: the model as it was before preference training.

Three ways to score answers under it, chosen by how the model trains:
- an adapter (LoRA, IA3, prompt tuning, ...): the same model with the adapter disabled, so no
  second copy sits in memory;
- full fine-tuning: a frozen copy made before the first step;
- `objective.precompute_reference: true` (any method): every pair's reference log-probabilities
  computed once, before training, and cached in the run folder (`reference-logps.pt`), so each
  step runs one forward pass instead of two and a resumed run reads them back. PiSSA and OLoRA
  move the base weights into their adapter, so disabling it no longer gives the starting model;
  they always precompute, with the adapter enabled (at step 0 the adapted model is the
  starting model).
Reference passes run in eval mode (no dropout): a pair's reference score never varies, so the
precomputed and the live scores agree.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnitune.trainers.peft_methods import MUTATING_INIT

if TYPE_CHECKING:
    from omnitune.trainers.config import RunConfig

log = logging.getLogger("omnitune.train")
CACHE_NAME = "reference-logps.pt"


class Reference:
    """Answer log-probabilities under the reference policy for a batch of two answers per item
    (chosen rows then rejected, or KTO's completions then their mismatched partners), from the
    batch's precomputed `reference_logps` when it has them."""

    def __init__(
        self,
        policy: Any,
        frozen: Any = None,
        load_frozen: Callable[[], Any] | None = None,
        chunked: bool = False,
    ) -> None:
        """`load_frozen` builds the frozen model on first use (`omnitune eval` of a full
        fine-tune loads the base model only when the objective scores against it); `chunked`:
        answers are scored through the head in chunks (trainers/chunked_loss.py)."""
        self.policy = policy
        self.frozen = frozen
        self._load_frozen = load_frozen
        self.chunked = chunked

    def logps(self, batch: dict[str, Any]) -> Any:
        if "reference_logps" in batch:
            return batch["reference_logps"]
        import torch

        from omnitune.trainers.objectives.preference import answer_logps

        with torch.no_grad(), self.scoring() as model:
            return answer_logps(model, batch, self.chunked)[0]

    @contextlib.contextmanager
    def scoring(self) -> Iterator[Any]:
        """The reference model to run, in eval mode (the policy with its adapter disabled,
        or the frozen copy); the mode is restored after."""
        if self.frozen is None and self._load_frozen is not None:
            self.frozen, self._load_frozen = self._load_frozen(), None
        model = self.frozen if self.frozen is not None else self.policy
        disabled = (
            self.policy.disable_adapter() if self.frozen is None else contextlib.nullcontext()
        )
        was_training = model.training
        model.eval()
        try:
            with disabled:
                yield model
        finally:
            model.train(was_training)


def build_reference(
    config: RunConfig, model: Any, is_peft: bool, sets: dict[str, Any], collate: Any, run_dir: Path
) -> Reference | None:
    """The run's reference; with precomputation, also writes `reference_logps` into every
    pair of `sets` (split name -> Examples). Call before a checkpoint is loaded: the model
    must still be the starting model."""
    from omnitune.trainers.chunked_loss import chunking_wanted

    section = config.objective
    chunked = chunking_wanted(model, config.train.chunked_loss)
    precompute = section.precomputes_reference() or config.peft.method in MUTATING_INIT
    if not precompute:
        if is_peft:
            return Reference(model, chunked=chunked)
        log.info("reference model: a frozen copy of the starting weights")
        frozen = copy.deepcopy(model).eval()
        for parameter in frozen.parameters():
            parameter.requires_grad_(False)
        return Reference(model, frozen, chunked=chunked)
    enabled = not is_peft or config.peft.method in MUTATING_INIT
    scorer = Reference(model, frozen=model if enabled else None, chunked=chunked)
    cache = run_dir / CACHE_NAME
    saved = _read_cache(cache)
    computed = {}
    for split, pairs in sets.items():
        if pairs is None:
            continue
        key = fingerprint(pairs)
        values = saved.get(split, {}).get(key)
        if values is None:
            values = _score_all(scorer, pairs, collate, config.eval.batch_size)
            log.info(
                "reference log-probabilities of %d %s %s computed", len(pairs), split, pairs.noun
            )
        computed[split] = {key: values}
        for item, (chosen, rejected) in zip(pairs.items, values, strict=True):
            item["reference_logps"] = (chosen, rejected)
    _write_cache(cache, computed)
    return scorer


def fingerprint(pairs: Any) -> str:
    """A digest of what the items score (token ids, answers, images, a KTO answer's
    mismatched partner): cached scores are reused only for the same data."""
    digest = hashlib.sha256()
    for item in pairs.items:
        for key in sorted(item):
            if key != "reference_logps":
                digest.update(f"{key}={item[key]!r};".encode())
    return digest.hexdigest()


def _score_all(scorer: Reference, pairs: Any, collate: Any, batch_size: int) -> list[tuple]:
    device = next(scorer.policy.parameters()).device
    values: list[tuple[float, float]] = []
    for start in range(0, len(pairs), batch_size):
        chunk = [pairs[i] for i in range(start, min(start + batch_size, len(pairs)))]
        batch = collate(chunk)
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        scores = scorer.logps(batch).float().cpu().tolist()
        half = len(chunk)
        values += list(zip(scores[:half], scores[half:], strict=True))
    return values


def _read_cache(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import torch

    return torch.load(path, weights_only=True)


def _write_cache(path: Path, values: dict[str, Any]) -> None:
    import os

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".staging-{path.name}")
    torch.save(values, staging)
    os.replace(staging, path)
