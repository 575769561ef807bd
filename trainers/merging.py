"""`omnitune merge`: LoRA adapters of runs on one base merged into a new run folder.

The arithmetic is PEFT's (`LoraModel.add_weighted_adapter`): linear (a weighted sum of the
adapters), TIES (trim each to its largest `density` share, elect a sign per weight, average
the agreeing ones; Yadav et al. 2023), DARE (drop a random 1 - `density` of each and rescale;
Yu et al. 2024) with a linear or TIES combination, magnitude pruning, and SVD (the weighted sum
of the full updates B·A, truncated back to a rank). This module checks that the runs can be
merged before any weights load, loads the base once, and writes a folder that every omnitune
command takes as a run:

- `adapter/`: the merged adapter in PEFT's format (plain `PeftModel.from_pretrained` loads it);
- `config.yaml`: the first source's config, pointed at this folder;
- `merge.json`: the method, weights, density, and each source (folder, adapter hash);
- `reference.json`: the union of the sources' drift profiles (modalities.profile), since the
  merged model serves the traffic of all of them.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from omnitune.core.errors import ConfigError

#: --method -> (PEFT combination_type, whether the adapters must share one rank). The SVD
#: method combines the full updates, so ranks may differ; the others combine A and B matrices.
MERGE_METHODS: dict[str, tuple[str, bool]] = {
    "linear": ("linear", True),
    "ties": ("ties", True),
    "dare_linear": ("dare_linear", True),
    "dare_ties": ("dare_ties", True),
    "magnitude_prune": ("magnitude_prune", True),
    "svd": ("svd", False),
}
#: Methods that keep only part of each adapter: `--density` is theirs.
SPARSIFYING = {"ties", "dare_linear", "dare_ties", "magnitude_prune"}


@dataclass(frozen=True)
class Source:
    run: Path
    config: dict[str, Any]
    adapter: dict[str, Any]  # adapter_config.json


def read_source(run: Path) -> Source:
    """A run that can be merged: a finished LoRA run (config.yaml and adapter/)."""
    config_path, adapter_dir = run / "config.yaml", run / "adapter"
    if not config_path.is_file():
        raise ConfigError(f"{run}: not a run folder (no config.yaml)")
    config = yaml.safe_load(config_path.read_text())
    method = (config.get("peft") or {}).get("method", "lora")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ConfigError(
            f"peft.method: {run} has no adapter/ (method {method}); merging takes LoRA adapters"
        )
    adapter = json.loads((adapter_dir / "adapter_config.json").read_text())
    if adapter.get("peft_type") != "LORA" or adapter.get("use_dora"):
        raise ConfigError(
            f"peft.method: {run} is a {method} run; merging takes LoRA adapters (lora, rslora, "
            "loraplus, pissa and olora runs, exported as plain LoRA)"
        )
    if adapter.get("target_parameters"):
        raise ConfigError(
            f"peft.target_parameters: {run} adapts fused expert weights, which PEFT's "
            "merging cannot combine; train the adapters to merge with peft.target_parameters=[]"
        )
    return Source(run, config, adapter)


def check_mergeable(sources: list[Source], method: str) -> None:
    """Refuse, naming the field, what the method cannot merge: other bases, other modalities,
    ranks that differ where the method needs one rank."""
    first = sources[0]
    for other in sources[1:]:
        base, other_base = _base(first), _base(other)
        if base != other_base:
            raise ConfigError(
                f"model.name_or_path: {first.run} was trained on {base} and {other.run} on "
                f"{other_base}; merged adapters must share one base"
            )
        modality = (first.config.get("model") or {}).get("modality")
        if (other.config.get("model") or {}).get("modality") != modality:
            raise ConfigError(f"model.modality: {other.run} is not a {modality} run")
    if MERGE_METHODS[method][1]:
        ranks = {str(s.run): _rank(s) for s in sources}
        if len(set(ranks.values())) > 1:
            listed = ", ".join(f"{run} r={rank}" for run, rank in ranks.items())
            raise ConfigError(
                f"peft.r: --method {method} combines the A and B matrices and needs one rank "
                f"({listed}); use --method svd, which merges any ranks"
            )


def _base(source: Source) -> str:
    return str(
        source.adapter.get("base_model_name_or_path") or source.config["model"]["name_or_path"]
    )


def _rank(source: Source) -> int:
    pattern = source.adapter.get("rank_pattern") or {}
    return max([int(source.adapter.get("r", 8)), *map(int, pattern.values())])


def merge_runs(
    runs: list[Path],
    out: Path,
    method: str = "ties",
    weights: list[float] | None = None,
    density: float | None = None,
    svd_rank: int | None = None,
) -> dict[str, Any]:
    """Merge the runs' adapters into `out`; returns what merge.json records."""
    if method not in MERGE_METHODS:
        raise ConfigError(f"--method: unknown '{method}' (known: {', '.join(MERGE_METHODS)})")
    if not runs:
        raise ConfigError("runs: name at least one run to merge")
    weights = [1.0 / len(runs)] * len(runs) if weights is None else weights
    if len(weights) != len(runs):
        raise ConfigError(f"--weights: {len(weights)} weights for {len(runs)} runs")
    if density is not None and method not in SPARSIFYING:
        raise ConfigError(f"--density: --method {method} keeps every weight (no density)")
    if method in SPARSIFYING and density is None:
        density = 0.5
    sources = [read_source(Path(run)) for run in runs]
    check_mergeable(sources, method)

    import torch  # noqa: F401  (after the checks: a refusal costs no import)
    from peft import PeftModel

    import omnitune.trainers.peft_methods  # noqa: F401  (quiets peft's deprecated read)
    from omnitune.modalities.base import get_modality
    from omnitune.trainers.config import RunConfig

    config = RunConfig.model_validate({**sources[0].config, "output_dir": str(out)})
    modality = get_modality(config.model.modality)
    base, processor = modality.load(config.model)
    names = [f"source{i}" for i in range(len(sources))]
    model = PeftModel.from_pretrained(base, str(sources[0].run / "adapter"), adapter_name=names[0])
    for name, source in zip(names[1:], sources[1:], strict=True):
        model.load_adapter(str(source.run / "adapter"), adapter_name=name)
    combination, _ = MERGE_METHODS[method]
    options: dict[str, Any] = {"density": density} if density is not None else {}
    if svd_rank is not None:
        options["svd_rank"] = svd_rank
    try:
        model.add_weighted_adapter(
            names, weights, "default", combination_type=combination, **options
        )
    except ValueError as exc:  # PEFT's own refusals (e.g. modules_to_save on both sides)
        raise ConfigError(f"--method: PEFT cannot merge these adapters: {exc}") from None
    model.set_adapter("default")
    for name in names:
        model.delete_adapter(name)

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out / "adapter"))
    processor.save_pretrained(str(out / "adapter"))
    (out / "config.yaml").write_text(
        yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    )
    record = {
        "method": method,
        "weights": weights,
        "density": density,
        "svd_rank": svd_rank,
        "sources": [
            {"run": str(s.run), "adapter_sha256": _adapter_hash(s.run / "adapter"), "weight": w}
            for s, w in zip(sources, weights, strict=True)
        ],
        "created_unix": int(time.time()),
    }
    (out / "merge.json").write_text(json.dumps(record, indent=1))
    profiles = [
        json.loads((s.run / "reference.json").read_text())
        for s in sources
        if (s.run / "reference.json").is_file()
    ]
    if profiles:
        from omnitune.modalities.profile import union_profiles

        (out / "reference.json").write_text(json.dumps(union_profiles(profiles)))
    return record


def _adapter_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()
