"""Token log-probabilities over a large vocabulary without the whole logits tensor.

A causal LM's last step, `logits = hidden @ W.T`, makes the largest tensor of a training step:
tokens x vocabulary floats (2,048 tokens of Qwen2.5's 151,936-token vocabulary are 1.2 GB in
float32), and the loss keeps one or two more of them (the log-softmax for backward, the
gradient). Every objective here needs only each position's log-probability of one token (and,
for GRPO/PPO's logging, the distribution's entropy), so the head is run over chunks of
positions, and memory for the head becomes one chunk's logits. Two ways:
- `chunked_weighted_logp_sum`, for a loss linear in the log-probabilities (SFT's token
  cross-entropy): each chunk's gradient is known in the forward pass and computed there, so
  backward only scales it; the same matmuls as the plain loss (Liger Kernel's fused linear
  cross-entropy);
- `chunked_target_logps`, for everything else (DPO/ORPO/KTO sums, GRPO/PPO ratios): forward
  keeps each position's log-sum-exp, backward recomputes each chunk's logits and turns them
  into its gradient: one more head matmul (Apple's Cut Cross-Entropy).
Both in plain torch: Liger Kernel and Cut Cross-Entropy need Triton and a CUDA GPU, and
neither runs on the CPUs this project trains and tests on.

Only positions that have a target are computed at all: a chat's prompt tokens cost no head
matmul. The result equals the unchunked `log_softmax(logits)[target]` and its gradients to
float32 rounding (tests/trainers/test_chunked_loss.py checks 1e-5 for every objective).

`position_logps` (and `position_loss`) are what the objectives call: they run the model with
its output head's `forward` swapped, for the length of that one call, for one that returns
those log-probabilities (or the loss) in place of the logits. Whether it chunks is
`train.chunked_loss` (`chunking_wanted`): `auto` chunks causal LMs whose vocabulary has at
least `AUTO_MIN_VOCABULARY` tokens and whose head is a plain linear layer (a LoRA-wrapped or
soft-capped head falls back to the plain path; `true` says so once).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: `train.chunked_loss: auto` chunks from this vocabulary size up (Llama 3's 128k, Qwen2.5's
#: 152k, Gemma's 256k; not a 32k Llama 2 / Mistral vocabulary, where logits stay small beside
#: the activations and the extra matmul costs more than the memory is worth).
AUTO_MIN_VOCABULARY = 65_536
#: Float32 logits one chunk may hold (64 MiB: 110 positions of a 152k vocabulary).
CHUNK_BYTES = 64 * 2**20
IGNORE = -100


def chunk_positions(vocabulary: int, budget_bytes: int = CHUNK_BYTES) -> int:
    """How many positions one chunk covers: as many as fit `budget_bytes` of float32 logits."""
    return max(16, budget_bytes // (4 * vocabulary))


def chunked_target_logps(
    hidden: Any,
    weight: Any,
    bias: Any,
    targets: Any,
    temperature: float = 1.0,
    suppressed: Sequence[int] = (),
    with_entropy: bool = False,
    chunk: int | None = None,
) -> tuple[Any, Any]:
    """log softmax(hidden @ weight.T + bias) / temperature)[target] for each row of `hidden`
    [N, H] (targets [N], all valid ids), and the distribution's entropy (no gradient) when
    asked. `suppressed` token ids get probability 0 (never-sampled media placeholders)."""
    chunk = chunk or chunk_positions(weight.shape[0])
    logps, entropy = _ChunkedTargetLogps.apply(
        hidden, weight, bias, targets, float(temperature), tuple(suppressed), with_entropy, chunk
    )
    return logps, (entropy if with_entropy else None)


def chunked_weighted_logp_sum(
    hidden: Any, weight: Any, bias: Any, targets: Any, coefficients: Any, chunk: int | None = None
) -> Any:
    """sum(coefficients * log softmax(hidden @ weight.T + bias)[target]) as one scalar, its
    gradients computed chunk by chunk during the forward pass (the loss is linear in the
    log-probabilities, so each position's gradient is known then: Liger Kernel's fused linear
    cross-entropy does the same). No recompute in backward: the head costs what the plain
    loss costs, without its [tokens, vocabulary] tensors. SFT's token cross-entropy is this
    with coefficients -1 / tokens."""
    chunk = chunk or chunk_positions(weight.shape[0])
    return _ChunkedWeightedSum.apply(hidden, weight, bias, targets, coefficients, chunk)


class _Lazy:
    """An autograd function built on first use, so importing this module imports no torch."""

    builder: Any = None
    _function: Any = None

    @classmethod
    def apply(cls, *args: Any) -> Any:
        if cls._function is None:
            cls._function = cls.builder()
        return cls._function.apply(*args)


class _ChunkedTargetLogps(_Lazy):
    builder = staticmethod(lambda: _build_target_logps())


class _ChunkedWeightedSum(_Lazy):
    builder = staticmethod(lambda: _build_weighted_sum())


def _build_target_logps() -> Any:
    import torch

    class ChunkedTargetLogps(torch.autograd.Function):
        @staticmethod
        def forward(
            ctx, hidden, weight, bias, targets, temperature, suppressed, with_entropy, chunk
        ):
            count = hidden.shape[0]
            logps = hidden.new_empty(count, dtype=torch.float32)
            lse = hidden.new_empty(count, dtype=torch.float32)
            entropy = hidden.new_zeros(count if with_entropy else 0, dtype=torch.float32)
            for start in range(0, count, chunk):
                end = min(start + chunk, count)
                logits = _chunk_logits(hidden[start:end], weight, bias, temperature, suppressed)
                chunk_lse = torch.logsumexp(logits, dim=-1)
                lse[start:end] = chunk_lse
                logps[start:end] = logits.gather(1, targets[start:end, None]).squeeze(1) - chunk_lse
                if with_entropy:
                    probabilities = torch.exp(logits - chunk_lse[:, None])
                    finite = logits.masked_fill(probabilities == 0, 0.0)
                    entropy[start:end] = chunk_lse - (probabilities * finite).sum(-1)
                del logits
            ctx.save_for_backward(hidden, weight, bias, targets, lse)
            ctx.settings = (temperature, suppressed, chunk)
            ctx.mark_non_differentiable(entropy)
            return logps, entropy

        @staticmethod
        def backward(ctx, grad_logps, _grad_entropy):
            hidden, weight, bias, targets, lse = ctx.saved_tensors
            temperature, suppressed, chunk = ctx.settings
            grads = _HeadGradients(hidden, weight, bias, ctx.needs_input_grad[:3])
            grad_logps = grad_logps.float()
            for start in range(0, hidden.shape[0], chunk):
                end = min(start + chunk, hidden.shape[0])
                logits = _chunk_logits(hidden[start:end], weight, bias, temperature, suppressed)
                grad = _logit_gradient(
                    logits, lse[start:end], grad_logps[start:end], targets[start:end]
                )
                if temperature != 1.0:
                    grad /= temperature
                grads.add(grad, start, end)
            return (*grads.result(), None, None, None, None, None)

    return ChunkedTargetLogps


def _build_weighted_sum() -> Any:
    import torch

    class ChunkedWeightedSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, coefficients, chunk):
            total = hidden.new_zeros((), dtype=torch.float32)
            grads = _HeadGradients(hidden, weight, bias, ctx.needs_input_grad[:3])
            coefficients = coefficients.float()
            for start in range(0, hidden.shape[0], chunk):
                end = min(start + chunk, hidden.shape[0])
                logits = _chunk_logits(hidden[start:end], weight, bias)
                lse = torch.logsumexp(logits, dim=-1)
                rows = torch.arange(end - start, device=logits.device)
                picked = logits[rows, targets[start:end]]
                weights = coefficients[start:end]
                total += (weights * (picked - lse)).sum()
                grads.add(_logit_gradient(logits, lse, weights, targets[start:end]), start, end)
                del logits
            ctx.grads = grads.result()
            return total

        @staticmethod
        def backward(ctx, grad_total):
            grad_hidden, grad_weight, grad_bias = ctx.grads
            ctx.grads = None
            scale = grad_total.to(torch.float32)
            scaled = [
                None if g is None else g * scale.to(g.dtype)
                for g in (grad_hidden, grad_weight, grad_bias)
            ]
            return (*scaled, None, None, None)

    return ChunkedWeightedSum


def _chunk_logits(
    hidden: Any, weight: Any, bias: Any, temperature: float = 1.0, suppressed: Sequence[int] = ()
) -> Any:
    """One chunk's float32 logits, divided by the temperature, suppressed tokens at -inf."""
    import torch

    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    if suppressed:
        logits[:, list(suppressed)] = -torch.inf
    return logits


