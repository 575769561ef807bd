"""The trainer core: one loop for every modality, objective and PEFT method.

`train()` reads as its phases: `set_up` (load through the modality, read the data through the
objective, prepare the PEFT method, plan the data order, build the reference, resume), then
`train_step`, `log_progress`, `evaluate_if_due` and `checkpoint_if_due` until the last step, then
`finish` (export, reference profile, summary). The modality supplies model, processor, data,
collator, evaluation and reference profile; the objective (`omnitune.trainers.objectives`)
supplies the rows it reads, the loss of a batch and its metrics. Nothing here branches on which
modality or objective it is. The loop runs unchanged on one CPU, one GPU, or N processes under
`accelerate launch` (data is sharded by `BatchPlan`, gradients are synchronised by accelerate's
DDP wrapper).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnitune.core.errors import ConfigError, DataError, OmnituneError
from omnitune.modalities.base import Examples, Modality, get_modality, sample_examples
from omnitune.trainers import sharding
from omnitune.trainers.batches import BatchSource
from omnitune.trainers.checkpoint import (
    TrainState,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from omnitune.trainers.config import RunConfig
from omnitune.trainers.footprint import (
    chain_table,
    measure,
    prune_record,
    pruning_chain,
    weights,
)
from omnitune.trainers.memory_rules import choose_checkpointing
from omnitune.trainers.moe import RouterWatch, watch_routers
from omnitune.trainers.objectives import LossContext, Objective, StepLoss, get_objective
from omnitune.trainers.peft_methods import (
    MUTATING_INIT,
    Prepared,
    build_optimizer,
    check_device_support,
    load_options,
    prepare_model,
)
from omnitune.trainers.runlog import RunLog, format_metrics
from omnitune.trainers.sampling import BatchPlan, distribution_report, epoch_length, group_weights
from omnitune.trainers.trackers import Trackers, accelerate_trackers

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

log = logging.getLogger("omnitune.train")


class TrainingDiverged(OmnituneError):
    """The loss or gradient norm became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    train_loss: float | None
    eval_metrics: dict[str, float]
    best_step: int | None
    stopped_early: bool
    samples_per_second: float
    output: Path
    main_process: bool = True
    loop_seconds: float = 0.0
    loop_cpu_seconds: float = 0.0
    #: which checkpoint `output` holds (trainers/run_weights.py): the best unless none was
    #: evaluated; as a dict (rule, step, last_step, metric, value, metrics)
    checkpoint: dict[str, Any] | None = None
    #: this process's peak memory over the run in MB: CUDA's peak allocated on a GPU, else
    #: the peak resident set size (everything the process held, loading included)
    peak_memory_mb: float = 0.0


@dataclass
class Session:
    """Everything `set_up` builds and the phases share."""

    config: RunConfig
    accelerator: Accelerator
    runlog: RunLog
    modality: Modality
    objective: Objective
    model: torch.nn.Module  # what the step runs (wrapped by accelerate)
    unwrapped: torch.nn.Module  # the model itself: evaluation, export, checkpoint tensors
    processor: Any  # a tokenizer or a processor, as the modality loads it
    prepared: Prepared
    train_set: Examples
    eval_set: Examples | None
    plan: BatchPlan
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    state: TrainState
    total_steps: int
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    step_loss: StepLoss | None
    reference: Any  # the objective's frozen reference (None when it needs none)
    checkpoint_tensors: dict[str, torch.Tensor]
    selection_metric: str
    direction: str
    run_dir: Path
    initial_adapter: Path
    batches: BatchSource | None = None
    last_eval: dict[str, float] = field(default_factory=dict)
    last_saved: int | None = None
    stopped_early: bool = False
    train_loss: float | None = None
    grad_norm: float | None = None
    heads: dict[str, Any] = field(default_factory=dict)  # the objective's heads (PPO's value)
    trained_heads: dict[str, Any] = field(default_factory=dict)  # the same, DDP-wrapped
    routers: RouterWatch | None = None  # a Mixture-of-Experts model's routers (trainers/moe.py)
    router_coef: float = 0.0  # the weight of their balancing loss
    #: FSDP on CPUs: the loop sharded the model itself (trainers/sharding.py)
    sharded: bool = False


@dataclass
class StepOutcome:
    loss: float
    grad_norm: float | None
    metrics: dict[str, Any]  # the objective's metrics, as tensors
    samples: int


