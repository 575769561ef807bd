"""The run config: one YAML file per training run, validated by these pydantic models.

Every field's `description` is its reference documentation (`omnitune config show --schema`
prints them). Unknown keys are rejected everywhere (`extra="forbid"`), so a typo in a nested key
fails with its dotted path instead of being silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, model_validator

from omnitune.core.configio import Section, describe_error, load_config
from omnitune.modalities.base import MODALITIES
from omnitune.trainers.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, get_objective
from omnitune.trainers.peft_methods import PEFT_METHODS

# The names come from the registries, so that a new modality or PEFT method needs no edit here.
Modality = Literal[tuple(MODALITIES)]
PeftMethod = Literal[PEFT_METHODS]


class ModelSection(Section):
    name_or_path: str = Field(
        description="Hub id (e.g. openai/whisper-tiny) or local folder saved with save_pretrained."
    )
    modality: Modality = Field(description="Which modality package loads and trains the model.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weights dtype. 'auto': bfloat16 on a GPU that supports it, else float32.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(
        False, description="Allow model code from the hub. Off unless you trust the repository."
    )
    config_overrides: dict[str, object] = Field(
        default_factory=dict,
        description=(
            "Model config attributes set at load, e.g. {dropout: 0.1} for a small model "
            "trained on little data; passed to from_pretrained."
        ),
    )


class BalanceSection(Section):
    by: str | None = Field(
        None, description="Record field holding each example's label or group, e.g. 'speaker'."
    )
    strategy: Literal["none", "oversample", "undersample", "temperature"] = Field(
        "none",
        description=(
            "How to reweight groups when sampling: oversample rare ones to the largest, "
            "undersample common ones to the smallest, or temperature: p(group) ~ n^T."
        ),
    )
    temperature: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="Temperature strategy: 1 keeps the data's mix, 0 -> uniform.",
    )

    @model_validator(mode="after")
    def _strategy_needs_a_field(self) -> BalanceSection:
        if self.strategy != "none" and not self.by:
            raise ValueError(f"data.balance.by: strategy '{self.strategy}' needs a field name")
        return self


class DataSection(Section):
    train: str = Field(description="Training data: a JSONL/CSV manifest, a folder, or hf:NAME.")
    eval: str | None = Field(None, description="Evaluation data, same forms as `train`.")
    max_length: int = Field(
        512,
        ge=8,
        le=1_048_576,
        description="Longest sample in tokens (image tokens included); longer ones are dropped "
        "and counted by default (data.options.overlong: drop, fail, or for text truncate). "
        "With data.packing, the length of a packed row.",
    )
    packing: bool = Field(
        False,
        description=(
            "Text SFT: pack examples into rows of data.max_length tokens with no padding; "
            "attention never crosses an example (position ids restart per example)."
        ),
    )
    max_eval_samples: int | None = Field(
        None, ge=1, description="Evaluate on at most this many samples (None: all)."
    )
    balance: BalanceSection = Field(default_factory=BalanceSection)
    group_by_length: bool = Field(
        False,
        description=(
            "Batch examples of similar length (speech: duration; text: tokens) for less padding: "
            "shuffled windows of 50 batches are sorted by length, cut, and the batches shuffled."
        ),
    )
    options: dict[str, object] = Field(
        default_factory=dict,
        description="Modality-specific reading options, validated by the modality package.",
    )
    cache: bool = Field(
        True,
        description=(
            "Local files: keep the read dataset in Arrow under $OMNITUNE_CACHE/prepared "
            "(text tokenised; speech clips and images checked and measured), keyed by the "
            "file's content, the tokenizer or processor and these settings, so the next run "
            "or resume opens it memory-mapped instead of reading the file again (`omnitune "
            "data prepare` builds it ahead of time). A changed audio or image file is noticed."
        ),
    )
    num_proc: int | None = Field(
        None,
        ge=1,
        le=256,
        description=(
            "Processes that tokenise (text) or check media (speech, images) when a prepared "
            "dataset is built (None: the cores available, one per 20,000 text rows or 200 "
            "media rows). The result is the same for any count."
        ),
    )
    streaming: bool = Field(
        False,
        description=(
            "Text SFT on a JSONL/CSV/Parquet file: read it lazily, row by row, through a "
            "seeded shuffle buffer instead of preparing it whole (for files larger than memory "
            "or disk); the position in the stream is in every checkpoint. Needs "
            "train.max_steps; not with balancing, length grouping, packing or data workers."
        ),
    )
    shuffle_buffer: int = Field(
        10_000,
        ge=1,
        description="data.streaming: rows held and drawn from at random (seeded).",
    )
    profile_samples: int = Field(
        20_000,
        ge=100,
        description=(
            "Examples drawn (seeded) to write the drift reference profile; a larger dataset "
            "is sampled rather than read whole."
        ),
    )


class PeftSection(Section):
    method: PeftMethod = Field("lora", description="Parameter-efficient method, or 'full'.")
    r: int = Field(8, ge=1, le=4096, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (lora_alpha).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | str | None = Field(
        None,
        description="Module names or one regex to adapt; None: the architecture's default.",
    )
    modules_to_save: list[str] | None = Field(
        None, description="Modules trained in full and saved with the adapter (e.g. a projector)."
    )
    loraplus_lr_ratio: float = Field(
        16.0, gt=0, description="LoRA+: learning-rate ratio of the B matrices to the A matrices."
    )
    num_virtual_tokens: int = Field(
        16, ge=1, le=1024, description="Prompt tuning: number of virtual tokens."
    )
    hft_selection: Literal["alternate", "random"] = Field(
        "alternate",
        description="Half Fine-Tuning: alternate the frozen half each round, or draw it per round.",
    )
    hft_round_steps: int = Field(
        50, ge=1, description="Half Fine-Tuning: optimizer steps per round."
    )
    init_from: str | None = Field(
        None,
        description=(
            "Start from a saved adapter's weights (a run's adapter/ folder) instead of a fresh "
            "adapter: continued training, as `omnitune loop retune` does. Its method, rank and "
            "target modules must match this section's."
        ),
    )
    target_parameters: list[str] | None = Field(
        None,
        description=(
            "Parameters (not modules) to adapt with LoRA, by name suffix: on a Mixture-of-"
            "Experts model, the fused expert weights (mlp.experts.gate_up_proj, "
            "mlp.experts.down_proj), which no target_modules entry reaches. None: every fused "
            "expert weight of an MoE model, nothing on a dense one; []: attention only."
        ),
    )


class MoeSection(Section):
    """Mixture-of-Experts runs (omnitune.trainers.moe); ignored by dense models."""

    router_aux_loss_coef: float | None = Field(
        None,
        ge=0.0,
        le=10.0,
        description=(
            "Weight of the router's load-balancing loss added to the objective's loss (the "
            "family's own Switch-style loss); 0 turns it off; None: the model config's own "
            "router_aux_loss_coef (0.001 for Mixtral and Qwen3-MoE, 0.01 for OLMoE)."
        ),
    )
    train_router: bool = Field(
        False,
        description=(
            "Train the routers in full beside the adapter (saved with it, like "
            "modules_to_save); otherwise they stay frozen and only the experts and attention adapt."
        ),
    )
    collapse_share: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description=(
            "An expert receiving less than this fraction of an even share of the routed tokens "
            "counts as starved; reported as collapsed after moe.collapse_steps such steps."
        ),
    )
    collapse_steps: int = Field(
        100, ge=1, description="Steps an expert may stay starved before the log reports it."
    )


def _objective_name(value: Any) -> str:
    """Which objective's options a raw or validated `objective` section holds (the default
    objective unless it names one)."""
    if isinstance(value, dict):
        return value.get("name", DEFAULT_OBJECTIVE)
    return getattr(value, "name", DEFAULT_OBJECTIVE)


#: The `objective` section: the registered objectives' option models, chosen by `name`.
ObjectiveSection = Annotated[
    Union[tuple(Annotated[get_objective(n).options, Tag(n)] for n in OBJECTIVES)],  # noqa: UP007
    Discriminator(
        _objective_name,
        custom_error_type="unknown_choice",
        custom_error_message="unknown objective",
        custom_error_context={"field": "name", "known": ", ".join(OBJECTIVES)},
    ),
]


class TrainSection(Section):
    max_steps: int | None = Field(
        None, ge=1, description="Optimizer steps to run; takes precedence over `epochs`."
    )
    epochs: float | None = Field(None, gt=0, description="Passes over the training data.")
    batch_size: int = Field(8, ge=1, le=65_536, description="Samples per device per micro-batch.")
    grad_accum: int = Field(1, ge=1, le=4096, description="Micro-batches per optimizer step.")
    lr: float = Field(2e-4, gt=0, lt=1.0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    lr_schedule: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Decay after warmup."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; None: off.")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="'auto': bf16 where the device supports it, else none."
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description=(
            "Trade compute for activation memory. auto: on when a micro-batch's estimated "
            "activations exceed both the weights' size and 1 GiB (trainers/memory_rules.py)."
        ),
    )
    chunked_loss: bool | Literal["auto"] = Field(
        "auto",
        description=(
            "Score tokens through the output head in chunks of positions, never holding the "
            "whole [tokens, vocabulary] logits (trainers/chunked_loss.py); same loss and "
            "gradients. auto: for causal LMs with a vocabulary of 65,536 tokens or more."
        ),
    )
    eval_steps: int | None = Field(None, ge=1, description="Evaluate every N steps; None: at end.")
    save_steps: int | None = Field(
        None, ge=1, description="Checkpoint every N steps; None: at end."
    )
    save_total_limit: int = Field(2, ge=1, description="Keep the last K checkpoints (+ the best).")
    logging_steps: int = Field(10, ge=1, description="Log loss and throughput every N steps.")
    seed: int = Field(0, ge=0, description="Seeds Python, NumPy, torch and the data order.")
    resume: Literal["auto", "never"] | str = Field(
        "auto", description="'auto': continue from the latest checkpoint; or a checkpoint path."
    )
    num_threads: int | None = Field(
        None, ge=1, description="torch CPU threads; None: torch's default."
    )
    report_to: list[
        Literal[
            "tensorboard",
            "mlflow",
            "wandb",
            "comet_ml",
            "aim",
            "clearml",
            "dvclive",
            "swanlab",
            "trackio",
        ]
    ] = Field(
        default_factory=lambda: ["tensorboard"],
        description=(
            "Experiment trackers that get the run's config, every logged metric and its final "
            "summary, through accelerate's integrations (MLflow and W&B: pip install "
            "'omnitune[trackers]'); [] for none. TensorBoard writes under OUTPUT_DIR/tensorboard."
        ),
    )
    data_workers: int = Field(
        0,
        ge=0,
        le=64,
        description=(
            "Processes that collate the next batches (padding, images, audio features, "
            "augmentation) while the model trains; 0: the training loop collates. Same batches, "
            "same results either way."
        ),
    )

    @model_validator(mode="after")
    def _needs_a_length(self) -> TrainSection:
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set train.max_steps or train.epochs")
        return self


class GenerationSection(Section):
    max_new_tokens: int = Field(32, ge=1, le=65_536, description="Tokens generated per sample.")
    num_beams: int = Field(1, ge=1, le=64, description="Beam width; 1 is greedy.")


class EvalSection(Section):
    metrics: list[str] = Field(
        default_factory=list,
        description="Metric names; empty: the modality's default (perplexity, vqa_accuracy, wer).",
    )
    batch_size: int = Field(16, ge=1, description="Samples per evaluation batch.")
    generation: GenerationSection = Field(default_factory=GenerationSection)
    early_stopping_metric: str | None = Field(
        None, description="Stop when this eval metric stops improving."
    )
    early_stopping_patience: int = Field(3, ge=1, description="Evaluations without improvement.")


class RunConfig(Section):
    """A whole training run: what `omnitune train CONFIG` reads."""

    model: ModelSection
    data: DataSection
    peft: PeftSection = Field(default_factory=PeftSection)
    moe: MoeSection = Field(default_factory=MoeSection)
    objective: ObjectiveSection = Field(
        default_factory=lambda: get_objective(DEFAULT_OBJECTIVE).options()
    )
    train: TrainSection
    eval: EvalSection = Field(default_factory=EvalSection)
    output_dir: str = Field("runs/default", description="Where the run writes everything.")

    @model_validator(mode="after")
    def _streaming_fits(self) -> RunConfig:
        if not self.data.streaming:
            return self
        refusals = [
            (self.model.modality != "text", "model.modality", "text only for now"),
            (not self.objective.streams, "objective.name", "SFT only for now"),
            (self.train.max_steps is None, "train.max_steps", "a stream has no known length"),
            (self.data.balance.by is not None, "data.balance.by", "needs every row's group"),
            (self.data.group_by_length, "data.group_by_length", "needs every row's length"),
            (self.data.packing, "data.packing", "packs the whole dataset"),
            (self.train.data_workers > 0, "train.data_workers", "the stream is read in order"),
        ]
        for refused, field_path, why in refusals:
            if refused:
                raise ValueError(f"{field_path}: not with data.streaming ({why})")
        return self

    @model_validator(mode="after")
    def _objective_fits_modality(self) -> RunConfig:
        objective = get_objective(self.objective.name)
        if self.model.modality not in objective.modalities:
            raise ValueError(
                f"objective.name: {self.objective.name} is for "
                f"{' and '.join(sorted(objective.modalities))} models, not {self.model.modality}"
            )
        if not self.objective.truncates and self.data.options.get("overlong") == "truncate":
            raise ValueError(
                f"data.options.overlong: {objective.reads} are never truncated (answers would "
                "be scored after different prompts, or cut short against the reference); use "
                "drop or fail"
            )
        return self

    @model_validator(mode="after")
    def _objective_fits_run(self) -> RunConfig:
        """The objective's own constraints on the other sections (`ObjectiveOptions.fits`)."""
        self.objective.fits(self)
        return self

    @model_validator(mode="after")
    def _packing_fits(self) -> RunConfig:
        if not self.data.packing:
            return self
        if self.model.modality != "text" or not self.objective.packs:
            raise ValueError(
                "data.packing: packs text SFT examples only (model.modality text, "
                "objective.name sft)"
            )
        if self.data.balance.strategy != "none":
            raise ValueError(
                "data.packing: cannot be combined with data.balance (rows mix examples of "
                "different groups)"
            )
        return self

    @model_validator(mode="after")
    def _options_fit_modality(self) -> RunConfig:
        """Check `data.options` against the modality's own options model, if it has one."""
        from pydantic import ValidationError

        from omnitune.modalities.base import options_model

        model = options_model(self.model.modality)
        if model is None:
            return self
        try:
            model.model_validate(self.data.options)
        except ValidationError as exc:
            problems = [describe_error(e, model, "data.options") for e in exc.errors()]
            raise ValueError("; ".join(problems)) from None
        return self


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load and validate a run config, with `section.key=value` overrides applied."""
    return load_config(RunConfig, path, overrides)
