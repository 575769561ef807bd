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
they are already aligned with the labels.

`on_policy` (GKD's lambda) is the share of steps on which the student instead samples its own
completion of each example's prompt through the rollout path GRPO and PPO use (chat rows that
end in an answer; text and vision-language), and the divergence is taken over the sampled
tokens, the teacher scoring what the student would say rather than the dataset's answer: the
train/inference mismatch of off-policy distillation is what GKD removes. Which steps sample is
drawn from the run's seed and the step's examples, so a resumed run draws the same.

`cache_teacher: true` computes the teacher's logits over every training example's label
positions once, before the first step, with the evaluation collator (never augmented), and keeps
them in the run folder (`teacher-logits.pt`, float32, keyed by a fingerprint of the training
items and of the teacher's files), as DPO's precomputed reference is: each step then runs the
student alone, and a resumed run reads them back. They take tokens x vocabulary x 4 bytes:
for small vocabularies or datasets (the log says how much).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from omnitune.core.errors import ConfigError
from omnitune.trainers.objectives import LossContext, Objective, StepLoss
from omnitune.trainers.objectives.options import NAME_HELP, ObjectiveOptions
from omnitune.trainers.objectives.sft import make_collator, read_examples

if TYPE_CHECKING:
    from omnitune.trainers.config import RunConfig

log = logging.getLogger("omnitune.train")
CACHE_NAME = "teacher-logits.pt"


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
    on_policy: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description=(
            "Share of steps on which the student samples its own completions of the batch's "
            "prompts and the divergence is taken over them (GKD's lambda; text, "
            "vision-language). 0: off-policy, the dataset's answers."
        ),
    )
    max_new_tokens: int = Field(
        64, ge=1, le=4096, description="on_policy: longest sampled completion, in tokens."
    )
    top_p: float = Field(
        1.0, gt=0.0, le=1.0, description="on_policy: nucleus sampling of the completions."
    )
    cache_teacher: bool = Field(
        False,
        description=(
            "Compute the teacher's logits on the training set once, before training, and keep "
            "them in the run folder (teacher-logits.pt; reused on resume). Float32, tokens x "
            "vocabulary: for small vocabularies or datasets."
        ),
    )

    @property
    def num_generations(self) -> int:
        """One sampled completion per prompt (the rollout path's setting)."""
        return 1

    def fits(self, config: RunConfig) -> None:
        if self.on_policy and config.model.modality == "speech":
            raise ValueError(
                "objective.on_policy: sampling the student's own completions works for text "
                "and vision-language students; a speech student distils off-policy (0)"
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


def _to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def teacher_fingerprint(items: list[dict[str, Any]], teacher: str) -> str:
    """What the cached logits depend on: every training item (token ids, labels, media paths)
    and the teacher's files (names, sizes, modification times; a hub id by its name)."""
    digest = hashlib.sha256(f"teacher={teacher};".encode())
    folder = Path(teacher)
    if folder.exists():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    for item in items:
        for key in sorted(item):
            digest.update(f"{key}={item[key]!r};".encode())
    return digest.hexdigest()


def cached_teacher_logits(context: LossContext, teacher: Any, causal: bool) -> list[Any]:
    """Each training example's aligned teacher logits [its label tokens, vocabulary], read
    from the run folder when its fingerprint matches, else computed and written there."""
    import torch

    config = context.config
    examples = context.train_set
    path = Path(config.output_dir) / CACHE_NAME
    key = teacher_fingerprint(examples.items, config.objective.teacher)
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved.get("fingerprint") == key:
            log.info("teacher logits of %d training examples read from %s", len(examples), path)
            return saved["logits"]
    started = time.perf_counter()
    collate = context.modality.collator(context.processor, config, training=False)
    values: list[Any] = []
    size = config.eval.batch_size
    with torch.no_grad():
        for start in range(0, len(examples), size):
            chunk = [examples[i] for i in range(start, min(start + size, len(examples)))]
            batch = _to_device(collate(chunk), context.device)
            logits = teacher(**batch).logits
            for row in range(len(chunk)):
                t, _ = aligned(logits[row : row + 1], batch["labels"][row : row + 1], causal)
                values.append(t.float().cpu().clone())
    staging = path.with_name(f".staging-{os.getpid()}-{path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fingerprint": key, "logits": values}, staging)
    os.replace(staging, path)
    megabytes = sum(v.numel() for v in values) * 4 / 1e6
    log.info(
        "teacher logits of %d training examples computed and cached in %.1f s (%s, %.1f MB)",
        len(examples),
        time.perf_counter() - started,
        path,
        megabytes,
    )
    return values