class ProgressWindow:
    """Losses, objective metrics and samples since the last log line, and the last step's
    gradient norm. Metrics stay tensors until the line is written, so a step waits on no
    device-to-host copy for them."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.metrics: dict[str, list[Any]] = {}
        self.samples = 0
        self.grad_norm: float | None = None
        self.start = time.perf_counter()

    def add(self, outcome: StepOutcome) -> None:
        self.losses.append(outcome.loss)
        self.samples += outcome.samples
        self.grad_norm = outcome.grad_norm
        for name, value in outcome.metrics.items():
            self.metrics.setdefault(name, []).append(value)


def train(config: RunConfig) -> RunResult:
    """Run (or resume) the training run `config` describes; returns where everything went."""
    tracker_names = accelerate_trackers(config.train.report_to)  # refuses missing packages
    accelerator = _accelerator(config, tracker_names)
    trackers = Trackers(accelerator, tracker_names)
    runlog = RunLog(Path(config.output_dir), accelerator.is_main_process, trackers)
    try:
        session = set_up(config, accelerator, runlog)
        if session.eval_set is not None and session.state.step == 0:
            # The "before" value: every run's log shows where training started from.
            session.last_eval, _ = evaluate_now(session)
        session.model.train()
        main = accelerator.is_main_process
        progress = _progress_bar(session.total_steps, session.state.step, main)
        window = ProgressWindow()
        run_start, cpu_start, run_samples = time.perf_counter(), time.process_time(), 0
        while session.state.step < session.total_steps and not session.stopped_early:
            outcome = train_step(session)
            window.add(outcome)
            run_samples += outcome.samples
            _advance_progress_bar(progress, session, outcome)
            window = log_progress(session, window)
            improved = evaluate_if_due(session)
            checkpoint_if_due(session, improved)
        progress.close()
        loop_seconds = time.perf_counter() - run_start
        return finish(session, run_samples, loop_seconds, time.process_time() - cpu_start)
    finally:
        runlog.close()


def set_up(config: RunConfig, accelerator: Any, runlog: RunLog) -> Session:
    """Load, read, prepare and (when asked) resume: everything before the first step."""
    from accelerate.utils import set_seed

    main = accelerator.is_main_process
    set_seed(config.train.seed)
    run_dir = Path(config.output_dir)
    modality = get_modality(config.model.modality)
    objective = get_objective(config.objective.name)
    selection_metric, direction = _selection_metric(config, objective.metric_directions(modality))
    model, processor = _load_model(config, modality)
    train_set, eval_set = _read_data(objective, modality, config, processor)
    prepared = _prepare(config, modality, model)
    model = prepared.model
    _log_trainable(model)
    sharded = sharding.shards_here(accelerator)
    sharding.warn_if_deepspeed_cannot_shard(accelerator)
    if sharded:  # before the optimizer: its parameters become the shards
        _refuse_unshardable(objective, prepared, config)
        sharding.shard_model(model, accelerator.num_processes)
    optimizer = build_optimizer(model, config.peft, config.train)
    heads = _build_heads(objective, model, config, optimizer, accelerator.device)
    plan = _batch_plan(config, train_set, accelerator.num_processes)
    scheduler, total_steps = _schedule(config, optimizer, plan)
    collate = objective.collator(modality, processor, config, True)
    # Before a checkpoint is loaded: the reference is the model as it starts.
    datasets = (train_set, eval_set)
    reference = _reference(config, objective, modality, processor, prepared, datasets, accelerator)
    initial_adapter = run_dir / "initial-adapter"
    resume_from = _resume_point(run_dir, config.train.resume, main)
    state = _start_state(
        resume_from, config, prepared, optimizer, scheduler, heads, accelerator, initial_adapter
    )
    runlog.start(config, state.step)

    model, optimizer = _wrap_for_processes(accelerator, model, optimizer, sharded)
    unwrapped = accelerator.unwrap_model(model)
    saved_names = set(prepared.checkpoint_names)
    session = Session(
        config=config,
        accelerator=accelerator,
        runlog=runlog,
        modality=modality,
        objective=objective,
        model=model,
        unwrapped=unwrapped,
        processor=processor,
        prepared=prepared,
        train_set=train_set,
        eval_set=eval_set,
        plan=plan,
        optimizer=optimizer,
        scheduler=scheduler,
        state=state,
        total_steps=total_steps,
        collate=collate,
        step_loss=None,
        reference=reference,
        checkpoint_tensors={
            **{n: p for n, p in unwrapped.named_parameters() if n in saved_names},
            **_head_tensors(heads),
        },
        selection_metric=selection_metric,
        direction=direction,
        run_dir=run_dir,
        initial_adapter=initial_adapter,
        batches=_batch_source(config, train_set, collate, plan, state, accelerator),
        last_saved=state.step if resume_from is not None else None,
        heads=heads,
        trained_heads={
            name: accelerator.prepare(head) if accelerator.num_processes > 1 else head
            for name, head in heads.items()
        },
        sharded=sharded,
    )
    session.routers, session.router_coef = watch_routers(unwrapped, config.moe)
    session.step_loss = _step_loss(session)
    return session


def _pruning_chain(s: Session) -> dict[str, Any] | None:
    """A recovery run's stages: the prune record of the model it started from, then this
    run's chosen weights scored by the modality on the eval set, as `omnitune prune` scored."""
    record = prune_record(s.config.model.name_or_path)
    if record is None or s.eval_set is None:
        return None
    s.unwrapped.eval()
    metrics = s.modality.evaluate(s.unwrapped, s.processor, s.eval_set, s.config)
    collate = s.modality.collator(s.processor, s.config, training=False)
    footprint = measure(s.unwrapped, s.config.model.modality, collate, s.eval_set)
    chain = pruning_chain(record, (metrics, footprint))
    log.info("pruned and recovered:\n%s", chain_table(chain))
    return chain


