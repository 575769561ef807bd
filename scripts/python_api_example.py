"""The session of docs/python-api.md: train from a YAML and from rows in memory, evaluate,
export, and a config error, through `import omnitune`. Run from the repository after
`make demo` and `omnitune data sample text --out data/text`."""

import json
from pathlib import Path

import omnitune

# 1. A YAML config, with overrides as keyword arguments.
result = omnitune.train(
    "configs/text-lora.yaml",
    train={"max_steps": 30, "eval_steps": 30},
    output_dir="runs/api-text",
    train__resume="never",
)
print(result.steps, round(result.train_loss, 4), result.output)
print({k: round(v, 4) for k, v in result.eval_metrics.items()})

# 2. A dict, with rows held in memory (a datasets.Dataset works the same way).
rows = [json.loads(line) for line in Path("data/text/train.jsonl").read_text().splitlines()]
config = {
    "model": {"name_or_path": "runs/models/tiny-text", "modality": "text"},
    "data": {"train": rows[:200], "max_length": 64},
    "train": {"max_steps": 20, "batch_size": 8, "lr": 0.003, "resume": "never"},
    "output_dir": "runs/api-memory",
}
small = omnitune.train(config)
print(small.steps, omnitune.load_config(small.run_dir / "config.yaml").data.train)

# 3. Evaluate and export.
scores = omnitune.evaluate(result.run_dir, data="data/text/test.jsonl")
print(scores.data, scores.examples, {k: round(v, 4) for k, v in scores.metrics.items()})
print(omnitune.export(result.run_dir, merge=True))

# 4. The CLI's errors, as exceptions that name the field.
try:
    omnitune.train("configs/text-lora.yaml", train__lr=-1)
except omnitune.ConfigError as error:
    print(f"ConfigError: {error}")
