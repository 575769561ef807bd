"""Mixture-of-Experts training: the router's load-balancing loss and the experts' load.

Every objective computes its loss from `model(**batch)`; none of them knows about routers. A
`RouterWatch` hooks the router modules (`omnitune.modalities.experts.find_router`) and keeps
the router logits of the forward passes that run with gradients (the policy's, never a frozen
reference's or a generation's), so the loop can add `moe.router_aux_loss_coef` times the
family's own load-balancing loss (transformers' `load_balancing_loss_func`, Switch
Transformer's f·P form, padding masked out) to whatever the objective returned. From the same
logits it measures what the run log shows:

- `expert_load_cv`: per layer, the coefficient of variation (std / mean) of the share of
  routed tokens each expert receives, averaged over layers; 0 is a perfectly even load, and
  sqrt(E - 1) is every token on one expert;
- `router_entropy`: the mean entropy (nats) of the router's softmax over the experts; it falls
  as routing becomes confident, and log(E) is a router that has not chosen;
- `router_aux_loss`: the balancing loss itself (1 x top_k at a perfectly even load);
- a `kind: "moe"` record in metrics.jsonl at every logging step with each layer's share per
  expert (`expert_share`), and the same at each evaluation.

An expert whose share stays below `moe.collapse_share` of an even share for
`moe.collapse_steps` steps is reported once in the log: it has collapsed (it gets no tokens,
so nothing trains it) and a larger coefficient, or training the router, is the usual fix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from omnitune.modalities.experts import Router, find_router

log = logging.getLogger("omnitune.train")


class RouterWatch:
    """Router logits of the model's forward passes, and the load statistics they give."""

    def __init__(self, model: Any, router: Router, collapse_share: float, collapse_steps: int):
        import torch

        self.router = router
        self.collapse_share = collapse_share
        self.collapse_steps = collapse_steps
        self.recording = False
        self._forwards: list[tuple[Any, list[Any]]] = []  # (attention mask, router logits)
        self._window = None  # routed-token counts [layers, experts] since the last log
        self._low_since: dict[tuple[int, int], int] = {}
        self._reported: set[tuple[int, int]] = set()
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        routers = [m for m in base.modules() if isinstance(m, router.module_class)]
        self._handles = [m.register_forward_hook(self._on_router) for m in routers]
        self._handles.append(base.register_forward_pre_hook(self._on_model_call, with_kwargs=True))
        self._torch = torch

    # -- hooks -------------------------------------------------------------------------------
    def _on_model_call(self, module: Any, args: tuple, kwargs: dict) -> None:
        if self._wanted():
            self._forwards.append((kwargs.get("attention_mask"), []))

    def _on_router(self, module: Any, args: tuple, output: Any) -> None:
        if not self._wanted():
            return
        logits = output[self.router.index] if isinstance(output, tuple) else output
        if not self._forwards:  # a router called outside a model call (should not happen)
            self._forwards.append((None, []))
        self._forwards[-1][1].append(logits)

    def _wanted(self) -> bool:
        return self.recording and (self._torch.is_grad_enabled() or self._eval)

    _eval = False

    # -- training ----------------------------------------------------------------------------
    def wrap(self, step_loss: Callable[..., Any], coef: float) -> Callable[..., Any]:
        """`step_loss` with `coef` x the balancing loss added and the load metrics reported."""

        def with_router_loss(model: Any, batch: dict[str, Any], indices: list[int]) -> Any:
            self._forwards, self.recording = [], True
            try:
                loss, metrics = step_loss(model, batch, indices)
            finally:
                self.recording = False
            forwards, self._forwards = self._forwards, []
            if not any(logits for _, logits in forwards):
                return loss, metrics
            aux = self._balancing_loss(forwards)
            if coef and aux is not None:
                loss = loss + coef * aux
            counts, entropy = self._load(forwards)
            self._window = counts if self._window is None else self._window + counts
            metrics = dict(metrics)
            if aux is not None:
                metrics["router_aux_loss"] = aux.detach()
            metrics["expert_load_cv"] = load_cv(counts)
            metrics["router_entropy"] = entropy
            return loss, metrics

        return with_router_loss

    def _balancing_loss(self, forwards: list[tuple[Any, list[Any]]]) -> Any:
        """The family's own loss, averaged over the forward passes of the step (a DPO step
        has one per side), each with its own padding mask."""
        own = self.router.balancing_loss
        if own is None:
            return None
        losses = []
        for mask, logits in forwards:
            if not logits:
                continue
            tokens = logits[0].shape[0]
            fits = mask is not None and mask.dim() == 2 and mask.numel() == tokens
            losses.append(
                own(
                    tuple(logits),
                    self.router.num_experts,
                    self.router.top_k,
                    mask if fits else None,
                )
            )
        return sum(losses) / len(losses)

    def _load(self, forwards: list[tuple[Any, list[Any]]]) -> tuple[Any, float]:
        """Routed-token counts [layers, experts] (padding excluded) and the mean router
        entropy over the forwards' tokens."""
        torch = self._torch
        experts, top_k = self.router.num_experts, self.router.top_k
        # The routers a forward ran, in order (a trained router's inactive copy never runs).
        layers = max(len(logits) for _, logits in forwards)
        counts = torch.zeros(layers, experts, dtype=torch.float64)
        entropy_sum, entropy_tokens = 0.0, 0
        with torch.no_grad():
            for mask, logits in forwards:
                keep = None
                if (
                    mask is not None
                    and mask.dim() == 2
                    and logits
                    and mask.numel() == logits[0].shape[0]
                ):
                    keep = mask.reshape(-1).bool().cpu()
                for layer, layer_logits in enumerate(logits):
                    values = layer_logits.detach().float().cpu()
                    if keep is not None:
                        values = values[keep]
                    if values.numel() == 0:
                        continue
                    probs = values.softmax(dim=-1)
                    chosen = probs.topk(top_k, dim=-1).indices.reshape(-1)
                    counts[layer] += torch.bincount(chosen, minlength=experts).double()
                    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1)
                    entropy_sum += float(entropy.sum())
                    entropy_tokens += entropy.numel()
        return counts, entropy_sum / max(entropy_tokens, 1)

    def window_record(self, step: int) -> dict[str, Any] | None:
        """The `kind: "moe"` record of the steps since the last one (None before any), and the
        collapse check over them."""
        counts, self._window = self._window, None
        if counts is None:
            return None
        shares = share_of(counts)
        self._check_collapse(shares, step)
        return {"expert_share": _rounded(shares), "expert_load_cv": load_cv(counts)}

    def _check_collapse(self, shares: Any, step: int) -> None:
        even = 1.0 / self.router.num_experts
        for layer, row in enumerate(shares.tolist()):
            for expert, share in enumerate(row):
                key = (layer, expert)
                if share >= self.collapse_share * even:
                    self._low_since.pop(key, None)
                    continue
                since = self._low_since.setdefault(key, step)
                if step - since >= self.collapse_steps and key not in self._reported:
                    self._reported.add(key)
                    log.warning(
                        "expert %d of MoE layer %d has had %.2f%% of the routed tokens since "
                        "step %d (an even share is %.1f%%): it has collapsed, and nothing trains "
                        "it; raise moe.router_aux_loss_coef or set moe.train_router=true",
                        expert,
                        layer,
                        100 * share,
                        since,
                        100 * even,
                    )

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, run: Callable[[], dict[str, float]]) -> tuple[dict[str, float], Any]:
        """`run()`'s metrics with the experts' load over the evaluation's forwards added, and
        the per-layer shares (None when no token was routed)."""
        self._forwards, self.recording, self._eval = [], True, True
        try:
            metrics = run()
        finally:
            self.recording, self._eval = False, False
        forwards, self._forwards = self._forwards, []
        if not any(logits for _, logits in forwards):
            return metrics, None
        counts, entropy = self._load(forwards)
        metrics = {**metrics, "expert_load_cv": load_cv(counts), "router_entropy": entropy}
        return metrics, _rounded(share_of(counts))

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def share_of(counts: Any) -> Any:
    """Each layer's routed-token counts as shares of that layer's routings."""
    return counts / counts.sum(dim=1, keepdim=True).clamp_min(1)


def load_cv(counts: Any) -> float:
    """Mean over layers of std/mean of the experts' shares (population std): 0 when even."""
    shares = share_of(counts)
    mean = shares.mean(dim=1, keepdim=True)
    cv = shares.std(dim=1, unbiased=False, keepdim=True) / mean.clamp_min(1e-12)
    return float(cv.mean())


def _rounded(shares: Any) -> list[list[float]]:
    return [[round(v, 5) for v in row] for row in shares.tolist()]


def watch_routers(model: Any, section: Any) -> tuple[RouterWatch | None, float]:
    """A watch over `model`'s routers and the coefficient to apply (the family's own when
    `moe.router_aux_loss_coef` is unset); (None, 0) for a dense model."""
    router = find_router(model)
    if router is None:
        return None, 0.0
    coef = router.own_coef if section.router_aux_loss_coef is None else section.router_aux_loss_coef
    return RouterWatch(model, router, section.collapse_share, section.collapse_steps), coef