def _prepare(config: RunConfig, modality: Modality, model: Any) -> Prepared:
    """The model wrapped or unfrozen for the PEFT method (and an MoE's routers, if trained)."""
    targets = modality.targets(model)
    return prepare_model(
        model,
        config.peft,
        targets,
        modality.task_type,
        config.train.seed,
        train_router=config.moe.train_router,
    )


def _schedule(config: RunConfig, optimizer: Any, plan: BatchPlan) -> tuple[Any, int]:
    """The learning-rate scheduler and the run's number of optimizer steps (train.max_steps,
    else the epochs' batches over the gradient accumulation)."""
    from transformers import get_scheduler

    total_steps = config.train.max_steps or max(
        1, math.ceil(config.train.epochs * plan.batches_per_epoch / config.train.grad_accum)
    )
    scheduler = get_scheduler(
        config.train.lr_schedule,
        optimizer,
        num_warmup_steps=config.train.warmup_steps,
        num_training_steps=total_steps,
    )
    return scheduler, total_steps


def _step_loss(session: Session) -> Callable[..., Any]:
    """The objective's loss for one step, over the session's (unwrapped) model and heads; on
    a Mixture-of-Experts model, with the router's balancing loss added (trainers/moe.py)."""
    loss = session.objective.loss(
        LossContext(
            session.config,
            session.train_set,
            session.unwrapped,
            session.processor,
            session.accelerator.device,
            session.reference,
            modality=session.modality,
            heads=session.trained_heads,
            update=lambda loss: apply_update(session, loss),
        )
    )
    if session.routers is not None:
        return session.routers.wrap(loss, session.router_coef)
    return loss


def _load_model(config: RunConfig, modality: Any) -> tuple[Any, Any]:
    """The model and processor, fitted to the run's options (`Modality.adapt`) and with
    gradient checkpointing when asked."""
    model, processor = modality.load(config.model, **load_options(config.peft.method))
    if modality.adapt is not None:
        modality.adapt(model, processor, config)
    tokens = config.train.batch_size * config.data.max_length
    choice = choose_checkpointing(config.train.gradient_checkpointing, model, tokens)
    if choice.enabled:
        # transformers 5 renamed it (the old name warns); older versions have only the old one.
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
        model.enable_input_require_grads()
        log.info("gradient checkpointing: on (%s)", choice.reason)
    return model, processor


def _reference(
    config: RunConfig,
    objective: Any,
    modality: Any,
    processor: Any,
    prepared: Any,
    datasets: tuple[Any, Any],
    accelerator: Any,
) -> Any:
    """The reference policy of a preference objective, from the model as it starts (None for
    objectives that have none)."""
    if not objective.needs_reference:
        return None
    from omnitune.trainers.objectives.reference import build_reference

    prepared.model.to(accelerator.device)
    eval_collate = objective.collator(modality, processor, config, False)
    train_set, eval_set = datasets
    return build_reference(
        config,
        prepared.model,
        prepared.is_peft,
        {"train": train_set, "eval": eval_set},
        eval_collate,
        Path(config.output_dir),
    )


def _start_state(
    resume_from: Path | None,
    config: RunConfig,
    prepared: Any,
    optimizer: Any,
    scheduler: Any,
    heads: dict[str, Any],
    accelerator: Any,
    initial_adapter: Path,
) -> TrainState:
    """The checkpoint's state when resuming; else a fresh one (saving the initial adapter of
    a method whose initialisation changes the base weights, for export)."""
    if resume_from is not None:
        state = load_checkpoint(
            resume_from,
            prepared.model,
            optimizer,
            scheduler,
            accelerator.process_index,
            _head_tensors(heads),
        )
        log.info("resumed from %s (step %d)", resume_from, state.step)
        return state
    if accelerator.is_main_process and prepared.is_peft and config.peft.method in MUTATING_INIT:
        _save_initial_adapter(prepared.model, initial_adapter)
    return TrainState()