def _logit_gradient(logits: Any, lse: Any, weights: Any, targets: Any) -> Any:
    """weights * d logp[target] / d logits = weights * (onehot(target) - softmax), for one
    chunk (its logits are overwritten)."""
    import torch

    grad = torch.exp(logits.sub_(lse[:, None])).mul_(-weights[:, None])
    grad[torch.arange(len(targets), device=grad.device), targets] += weights
    return grad


class _HeadGradients:
    """The head's input, weight and bias gradients, built chunk by chunk from each chunk's
    gradient with respect to its logits (only those autograd asks for)."""

    def __init__(self, hidden: Any, weight: Any, bias: Any, wanted: Sequence[bool]) -> None:
        import torch

        want_hidden, want_weight, want_bias = wanted
        self.inputs, self.weight_matrix, self.bias_vector = hidden, weight, bias
        self.hidden = torch.empty_like(hidden) if want_hidden else None
        self.weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        self.bias = (
            torch.zeros_like(bias, dtype=torch.float32) if want_bias and bias is not None else None
        )

    def add(self, grad: Any, start: int, end: int) -> None:
        if self.hidden is not None:
            weight = self.weight_matrix
            self.hidden[start:end] = (grad.to(weight.dtype) @ weight).to(self.hidden.dtype)
        if self.weight is not None:
            self.weight.addmm_(grad.T, self.inputs[start:end].float())
        if self.bias is not None:
            self.bias += grad.sum(0)

    def result(self) -> tuple[Any, Any, Any]:
        return (
            self.hidden,
            None if self.weight is None else self.weight.to(self.weight_matrix.dtype),
            None if self.bias is None else self.bias.to(self.bias_vector.dtype),
        )


