"""The `objective` section's shared option models: each objective has its own model (as each
PEFT method has its own `peft` config), selected by `objective.name`, and they build on these.

`RunConfig.objective` is the union of the registered objectives' models, told apart by
`name` (sft when it is left out), so that an option of another objective is an unknown key
naming the one in use, and `omnitune config show` prints only the options that apply. An
objective whose options constrain other sections (the data, the PEFT method, the trainer)
says so in `fits`, which `RunConfig` calls once every section is valid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from omnitune.core.configio import Section
from omnitune.trainers.peft_methods import MUTATING_INIT
from omnitune.trainers.rewards import RewardSpec

if TYPE_CHECKING:
    from omnitune.trainers.config import RunConfig

NAME_HELP = (
    "Training objective: sft (supervised), dpo or orpo (preference pairs), kto (answers "
    "labelled desirable or not), grpo or ppo (online, with reward functions; "
    "docs/alignment.md), distill (a frozen teacher's token distribution; docs/smaller.md). "
    "Objectives are a registry "
    "(omnitune.trainers.objectives), each with its own options."
)


class ObjectiveOptions(Section):
    """What every objective has: its name, and how the modality labels chat rows (the
    modalities read it when they read a dataset's rows, whatever the objective)."""

    name: str = Field(description=NAME_HELP)
    assistant_only_loss: bool = Field(
        True, description="Text/VLM SFT: train only on assistant turns (prompts masked)."
    )

    #: Whether `data.packing` may pack this objective's examples into rows.
    packs: ClassVar[bool] = False
    #: Whether this objective can read `data.streaming` sources.
    streams: ClassVar[bool] = False
    #: Whether its rows may be cut to `data.max_length` (`data.options.overlong: truncate`);
    #: answers scored against each other or a reference never are.
    truncates: ClassVar[bool] = True

    def precomputes_reference(self) -> bool:
        """Whether the reference policy's scores are computed once before training."""
        return False

    def fits(self, config: RunConfig) -> None:
        """Raise ValueError ('dotted.path: why') when these options cannot go with the rest
        of `config`; called by `RunConfig` after every section validated."""


class ReferenceOptions(ObjectiveOptions):
    """Options of the objectives that score answers against a reference policy (DPO, KTO):
    the implicit reward's scale and whether the reference's scores are computed once. Their
    answers are never truncated (a cut answer would be scored short against the reference)."""

    truncates: ClassVar[bool] = False

    beta: float = Field(
        0.1,
        gt=0,
        description=(
            "How strongly the policy may move from the reference (the implicit reward's scale)."
        ),
    )
    precompute_reference: bool = Field(
        False,
        description=(
            "Score every row's answers under the reference once before training and cache them "
            "in the run folder (one forward pass a step instead of two; no frozen copy for full "
            "fine-tuning)."
        ),
    )

    def precomputes_reference(self) -> bool:
        return self.precompute_reference


class SamplingOptions(ObjectiveOptions):
    """The online objectives' options (GRPO, PPO): sampling, the KL to the reference, the
    clipped policy ratio and the rewards."""

    num_generations: int = Field(
        4,
        ge=1,
        le=256,
        description="Completions sampled per prompt (GRPO's group; at least 2 for GRPO).",
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(32, ge=1, description="Longest completion sampled.")
    kl_coef: float = Field(
        0.04, ge=0.0, description="Weight of the KL penalty to the reference policy."
    )
    clip_epsilon: float = Field(0.2, gt=0, lt=1, description="Policy-ratio clip range.")
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="exact_match")],
        description="Reward functions and their weights (trainers/rewards.py).",
    )

    def fits(self, config: RunConfig) -> None:
        if config.peft.method in MUTATING_INIT:
            raise ValueError(
                f"peft.method: {config.peft.method} moves the base weights into the adapter, so "
                f"disabling it is not the starting model {self.name.upper()}'s KL "
                "term needs; use lora"
            )