def train_step(session: Session) -> StepOutcome:
    """One optimizer step over `grad_accum` micro-batches (or, for an objective that applies
    its own updates, one call of its loss); stops the run on a non-finite loss."""
    import torch

    s, accelerator = session, session.accelerator
    note = s.prepared.update(s.unwrapped, s.state.step)
    if note:
        log.info(note)
    grad_accum = s.config.train.grad_accum
    micro_losses, micro_metrics = [], []
    for micro in range(grad_accum):
        indices, collated = s.batches.next()
        batch = _to_device(collated, accelerator.device)
        if s.objective.applies_updates:
            s.grad_norm = None
            loss, metrics = s.step_loss(s.model, batch, indices)
        else:
            # DDP all-reduces gradients only on the last micro-batch of a step.
            sync = micro == grad_accum - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(s.model):
                loss, metrics = s.step_loss(s.model, batch, indices)
                accelerator.backward(loss / grad_accum)
        micro_losses.append(loss.detach().float())
        micro_metrics.append(metrics)
    step_loss_tensor = torch.stack(micro_losses).mean()
    if accelerator.num_processes > 1:
        step_loss_tensor = accelerator.reduce(step_loss_tensor, "mean")
    step_loss = float(step_loss_tensor)
    if not s.objective.applies_updates:
        apply_update(s, step_loss)
    s.scheduler.step()
    s.state.step += 1
    samples = s.plan.global_batch * grad_accum
    s.state.samples_seen += samples
    s.train_loss = step_loss
    return StepOutcome(step_loss, s.grad_norm, _mean_metrics(micro_metrics), samples)


def apply_update(session: Session, loss: Any) -> float | None:
    """Clip the gradients, refuse a non-finite loss or norm, take the optimizer step. A tensor
    `loss` is first backpropagated (an objective applying its own updates passes its
    minibatch loss); the loop passes the step's mean loss after its micro-batches."""
    s, accelerator = session, session.accelerator
    if hasattr(loss, "backward"):
        accelerator.backward(loss)
        loss = float(loss.detach())
    s.grad_norm = None
    if s.config.train.max_grad_norm is not None and s.sharded:
        s.grad_norm = sharding.clip_gradients(_trained_parameters(s), s.config.train.max_grad_norm)
    elif s.config.train.max_grad_norm is not None:
        # None under DeepSpeed, which clips inside its engine (gradient_clipping).
        norm = accelerator.clip_grad_norm_(_trained_parameters(s), s.config.train.max_grad_norm)
        s.grad_norm = None if norm is None else float(norm)
    if not math.isfinite(loss) or (s.grad_norm is not None and not math.isfinite(s.grad_norm)):
        kept = list_checkpoints(s.run_dir)
        raise TrainingDiverged(
            f"loss became {loss} (grad norm {s.grad_norm}) at step {s.state.step + 1}; "
            f"last good checkpoint: {kept[-1] if kept else 'none'}"
        )
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    return s.grad_norm


def _trained_parameters(s: Session) -> list[Any]:
    parameters = list(s.model.parameters())
    for head in s.trained_heads.values():
        parameters += list(head.parameters())
    return parameters


def _build_heads(
    objective: Any, model: Any, config: RunConfig, optimizer: Any, device: Any
) -> dict:
    """The objective's heads on the device, their parameters a group of the optimizer (added
    before the scheduler is built, so the schedule applies to them too)."""
    if objective.heads is None:
        return {}
    heads = {name: head.to(device) for name, head in objective.heads(model, config).items()}
    for head in heads.values():
        optimizer.add_param_group({"params": list(head.parameters())})
    return heads


def _head_tensors(heads: dict[str, Any]) -> dict[str, Any]:
    return {
        f"heads.{name}.{param}": tensor
        for name, head in heads.items()
        for param, tensor in head.named_parameters()
    }


def log_progress(session: Session, window: ProgressWindow) -> ProgressWindow:
    """Every `logging_steps` (and at the end): a line in train.log and metrics.jsonl; returns
    the window to fill next."""
    s = session
    if s.state.step % s.config.train.logging_steps and s.state.step != s.total_steps:
        return window
    elapsed = time.perf_counter() - window.start
    record = {
        "loss": sum(window.losses) / len(window.losses),
        "lr": s.scheduler.get_last_lr()[0],
        "epoch": s.state.epoch + s.state.batch_in_epoch / s.plan.batches_per_epoch,
        "samples_per_second": window.samples / elapsed if elapsed > 0 else 0.0,
    }
    for name, values in window.metrics.items():
        if name != "loss":
            record[name] = float(sum(values)) / len(values)
    if window.grad_norm is not None:
        record["grad_norm"] = window.grad_norm
    s.runlog.metrics(s.state.step, record)
    if s.routers is not None:
        load = s.routers.window_record(s.state.step)
        if load is not None:
            s.runlog.record(s.state.step, "moe", load)
    shown = {k: v for k, v in record.items() if k in window.metrics and k != "loss"}
    log.info(
        "step %d/%d loss %.4f lr %.3g %.1f samples/s%s",
        s.state.step,
        s.total_steps,
        record["loss"],
        record["lr"],
        record["samples_per_second"],
        f" | {format_metrics(shown)}" if shown else "",
    )
    return ProgressWindow()