def chunking_wanted(model: Any, setting: bool | str) -> bool:
    """Whether `train.chunked_loss` (`setting`: "auto", True or False) chunks this model's
    head."""
    if setting is False:
        return False
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return _refused(setting, "an encoder-decoder's loss (Whisper) is not a causal LM's")
    head = model.get_output_embeddings()
    reason = _head_refusal(head, config)
    if reason:
        return _refused(setting, reason)
    return setting is True or head.weight.shape[0] >= AUTO_MIN_VOCABULARY


def _head_refusal(head: Any, config: Any) -> str | None:
    import torch

    if type(head) is not torch.nn.Linear:
        return f"the output head is a {type(head).__name__}, not a plain linear layer"
    text = getattr(config, "text_config", None) or config
    if getattr(text, "final_logit_softcapping", None):
        return "the model soft-caps its logits"
    return None


_REFUSALS_SAID: set[str] = set()


def _refused(setting: bool | str, reason: str) -> bool:
    if setting is True and reason not in _REFUSALS_SAID:
        _REFUSALS_SAID.add(reason)
        log.warning("train.chunked_loss: true, but %s: the loss uses the whole logits", reason)
    return False


@dataclass
class PositionScores:
    """Per-position scores of one model call: `logps[b, t]` is the log-probability of the
    target of position t (0 where it has none), `entropy` (no gradient) when asked."""

    output: Any
    logps: Any
    entropy: Any = None