def make_loss(context: LossContext) -> StepLoss:
    import torch

    config, section = context.config, context.config.objective
    teacher = _teacher_for(config, context.processor, context.device)
    causal = not context.model.config.is_encoder_decoder
    cache = cached_teacher_logits(context, teacher, causal) if section.cache_teacher else None

    def teacher_logits_of(batch: dict[str, Any], indices: list[int]) -> Any:
        if cache is not None:
            return torch.cat([cache[i] for i in indices]).to(context.device)
        with torch.no_grad():
            return aligned(teacher(**batch).logits, batch["labels"], causal)[0]

    on_policy = on_policy_step(context, teacher)

    def distill_loss(model: Any, batch: dict[str, Any], indices: list[int]) -> tuple[Any, dict]:
        if on_policy is not None and on_policy.draws(indices):
            return on_policy(model, batch, indices)
        student = model(**batch)
        s, _ = aligned(student.logits, batch["labels"], causal)
        t = teacher_logits_of(batch, indices)
        if t.shape != s.shape:  # the cache was built from other items than this batch's
            raise RuntimeError(
                f"cached teacher logits {tuple(t.shape)} do not fit the batch's label tokens "
                f"{tuple(s.shape)}; delete {CACHE_NAME} in the run folder"
            )
        kd = divergence(s, t, section.loss, section.temperature, section.jsd_beta).mean()
        w = section.label_weight
        loss = (1 - w) * kd + w * student.loss if w else kd
        metrics = {"kd": kd.detach(), "label_loss": student.loss.detach()}
        if on_policy is not None:
            metrics["on_policy"] = torch.tensor(0.0)
        return loss, metrics

    return distill_loss


class OnPolicyStep:
    """A step on the student's own samples: one completion per prompt of the step's examples,
    the divergence over its tokens, the label loss on the batch when `label_weight` asks."""

    def __init__(self, context: LossContext, teacher: Any) -> None:
        self.context, self.teacher = context, teacher
        self.section = context.config.objective

    def draws(self, indices: list[int]) -> bool:
        from omnitune.trainers.objectives.rollout import rollout_seed

        seed = rollout_seed(self.context.config.train.seed, indices)
        if random.Random(seed).random() >= self.section.on_policy:
            return False
        # A step whose rows have no prompt to complete (plain text rows) stays off-policy.
        return any("prompt_messages" in self.context.train_set[i] for i in indices)

    def __call__(self, model: Any, batch: dict[str, Any], indices: list[int]) -> tuple[Any, dict]:
        import torch

        from omnitune.trainers.objectives.rollout import completion_logits, rollout_seed, sample

        context, section = self.context, self.section
        items = [context.train_set[i] for i in indices]
        items = [item for item in items if "prompt_messages" in item]
        seed = rollout_seed(context.config.train.seed, indices)
        rollout = sample(
            context.model, context.processor, context.modality, items, context.config, seed
        )
        mask = rollout.completion_mask.bool()
        s = completion_logits(model, rollout)[mask]
        with torch.no_grad():
            t = completion_logits(self.teacher, rollout)[mask]
        kd = divergence(s, t, section.loss, section.temperature, section.jsd_beta).mean()
        metrics = {
            "kd": kd.detach(),
            "on_policy": torch.tensor(1.0),
            "completion_length": mask.sum(1).float().mean(),
            "generation_seconds": torch.tensor(rollout.generation_seconds),
        }
        w = section.label_weight
        if not w:
            return kd, metrics
        label_loss = model(**batch).loss
        metrics["label_loss"] = label_loss.detach()
        return (1 - w) * kd + w * label_loss, metrics


def on_policy_step(context: LossContext, teacher: Any) -> OnPolicyStep | None:
    """The on-policy step of a run that samples (None when `on_policy` is 0); refused when
    no training row has a prompt to sample from."""
    if not context.config.objective.on_policy:
        return None
    if not any("prompt_messages" in item for item in context.train_set.items):
        raise ConfigError(
            "objective.on_policy: no training row has a prompt to complete (chat rows that "
            "end in an assistant turn, or prompt/completion rows)"
        )
    return OnPolicyStep(context, teacher)


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
            batch = _to_device(collate(items[start : start + size]), device)
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
