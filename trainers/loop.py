"""The trainer core: one loop for every modality and every PEFT method.

Read `train()` top to bottom: load through the modality, prepare the PEFT method, plan the data
order, resume if asked, then step. The modality supplies model, processor, data, collator,
evaluation and reference profile; nothing here branches on which modality it is. The loop runs
unchanged on one CPU, one GPU, or N processes under `accelerate launch` (data is sharded by
`BatchPlan`, gradients are synchronised by accelerate's DDP wrapper).
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omnitune.modalities.base import get_modality
from omnitune.trainers.checkpoint import (
    TrainState,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from omnitune.trainers.config import RunConfig
from omnitune.trainers.errors import ConfigError, DataError, OmnituneError
from omnitune.trainers.peft_methods import (
    MUTATING_INIT,
    build_optimizer,
    check_device_support,
    load_options,
    prepare_model,
)
from omnitune.trainers.runlog import RunLog, format_metrics
from omnitune.trainers.sampling import BatchPlan, distribution_report, epoch_length, group_weights

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


def train(config: RunConfig) -> RunResult:
    """Run (or resume) the training run `config` describes; returns where everything went."""
    import numpy as np
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    if config.objective.name != "sft":
        raise ConfigError(f"objective.name: {config.objective.name} is not available yet; use sft")
    check_device_support(config.peft.method)
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    # Without CUDA, accelerate runs several launched processes over gloo only when told cpu=True.
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not several:
        _forget_accelerate_state()
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(config.train.mixed_precision),
        cpu=several and not torch.cuda.is_available(),
    )
    main = accelerator.is_main_process
    set_seed(config.train.seed)
    run_dir = Path(config.output_dir)
    runlog = RunLog(run_dir, enabled=main)
    try:
        modality = get_modality(config.model.modality)
        model, processor = modality.load(config.model, **load_options(config.peft.method))
        train_set = modality.dataset(config.data.train, config, processor, training=True)
        eval_set = (
            modality.dataset(config.data.eval, config, processor, training=False)
            if config.data.eval
            else None
        )
        for examples in filter(None, (train_set, eval_set)):
            log.info("data %s", examples.summary())
        if len(train_set) == 0:
            raise DataError(f"{config.data.train}: no usable training examples")
        selection_metric, direction = _selection_metric(config, modality)

        if config.train.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        prepared = prepare_model(
            model, config.peft, modality.targets(model), modality.task_type, config.train.seed
        )
        model = prepared.model
        _log_trainable(model)
        optimizer = build_optimizer(model, config.peft, config.train)

        strategy = config.data.balance.strategy
        weights = group_weights(train_set.groups, strategy, config.data.balance.temperature)
        if config.data.balance.by:
            log.info(
                "balance by %s (%s): %s",
                config.data.balance.by,
                strategy,
                distribution_report(train_set.groups, weights),
            )
        plan = BatchPlan(
            n_examples=len(train_set),
            per_device_batch=config.train.batch_size,
            world_size=accelerator.num_processes,
            seed=config.train.seed,
            weights=weights,
            epoch_size=epoch_length(train_set.groups, strategy) if weights is not None else None,
            lengths=np.asarray(train_set.lengths) if config.data.group_by_length else None,
        )
        grad_accum = config.train.grad_accum
        total_steps = config.train.max_steps or max(
            1, math.ceil(config.train.epochs * plan.batches_per_epoch / grad_accum)
        )
        scheduler = get_scheduler(
            config.train.lr_schedule,
            optimizer,
            num_warmup_steps=config.train.warmup_steps,
            num_training_steps=total_steps,
        )

        initial_adapter = run_dir / "initial-adapter"
        state = TrainState()
        resume_from = _resume_point(run_dir, config.train.resume, main)
        if resume_from is not None:
            state = load_checkpoint(
                resume_from, model, optimizer, scheduler, accelerator.process_index
            )
            log.info("resumed from %s (step %d)", resume_from, state.step)
        elif main and prepared.is_peft and config.peft.method in MUTATING_INIT:
            _save_initial_adapter(model, initial_adapter)
        runlog.start(config, state.step)

        if _optimizer_needs_accelerate(accelerator):
            model, optimizer = accelerator.prepare(model, optimizer)
        else:
            model = accelerator.prepare(model)
        unwrapped = accelerator.unwrap_model(model)
        saved_names = set(prepared.checkpoint_names)
        checkpoint_tensors = {n: p for n, p in unwrapped.named_parameters() if n in saved_names}
        collate = modality.collator(processor, config, training=True)
        loss_fn = _custom_loss(config, train_set.groups, unwrapped, accelerator.device)

        def evaluate_now() -> tuple[dict[str, float], bool, bool]:
            return _evaluate(
                accelerator,
                modality,
                unwrapped,
                processor,
                eval_set,
                config,
                state,
                selection_metric,
                direction,
                runlog,
            )

        last_eval: dict[str, float] = {}
        if eval_set is not None and state.step == 0:
            # The "before" value: every run's log shows where training started from.
            last_eval, _, _ = evaluate_now()
        model.train()
        order = plan.epoch_order(state.epoch)
        progress = _progress_bar(total_steps, state.step, main)
        window_loss: list[float] = []
        window_start, window_samples = time.perf_counter(), 0
        run_start, run_samples = time.perf_counter(), 0
        cpu_start = time.process_time()
        last_saved = state.step if resume_from is not None else None
        stopped_early = False
        train_loss = None

        while state.step < total_steps:
            note = prepared.update(unwrapped, state.step)
            if note:
                log.info(note)
            micro_losses = []
            for micro in range(grad_accum):
                if state.batch_in_epoch >= plan.batches_per_epoch:
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                    order = plan.epoch_order(state.epoch)
                indices = plan.batch(order, state.batch_in_epoch, accelerator.process_index)
                state.batch_in_epoch += 1
                batch = _to_device(collate([train_set[i] for i in indices]), accelerator.device)
                # DDP all-reduces gradients only on the last micro-batch of a step.
                sync = micro == grad_accum - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                    outputs = model(**batch)
                    loss = outputs.loss if loss_fn is None else loss_fn(outputs, batch, indices)
                    accelerator.backward(loss / grad_accum)
                micro_losses.append(loss.detach().float())
            step_loss_tensor = torch.stack(micro_losses).mean()
            if accelerator.num_processes > 1:
                step_loss_tensor = accelerator.reduce(step_loss_tensor, "mean")
            step_loss = float(step_loss_tensor)
            grad_norm = None
            if config.train.max_grad_norm is not None:
                # None under DeepSpeed, which clips inside its engine (gradient_clipping).
                norm = accelerator.clip_grad_norm_(model.parameters(), config.train.max_grad_norm)
                grad_norm = None if norm is None else float(norm)
            if not math.isfinite(step_loss) or (
                grad_norm is not None and not math.isfinite(grad_norm)
            ):
                kept = list_checkpoints(run_dir)
                raise TrainingDiverged(
                    f"loss became {step_loss} (grad norm {grad_norm}) at step {state.step + 1}; "
                    f"last good checkpoint: {kept[-1] if kept else 'none'}"
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.samples_seen += plan.global_batch * grad_accum
            window_samples += plan.global_batch * grad_accum
            run_samples += plan.global_batch * grad_accum
            window_loss.append(step_loss)
            train_loss = step_loss
            if not progress.disable:  # formatting the postfix costs ~40 us a step even when hidden
                progress.update(1)
                progress.set_postfix(
                    loss=f"{step_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}"
                )

            if state.step % config.train.logging_steps == 0 or state.step == total_steps:
                elapsed = time.perf_counter() - window_start
                record = {
                    "loss": sum(window_loss) / len(window_loss),
                    "lr": scheduler.get_last_lr()[0],
                    "epoch": state.epoch + state.batch_in_epoch / plan.batches_per_epoch,
                    "samples_per_second": window_samples / elapsed if elapsed > 0 else 0.0,
                }
                if grad_norm is not None:
                    record["grad_norm"] = grad_norm
                runlog.metrics(state.step, record)
                log.info(
                    "step %d/%d loss %.4f lr %.3g %.1f samples/s",
                    state.step,
                    total_steps,
                    record["loss"],
                    record["lr"],
                    record["samples_per_second"],
                )
                window_loss, window_start, window_samples = [], time.perf_counter(), 0

            improved = False
            due = config.train.eval_steps and state.step % config.train.eval_steps == 0
            if eval_set is not None and (due or state.step == total_steps):
                last_eval, improved, stop = evaluate_now()
                model.train()
                stopped_early = stop
            save_due = config.train.save_steps and state.step % config.train.save_steps == 0
            if save_due or improved or state.step == total_steps or stopped_early:
                save_checkpoint(
                    run_dir, state, checkpoint_tensors, optimizer, scheduler, accelerator
                )
                last_saved = state.step
                if main:
                    prune_checkpoints(run_dir, config.train.save_total_limit, state.best_step)
            if stopped_early:
                log.info(
                    "early stop at step %d: %s did not improve for %d evaluations",
                    state.step,
                    selection_metric,
                    config.eval.early_stopping_patience,
                )
                break
        progress.close()
        loop_seconds = time.perf_counter() - run_start
        loop_cpu_seconds = time.process_time() - cpu_start

        if last_saved != state.step:
            save_checkpoint(run_dir, state, checkpoint_tensors, optimizer, scheduler, accelerator)
        _write_rank_fingerprint(run_dir, accelerator, checkpoint_tensors, state.step)
        output = run_dir / ("adapter" if prepared.is_peft else "model")
        if main:
            _export_final(unwrapped, processor, output, initial_adapter)
            reference = modality.profile(train_set)
            (run_dir / "reference.json").write_text(json.dumps(reference))
        result = RunResult(
            run_dir=run_dir,
            steps=state.step,
            train_loss=train_loss,
            eval_metrics=last_eval,
            best_step=state.best_step,
            stopped_early=stopped_early,
            samples_per_second=run_samples / loop_seconds if loop_seconds > 0 else 0.0,
            output=output,
            main_process=main,
            loop_seconds=loop_seconds,
            loop_cpu_seconds=loop_cpu_seconds,
        )
        if main:
            summary = {
                **asdict(result),
                "run_dir": str(run_dir),
                "output": str(output),
                "train_skipped": dict(train_set.skipped),
                "eval_skipped": dict(eval_set.skipped) if eval_set is not None else {},
            }
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        accelerator.wait_for_everyone()
        return result
    finally:
        runlog.close()


def _evaluate(
    accelerator: Any,
    modality: Any,
    model: Any,
    processor: Any,
    eval_set: Any,
    config: RunConfig,
    state: TrainState,
    metric: str,
    direction: str,
    runlog: RunLog,
) -> tuple[dict[str, float], bool, bool]:
    """Evaluate on the main process; every rank learns whether it improved and whether to stop."""
    from accelerate.utils import broadcast_object_list

    decision: list[Any] = [None]
    if accelerator.is_main_process:
        metrics = modality.evaluate(model, processor, eval_set, config)
        runlog.metrics(state.step, metrics, kind="eval")
        log.info("eval at step %d: %s", state.step, format_metrics(metrics))
        value = metrics[metric]
        better = state.best_metric is None or (
            value < state.best_metric if direction == "min" else value > state.best_metric
        )
        if better:
            state.best_metric, state.best_step = value, state.step
            state.evals_without_improvement = 0
        else:
            state.evals_without_improvement += 1
        state.history.append({"step": state.step, **metrics})
        stop = (
            config.eval.early_stopping_metric is not None
            and state.evals_without_improvement >= config.eval.early_stopping_patience
        )
        decision = [(metrics, better, stop, asdict(state))]
    broadcast_object_list(decision)
    metrics, better, stop, shared = decision[0]
    for key, value in shared.items():
        setattr(state, key, value)
    return metrics, better, stop


def _custom_loss(config: RunConfig, groups: list[str | None], model: Any, device: Any) -> Any:
    """None for the model's own loss; else a function (outputs, batch, indices) -> loss."""
    if config.objective.loss == "cross_entropy":
        return None
    import torch

    from omnitune.trainers.losses import inverse_frequency_weights, sequence_loss

    causal = not model.config.is_encoder_decoder
    gamma = config.objective.focal_gamma if config.objective.loss == "focal" else 0.0
    weight_of = (
        inverse_frequency_weights(groups) if config.objective.loss == "class_weighted" else None
    )

    def loss(outputs: Any, batch: dict[str, Any], indices: list[int]) -> Any:
        weights = None
        if weight_of is not None:
            weights = torch.tensor([weight_of[groups[i]] for i in indices], device=device)
        return sequence_loss(outputs.logits, batch["labels"], causal, weights, gamma)

    return loss


def _selection_metric(config: RunConfig, modality: Any) -> tuple[str, str]:
    """The metric that picks the best checkpoint (and drives early stopping when set)."""
    name = config.eval.early_stopping_metric or next(iter(modality.metric_directions))
    if name not in modality.metric_directions:
        known = ", ".join(modality.metric_directions)
        raise ConfigError(
            f"eval.early_stopping_metric: '{name}' is not a {modality.name} metric (known: {known})"
        )
    return name, modality.metric_directions[name]


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


def _write_rank_fingerprint(
    run_dir: Path, accelerator: Any, tensors: dict[str, Any], step: int
) -> None:
    """Each rank records a hash of its trained weights: equal hashes prove the ranks agree."""
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
    }
    (folder / f"rank-{accelerator.process_index}.json").write_text(json.dumps(record))
    accelerator.wait_for_everyone()