def position_logps(
    model: Any,
    inputs: dict[str, Any],
    targets: Any,
    chunked: bool,
    temperature: float = 1.0,
    suppressed: Sequence[int] = (),
    with_entropy: bool = False,
) -> PositionScores:
    """Run `model(**inputs)` and score `targets` [B, T] (the token each position predicts,
    IGNORE where none) under its head, chunked or from the whole logits. A model that puts
    extra positions first (prompt tuning's virtual tokens) is scored on the last T."""
    if chunked:
        with _scoring_head(model, targets, temperature, suppressed, with_entropy) as scores:
            scores.output = model(**inputs)
        return scores
    import torch

    output = model(**inputs)
    # Only the columns from the first one with a target on (a rollout's completion).
    valid_columns = (targets != IGNORE).any(0).nonzero()
    first = int(valid_columns[0]) if len(valid_columns) else targets.shape[1]
    targets = targets[:, first:]
    logits = output.logits[:, output.logits.shape[1] - targets.shape[1] :].float()
    if temperature != 1.0:
        logits = logits / temperature
    if suppressed:
        logits = logits.index_fill(-1, logits.new_tensor(list(suppressed)).long(), -torch.inf)
    valid = targets != IGNORE
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logps = torch.where(valid, picked - torch.logsumexp(logits, dim=-1), 0.0)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            probabilities = torch.softmax(logits, dim=-1)
            finite = logits.masked_fill(probabilities == 0, 0.0)
            entropy = torch.logsumexp(logits, dim=-1) - (probabilities * finite).sum(-1)
    if first:
        logps = torch.nn.functional.pad(logps, (first, 0))
        entropy = None if entropy is None else torch.nn.functional.pad(entropy, (first, 0))
    return PositionScores(output, logps, entropy)


def position_loss(model: Any, inputs: dict[str, Any], targets: Any, coefficients: Any) -> Any:
    """sum over positions of coefficients[b, t] * log p(targets[b, t]) (IGNORE targets left
    out) from one call of `model(**inputs)`, through the fused chunked head: what a loss
    linear in the log-probabilities (SFT's cross-entropy) costs without the logits."""
    import torch

    head = model.get_output_embeddings()
    result: dict[str, Any] = {}

    def loss_forward(hidden: Any) -> Any:
        extra = hidden.shape[1] - targets.shape[1]
        pad = (extra, 0)
        aligned = targets if extra == 0 else torch.nn.functional.pad(targets, pad, value=IGNORE)
        weights = coefficients if extra == 0 else torch.nn.functional.pad(coefficients, pad)
        valid = aligned != IGNORE
        result["loss"] = chunked_weighted_logp_sum(
            hidden[valid], head.weight, head.bias, aligned[valid], weights[valid]
        )
        return result["loss"]

    head.forward = loss_forward
    try:
        model(**inputs)
    finally:
        del head.forward
    return result["loss"]


@contextlib.contextmanager
def _scoring_head(
    model: Any, targets: Any, temperature: float, suppressed: Sequence[int], with_entropy: bool
) -> Iterator[PositionScores]:
    """For one model call, the output head returns the targets' log-probabilities [B, T]
    instead of logits. The head module itself is still called (its hooks run: FSDP gathers
    its sharded weight there), only its `forward` is replaced."""
    import torch

    head = model.get_output_embeddings()
    scores = PositionScores(output=None, logps=None)

    def scoring_forward(hidden: Any) -> Any:
        extra = hidden.shape[1] - targets.shape[1]
        aligned = (
            targets if extra == 0 else torch.nn.functional.pad(targets, (extra, 0), value=IGNORE)
        )
        valid = aligned != IGNORE
        logps, entropy = chunked_target_logps(
            hidden[valid],
            head.weight,
            head.bias,
            aligned[valid],
            temperature,
            suppressed,
            with_entropy,
        )
        full = hidden.new_zeros(aligned.shape, dtype=torch.float32)
        full = full.masked_scatter(valid, logps)
        scores.logps = full[:, extra:]
        if with_entropy:
            spread = torch.zeros_like(full).masked_scatter(valid, entropy)
            scores.entropy = spread[:, extra:]
        return full

    head.forward = scoring_forward
    try:
        yield scores
    finally:
        del head.forward


def shifted_targets(labels: Any) -> Any:
    """A causal LM's targets per position: position t predicts label t + 1."""
    import torch

    return torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)