def evaluate_if_due(session: Session) -> bool:
    """Evaluate every `eval_steps` and at the last step; True when the selection metric
    improved (that step's checkpoint becomes the best)."""
    s = session
    due = s.config.train.eval_steps and s.state.step % s.config.train.eval_steps == 0
    if s.eval_set is None or not (due or s.state.step == s.total_steps):
        return False
    s.last_eval, improved = evaluate_now(s)
    s.model.train()
    return improved


def checkpoint_if_due(session: Session, improved: bool) -> None:
    s = session
    save_due = s.config.train.save_steps and s.state.step % s.config.train.save_steps == 0
    if save_due or improved or s.state.step == s.total_steps or s.stopped_early:
        save_checkpoint(
            s.run_dir,
            s.state,
            s.checkpoint_tensors,
            s.optimizer,
            s.scheduler,
            s.accelerator,
            s.unwrapped,
        )
        s.last_saved = s.state.step
        if s.accelerator.is_main_process:
            prune_checkpoints(s.run_dir, s.config.train.save_total_limit, s.state.best_step)
    if s.stopped_early:
        log.info(
            "early stop at step %d: %s did not improve for %d evaluations",
            s.state.step,
            s.selection_metric,
            s.config.eval.early_stopping_patience,
        )


def finish(
    session: Session, run_samples: int, loop_seconds: float, loop_cpu_seconds: float
) -> RunResult:
    """The last checkpoint, the exported adapter or model, the reference profile, summary.json."""
    s, accelerator = session, session.accelerator
    main = accelerator.is_main_process
    if s.last_saved != s.state.step:
        save_checkpoint(
            s.run_dir,
            s.state,
            s.checkpoint_tensors,
            s.optimizer,
            s.scheduler,
            accelerator,
            s.unwrapped,
        )
    _write_rank_fingerprint(s.run_dir, accelerator, s.checkpoint_tensors, s.state.step, s.model)
    output = s.run_dir / ("adapter" if s.prepared.is_peft else "model")
    chosen = None
    if main and s.sharded:  # the rest reads and writes whole tensors: an unsharded copy
        _unshard_for_export(s)
    if main:
        chosen = _restore_best(s)
        _export_final(s.unwrapped, s.processor, output, s.initial_adapter)
        _export_heads(s.heads, s.run_dir / "heads")
        if s.config.data.streaming:
            profiled = s.train_set.head(s.config.data.profile_samples)
        else:
            profiled = sample_examples(
                s.train_set.unpacked or s.train_set,
                s.config.data.profile_samples,
                s.config.train.seed,
            )
        (s.run_dir / "reference.json").write_text(json.dumps(s.modality.profile(profiled)))
    result = RunResult(
        run_dir=s.run_dir,
        steps=s.state.step,
        train_loss=s.train_loss,
        eval_metrics=s.last_eval,
        best_step=s.state.best_step,
        stopped_early=s.stopped_early,
        samples_per_second=run_samples / loop_seconds if loop_seconds > 0 else 0.0,
        output=output,
        main_process=main,
        loop_seconds=loop_seconds,
        loop_cpu_seconds=loop_cpu_seconds,
        checkpoint=chosen.as_dict() if chosen is not None else None,
        peak_memory_mb=peak_memory_mb(accelerator.device),
    )
    if main:
        summary = {
            **asdict(result),
            "run_dir": str(s.run_dir),
            "output": str(output),
            "objective": s.objective.name,
            "train_skipped": dict(s.train_set.skipped),
            "eval_skipped": dict(s.eval_set.skipped) if s.eval_set is not None else {},
            "train_skipped_files": getattr(s.train_set, "skipped_files", {}),
            "eval_skipped_files": getattr(s.eval_set, "skipped_files", {}),
        }
        summary["footprint"] = weights(s.unwrapped)
        chain = _pruning_chain(s)
        if chain is not None:
            summary["pruning"] = chain
        (s.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        s.runlog.finish(summary, s.state.step)
    accelerator.wait_for_everyone()
    return result


def peak_memory_mb(device: Any) -> float:
    """This process's peak memory so far, in MB: CUDA's peak allocated on a GPU, the peak
    resident set size (Linux reports ru_maxrss in KiB) elsewhere."""
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evaluate_now(session: Session) -> tuple[dict[str, float], bool]:
    """Evaluate on the main process (on every rank when sharded); every rank learns whether it
    improved and whether to stop."""
    from accelerate.utils import broadcast_object_list

    s = session
    state = s.state
    decision: list[Any] = [None]

    def run_eval() -> dict[str, float]:
        return s.objective.evaluate(
            s.modality, s.unwrapped, s.processor, s.eval_set, s.config, s.reference
        )

    if s.sharded and not s.accelerator.is_main_process:
        # A sharded model's every forward gathers its parameters from all ranks: they all run
        # the evaluation; the main process's result decides.
        run_eval()
    if s.accelerator.is_main_process:
        if s.routers is None:
            metrics = run_eval()
        else:  # the experts' load over the evaluation's tokens (trainers/moe.py)
            metrics, shares = s.routers.evaluate(run_eval)
            if shares is not None:
                s.runlog.record(state.step, "moe_eval", {"expert_share": shares})
        s.runlog.metrics(state.step, metrics, kind="eval")
        log.info("eval at step %d: %s", state.step, format_metrics(metrics))
        if s.selection_metric not in metrics and s.config.eval.early_stopping_metric is None:
            # The default choice was not computed (exact_match without eval.metrics asking for
            # it): select on the first metric that was.
            directions = s.objective.metric_directions(s.modality)
            s.selection_metric = next(m for m in directions if m in metrics)
            s.direction = directions[s.selection_metric]
        if s.selection_metric not in metrics:
            raise ConfigError(
                f"eval.early_stopping_metric: {s.selection_metric} was not computed; "
                "add it to eval.metrics"
            )
        value = metrics[s.selection_metric]
        # Step 0 is the "before" value, not a candidate: only trained checkpoints can be best
        # (there is no checkpoint of the untouched weights to return to).
        better = state.step > 0 and (
            state.best_metric is None
            or (value < state.best_metric if s.direction == "min" else value > state.best_metric)
        )
        if better:
            state.best_metric, state.best_step = value, state.step
            state.selection_metric = s.selection_metric
            state.evals_without_improvement = 0
        elif state.step > 0:
            state.evals_without_improvement += 1
        state.history.append({"step": state.step, **metrics})
        stop = (
            s.config.eval.early_stopping_metric is not None
            and state.evals_without_improvement >= s.config.eval.early_stopping_patience
        )
        decision = [(metrics, better, stop, asdict(state))]
    broadcast_object_list(decision)
    metrics, better, stop, shared = decision[0]
    for key, value in shared.items():
        setattr(state, key, value)
    s.stopped_early = s.stopped_early or stop
    return metrics, better


def _read_data(objective: Any, modality: Any, config: RunConfig, processor: Any) -> tuple:
    if config.data.streaming:
        from omnitune.trainers.streaming import TextStream

        train_set = TextStream(config.data.train, config, processor)
        if not len(train_set.head(1)):
            raise DataError(f"{config.data.train}: no usable training examples in the stream")
    else:
        train_set = objective.data(modality, config.data.train, config, processor, True)
    eval_set = (
        objective.data(modality, config.data.eval, config, processor, False)
        if config.data.eval
        else None
    )
    for examples in (train_set, eval_set):
        if examples is None:
            continue
        log.info("data %s", examples.summary())
        if getattr(examples, "origin", None):
            log.info("data %s %s", examples.source, examples.origin)
        for line in getattr(examples, "skipped_listing", list)():
            log.info("data %s skipped %s", examples.source, line)
    if not config.data.streaming and len(train_set) == 0:
        raise DataError(
            f"{config.data.train}: no usable training {objective.reads} ({train_set.summary()})"
        )
    return train_set, eval_set


def _batch_source(
    config: RunConfig, train_set: Any, collate: Any, plan: BatchPlan, state: Any, accelerator: Any
) -> Any:
    """Where the steps' batches come from: the plan over a dataset, or a stream."""
    if config.data.streaming:
        from omnitune.trainers.streaming import StreamBatchSource

        return StreamBatchSource(
            train_set,
            collate,
            state,
            accelerator.process_index,
            accelerator.num_processes,
            config.train.batch_size,
            config.train.seed,
        )
    return BatchSource(
        train_set,
        collate,
        plan,
        state,
        accelerator.process_index,
        config.train.seed,
        workers=config.train.data_workers,
        pin_memory=accelerator.device.type == "cuda",
    )


def _batch_plan(config: RunConfig, train_set: Any, world_size: int) -> BatchPlan:
    import numpy as np

    if config.data.streaming:  # one "batch per epoch": the stream keeps its own position
        per_device = config.train.batch_size
        return BatchPlan(per_device * world_size, per_device, world_size, config.train.seed)

    strategy = config.data.balance.strategy
    weights = group_weights(train_set.groups, strategy, config.data.balance.temperature)
    if config.data.balance.by:
        log.info(
            "balance by %s (%s): %s",
            config.data.balance.by,
            strategy,
            distribution_report(train_set.groups, weights),
        )
    return BatchPlan(
        n_examples=len(train_set),
        per_device_batch=config.train.batch_size,
        world_size=world_size,
        seed=config.train.seed,
        weights=weights,
        epoch_size=epoch_length(train_set.groups, strategy) if weights is not None else None,
        lengths=np.asarray(train_set.lengths) if config.data.group_by_length else None,
    )


def _mean_metrics(per_micro: list[dict[str, Any]]) -> dict[str, Any]:
    """Each metric's mean over the micro-batches that reported it (still tensors)."""
    names = dict.fromkeys(name for metrics in per_micro for name in metrics)
    means = {}
    for name in names:
        values = [m[name] for m in per_micro if name in m]
        means[name] = sum(values) / len(values)
    return means


def _advance_progress_bar(progress: Any, session: Session, outcome: StepOutcome) -> None:
    if progress.disable:  # formatting the postfix costs ~40 us a step even when hidden
        return
    progress.update(1)
    progress.set_postfix(loss=f"{outcome.loss:.4f}", lr=f"{session.scheduler.get_last_lr()[0]:.2e}")


def _accelerator(config: RunConfig, trackers: list[str] | None = None) -> Any:
    import torch
    from accelerate import Accelerator

    check_device_support(config.peft.method)
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    # Without CUDA, accelerate runs several launched processes over gloo only when told cpu=True.
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not several:
        _forget_accelerate_state()
    return Accelerator(
        mixed_precision=_mixed_precision(config.train.mixed_precision),
        cpu=several and not torch.cuda.is_available(),
        log_with=trackers or None,
        project_dir=config.output_dir,
    )


def _selection_metric(config: RunConfig, directions: dict[str, str]) -> tuple[str, str]:
    """The metric that picks the best checkpoint (and drives early stopping when set): the
    objective's first metric unless `eval.early_stopping_metric` names another."""
    name = config.eval.early_stopping_metric or next(iter(directions))
    if name not in directions:
        raise ConfigError(
            f"eval.early_stopping_metric: '{name}' is not a metric of this run "
            f"(objective {config.objective.name}, model.modality {config.model.modality}; "
            f"known: {', '.join(directions)})"
        )
    return name, directions[name]


def _resume_point(run_dir: Path, resume: str, main: bool) -> Path | None:
    if resume == "never":
        if main and (run_dir / "checkpoints").exists():
            log.warning("train.resume=never: removing old checkpoints in %s", run_dir)
            shutil.rmtree(run_dir / "checkpoints")
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise ConfigError(f"train.resume: {resume} is not a checkpoint folder (no state.json)")
    return path


def _wrap_for_processes(
    accelerator: Any, model: Any, optimizer: Any, sharded: bool
) -> tuple[Any, Any]:
    """The model and optimizer as the step runs them: through accelerate (DDP, DeepSpeed, its
    FSDP on GPUs; the optimizer only where it must be), or as they are when the loop sharded
    the model itself (accelerate would wrap it in DDP; FSDP already synchronises gradients)."""
    if sharded:
        return model, optimizer
    if _optimizer_needs_accelerate(accelerator):
        return accelerator.prepare(model, optimizer)
    return accelerator.prepare(model), optimizer


def _optimizer_needs_accelerate(accelerator: Any) -> bool:
    """Whether the optimizer must go through accelerate's wrapper.

    The wrapper is needed for fp16 loss scaling and for sharded or XLA backends. Elsewhere
    (fp32, bf16, DDP) it only adds work: accelerate 1.15's `AcceleratedOptimizer.step` calls the
    uncached `is_lomo_available()` (a sys.path scan) twice and `zero_grad` calls
    `inspect.signature`, about 1 ms a step, 10% of a tiny model's step on one CPU thread
    (measured with bench/trainer_overhead.py).
    """
    from accelerate.utils import DistributedType

    sharded = {
        DistributedType.DEEPSPEED,
        DistributedType.FSDP,
        DistributedType.XLA,
        DistributedType.MEGATRON_LM,
    }
    return accelerator.mixed_precision == "fp16" or accelerator.distributed_type in sharded


def _forget_accelerate_state() -> None:
    """Let a second run in the same process choose its own precision and device.

    accelerate keeps its state in process-wide singletons that refuse a different
    mixed_precision once set; a notebook or a sweep calling train() twice would fail. Resetting
    is safe in a single process (there is no process group to lose). The reset functions are
    accelerate's private API, the same ones transformers' test utilities use.
    """
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    import torch

    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def _log_trainable(model: Any) -> None:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info(
        "trainable parameters: %s of %s (%.2f%%)",
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / max(total, 1),
    )


def _progress_bar(total: int, initial: int, main: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="step",
        dynamic_ncols=True,
        disable=not main or not sys.stderr.isatty(),
    )


def _save_initial_adapter(model: Any, folder: Path) -> None:
    """PiSSA/OLoRA: keep the initial adapter so the exported one converts back to plain LoRA."""
    config = model.peft_config["default"]
    init = config.init_lora_weights
    config.init_lora_weights = True
    model.save_pretrained(folder)
    config.init_lora_weights = init


def _refuse_unshardable(objective: Objective, prepared: Any, config: RunConfig) -> None:
    """What FSDP on CPUs does not cover: a frozen full copy of the model as the reference
    (DPO/KTO/GRPO with peft.method full) and trained heads beside the model (PPO's value
    head): both would need sharding of their own."""
    if objective.heads is not None:
        raise ConfigError(
            f"objective.name: {objective.name} trains a head beside the model, which FSDP on "
            "CPUs does not shard; use the DDP config (configs/accelerate/ddp.yaml)"
        )
    if objective.needs_reference and not prepared.is_peft:
        raise ConfigError(
            f"peft.method: full with objective {objective.name} needs a frozen copy of the "
            "model as reference, which FSDP on CPUs does not shard; use a PEFT method (the "
            "reference is then the model with its adapter off) or the DDP config"
        )


def _unshard_for_export(s: Session) -> None:
    """Give the main process an unsharded model holding the run's last weights (the final
    checkpoint, just written whole): what `_restore_best`, the export and the footprint use."""
    from safetensors.torch import load_file

    model, _ = _load_model(s.config, s.modality)
    prepared = _prepare(s.config, s.modality, model)
    saved_names = set(prepared.checkpoint_names)
    plain = prepared.model
    tensors = {n: p for n, p in plain.named_parameters() if n in saved_names}
    last = list_checkpoints(s.run_dir)[-1]
    sharding.load_parameters(tensors, load_file(last / "trainable.safetensors"))
    s.unwrapped = plain
    s.checkpoint_tensors = {**tensors, **_head_tensors(s.heads)}


def _restore_best(session: Session) -> Any:
    """Put the best checkpoint's weights back into the model before it is saved, so that the
    run's adapter/model folder holds what `omnitune eval` and `export` choose by default;
    returns the ChosenCheckpoint (the last one when no evaluation chose a best)."""
    import torch
    from safetensors.torch import load_file

    from omnitune.trainers.run_weights import choose_checkpoint

    chosen = choose_checkpoint(session.run_dir, "best")
    before = next((r for r in session.state.history if r["step"] == 0), None)
    if before is not None and chosen.value is not None and chosen.metric in before:
        start = before[chosen.metric]
        worse = chosen.value > start if session.direction == "min" else chosen.value < start
        if worse:
            log.warning(
                "training made %s worse than before it (step 0: %.4f, best checkpoint: %.4f); "
                "check train.lr and the data",
                chosen.metric,
                start,
                chosen.value,
            )
    if chosen.step != session.state.step:
        tensors = load_file(chosen.path / "trainable.safetensors")
        with torch.no_grad():
            for name, value in tensors.items():
                session.checkpoint_tensors[name].copy_(value)
        log.info("saving the %s", chosen.describe())
    return chosen


def _export_final(model: Any, processor: Any, output: Path, initial_adapter: Path) -> None:
    staging = output.with_name(f".staging-{output.name}")
    shutil.rmtree(staging, ignore_errors=True)
    options = {}
    if initial_adapter.is_dir():
        options["path_initial_model_for_weight_conversion"] = str(initial_adapter)
    model.save_pretrained(staging, **options)
    processor.save_pretrained(staging)
    shutil.rmtree(output, ignore_errors=True)
    staging.rename(output)


def _export_heads(heads: dict[str, Any], folder: Path) -> None:
    """Each head's weights as `<name>.safetensors`: PPO's value head, beside the adapter (which
    stays loadable with plain `PeftModel.from_pretrained`)."""
    if not heads:
        return
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for name, head in heads.items():
        tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        save_file(tensors, folder / f"{name}.safetensors")


def _write_rank_fingerprint(
    run_dir: Path, accelerator: Any, tensors: dict[str, Any], step: int, model: Any
) -> None:
    """Each rank records a hash of its trained weights (equal hashes prove the ranks agree)
    and how many parameter elements it holds (under FSDP, its shards: about 1/N of them)."""
    tensors = sharding.full_tensors(tensors)  # a sharded run's ranks agree on gathered weights
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().float().cpu().numpy().tobytes())
    folder = run_dir / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "step": step,
        "weights_sha256": digest.hexdigest(),
        "parameters_held": sharding.elements_held(model),
        "parameters_total": sum(p.numel() for p in model.parameters()),
    }
    (folder / f"rank-{accelerator.process_index}.json").write_text(json.dumps(record) + "\n")
    accelerator.wait_for_everyone()
