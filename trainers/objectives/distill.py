"""Knowledge distillation (off-policy): a student learns a frozen teacher's token distribution.

`objective.teacher` is a run folder (its best checkpoint, an adapter merged in) or a model
folder or cached hub id, loaded frozen once per process; it must share the student's tokenizer
(the same vocabulary, token for token), since the two distributions are compared over it. Every
example is the SFT example of the student's modality (text chats, Whisper clips with their
transcripts, image questions), and on the positions the label loss trains on, with
p = softmax(teacher logits / T) and q = softmax(student logits / T):

- forward_kl: KL(p || q), the teacher's mass the student misses (mean-seeking; the classic
  Hinton et al. 2015 loss);
- reverse_kl: KL(q || p), the student's mass where the teacher puts little (mode-seeking);
- jsd: the generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2024) with
  `jsd_beta` b: b KL(p || m) + (1 - b) KL(q || m), m = b p + (1 - b) q;

each times T^2 (so the gradients keep their scale across temperatures), averaged over tokens,
and mixed with the ordinary label loss: (1 - `label_weight`) x divergence + `label_weight` x
cross-entropy. Evaluation adds `teacher_kl`, KL(p || q) at T = 1 on the eval set's label
positions, to the modality's own metrics: what distillation is meant to lower.

For causal models the logits at position t predict label t + 1; for encoder-decoders (Whisper)
they are already aligned with the labels. Not built yet: sampling the student's own completions
for the teacher to score (on-policy GKD), and caching the teacher's logits.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from omnitune.core.errors import ConfigError
from omnitune.trainers.objectives import LossContext, Objective, StepLoss
from omnitune.trainers.objectives.options import NAME_HELP, ObjectiveOptions
from omnitune.trainers.objectives.sft import make_collator, read_examples

if TYPE_CHECKING:
    from omnitune.trainers.config import RunConfig


class DistillOptions(ObjectiveOptions):
    """`objective.name: distill`: the teacher, the divergence and its mix with the labels."""

    name: Literal["distill"] = Field("distill", description=NAME_HELP)
    teacher: str = Field(
        description=(
            "The frozen teacher: a run folder (best checkpoint, adapter merged) or a model "
            "folder or hub id, with the student's tokenizer."
        ),
    )
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
        "forward_kl", description="The divergence between the teacher's and student's tokens."
    )
    jsd_beta: float = Field(
        0.5, gt=0.0, lt=1.0, description="jsd: the teacher's weight in the mixture."
    )
    temperature: float = Field(
        1.0, gt=0.0, le=20.0, description="Both distributions' softmax temperature."
    )
    label_weight: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Weight of the ordinary label loss; the divergence gets 1 minus it.",
    )


def divergence(
    student_logits: Any, teacher_logits: Any, kind: str, temperature: float, beta: float
) -> Any:
    """Per-token divergence [tokens] between the two distributions (times T^2)."""
    import torch
    import torch.nn.functional as F

    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if kind == "forward_kl":
        value = (t.exp() * (t - s)).sum(-1)
    elif kind == "reverse_kl":
        value = (s.exp() * (s - t)).sum(-1)
    else:
        mixture = torch.logsumexp(
            torch.stack([t + torch.log(torch.tensor(beta)), s + torch.log(torch.tensor(1 - beta))]),
            dim=0,
        )
        value = beta * (t.exp() * (t - mixture)).sum(-1) + (1 - beta) * (
            s.exp() * (s - mixture)
        ).sum(-1)
    return value * temperature**2


def aligned(logits: Any, labels: Any, causal: bool) -> tuple[Any, Any]:
    """The logits that predict each trained label, and those labels' mask."""
    if causal:
        logits, labels = logits[:, :-1, :], labels[:, 1:]
    mask = labels != -100
    return logits[mask], mask


@lru_cache(maxsize=2)
def load_teacher(teacher: str, modality: str) -> tuple[Any, dict[str, int]]:
    """The teacher model, frozen, and its vocabulary; loaded once per process."""
    from omnitune.trainers.evaluation import load_for_evaluation

    model, processor, config = load_for_evaluation(teacher, teacher)
    if config.model.modality != modality:
        raise ConfigError(
            f"objective.teacher: {teacher} is a {config.model.modality} model and the student "
            f"a {modality} one"
        )
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model, _vocabulary(processor)


def _vocabulary(processor: Any) -> dict[str, int]:
    tokenizer = getattr(processor, "tokenizer", processor)
    return tokenizer.get_vocab()


def _teacher_for(config: RunConfig, processor: Any, device: Any) -> Any:
    """The teacher on `device`; refused when its tokenizer is not the student's."""
    teacher, vocabulary = load_teacher(config.objective.teacher, config.model.modality)
    if vocabulary != _vocabulary(processor):
        raise ConfigError(
            f"objective.teacher: {config.objective.teacher}'s tokenizer is not the student's "
            f"({config.model.name_or_path}); distillation compares the two distributions token "
            "by token and needs one vocabulary"
        )
    return teacher.to(device)


def make_loss(context: LossContext) -> StepLoss:
    import torch

    config, section = context.config, context.config.objective
    teacher = _teacher_for(config, context.processor, context.device)
    causal = not context.model.config.is_encoder_decoder

    def distill_loss(model: Any, batch: dict[str, Any], indices: list[int]) -> tuple[Any, dict]:
        student = model(**batch)
        with torch.no_grad():
            teacher_logits = teacher(**batch).logits
        labels = batch["labels"]
        s, _ = aligned(student.logits, labels, causal)
        t, _ = aligned(teacher_logits, labels, causal)
        kd = divergence(s, t, section.loss, section.temperature, section.jsd_beta).mean()
        w = section.label_weight
        loss = (1 - w) * kd + w * student.loss if w else kd
        return loss, {"kd": kd.detach(), "label_loss": student.loss.detach()}

    return distill_loss


def evaluate(
    modality: Any, model: Any, processor: Any, examples: Any, config: RunConfig, reference: Any
) -> dict[str, float]:
    """The modality's metrics and `teacher_kl`, KL(teacher || student) per label token."""
    import torch

    metrics = modality.evaluate(model, processor, examples, config)
    device = next(model.parameters()).device
    teacher = _teacher_for(config, processor, device)
    collate = modality.collator(processor, config, training=False)
    causal = not model.config.is_encoder_decoder
    total, tokens = 0.0, 0
    size = config.eval.batch_size
    limit = len(examples) if config.data.max_eval_samples is None else config.data.max_eval_samples
    items = [examples[i] for i in range(min(limit, len(examples)))]
    with torch.no_grad():
        for start in range(0, len(items), size):
            collated = collate(items[start : start + size])
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in collated.items()}
            s, _ = aligned(model(**batch).logits, batch["labels"], causal)
            t, _ = aligned(teacher(**batch).logits, batch["labels"], causal)
            total += float(divergence(s, t, "forward_kl", 1.0, 0.5).sum())
            tokens += s.shape[0]
    return {**metrics, "teacher_kl": total / max(tokens, 1)}


OBJECTIVE = Objective(
    name="distill",
    reads="examples",
    modalities=frozenset({"text", "speech", "vision_language"}),
    needs_reference=False,
    data=read_examples,
    collator=make_collator,
    loss=make_loss,
    evaluate=evaluate,
    metric_directions=lambda modality: {**modality.metric_directions, "teacher_kl": "min"},
    options=DistillOptions,
)
