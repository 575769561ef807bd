"""The trainer's commands: `config`, `train`, `eval`, `export`, `data` and `models`.

`add_commands` adds them to the one `omnitune` parser (`omnitune.core.cli`); each handler
imports what it runs (torch, transformers) only when it runs, so this module loads on the
monitor-only install too.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from omnitune.core.cli import accept_overrides, help_of, with_example

if TYPE_CHECKING:
    from omnitune.trainers.loop import RunResult


def add_commands(commands: Any) -> None:
    """Add the trainer's commands to `commands` (the top-level parser's subparsers)."""
    _add_config_commands(commands)
    _add_run_commands(commands)
    _add_merge_command(commands)
    _add_prune_command(commands)
    _add_data_commands(commands)
    _add_model_commands(commands)


def _accept_checkpoint(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--checkpoint",
        default="best",
        metavar="WHICH",
        help="which of a run's checkpoints: best (default: the best evaluation by the run's "
        "selection metric), last, or step-N",
    )


def _add_config_commands(commands: Any) -> None:
    config = commands.add_parser("config", help="check or show a run config")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION")
    check = config_commands.add_parser(
        "check", help="validate a config file (exit 2 and the bad field's path if invalid)"
    )
    check.add_argument("file", help="YAML config file")
    accept_overrides(check, "omnitune config check configs/text-lora.yaml peft.r=16")
    check.set_defaults(handler=_config_check)
    show = config_commands.add_parser(
        "show", help="print the resolved config, defaults and overrides applied"
    )
    show.add_argument("file", help="YAML config file")
    accept_overrides(
        show, "omnitune config show configs/demo-speech-shift.yaml --json train.lr=1e-4"
    )
    show.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    show.set_defaults(handler=_config_show)
    config.set_defaults(handler=help_of(config))


def _add_run_commands(commands: Any) -> None:
    train = commands.add_parser("train", help="fine-tune a model as a run config describes")
    train.add_argument("config", help="YAML run config")
    accept_overrides(train, "omnitune train configs/text-lora.yaml train.max_steps=60")
    train.set_defaults(handler=_train, log_progress=True)

    evaluate = commands.add_parser(
        "eval", help="the modality's metrics (perplexity, WER/CER, VQA accuracy) on a dataset"
    )
    evaluate.add_argument(
        "targets",
        nargs="+",
        metavar="TARGET",
        help="run folder, model folder or hub id; several: a table, one row each",
    )
    evaluate.add_argument(
        "--data",
        action="append",
        help="JSONL/CSV data (default: the run's data.eval); repeat it for a column per file",
    )
    evaluate.add_argument(
        "--metric",
        default="loss",
        help="the metric a table of several targets or data files shows (default: loss; also "
        "parameters, weights_mb, tokens_per_second or utterances_per_second)",
    )
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument(
        "--predictions",
        metavar="FILE",
        help="write each generated example as JSONL: input, reference, prediction and score "
        "(1 or 0 for exact match and VQA, the example's WER for speech)",
    )
    _accept_checkpoint(evaluate)
    accept_overrides(
        evaluate, "omnitune eval runs/text-lora --data data/text/test.jsonl eval.batch_size=32"
    )
    evaluate.set_defaults(handler=_eval)
    _add_export_command(commands)


def _add_export_command(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="write a run's adapter (PEFT format), a merged full model, or a deployment "
        "format (GGUF, CTranslate2, ONNX) checked in its runtime",
    )
    export.add_argument("run", help="run folder (the config's output_dir)")
    export.add_argument(
        "--merge", action="store_true", help="merge the adapter into the base weights"
    )
    export.add_argument(
        "--out",
        help="destination folder (default: RUN/merged, RUN/exported-adapter or "
        "RUN/exported-model; never the run's own adapter/ or model/)",
    )
    export.add_argument(
        "--format",
        metavar="FORMAT",
        help="gguf (llama.cpp, Ollama), ctranslate2 (faster-whisper, CTranslate2) or onnx "
        "(ONNX Runtime): the adapter is merged, the model converted, and the parity report "
        "(parity.json) compares it in its runtime with the PyTorch model; default out: "
        "RUN/exports/FORMAT-QUANTIZE",
    )
    export.add_argument(
        "--quantize",
        metavar="TYPE",
        help="with --format: gguf f16 (default), q8_0, q4_k_m, q5_k_m, q6_k; ctranslate2 "
        "float32 (default), int8, int8_float32; onnx float32 (default), int8",
    )
    export.add_argument(
        "--data", help="with --format: the parity report's data (default: the run's data.eval)"
    )
    export.add_argument(
        "--samples",
        type=int,
        default=32,
        help="with --format: eval examples the parity report runs (default: 32)",
    )
    _accept_checkpoint(export)
    with_example(
        export,
        "omnitune export runs/text-lora --merge --out models/text-merged\n"
        "  omnitune export runs/text-lora --format gguf --quantize q8_0",
    )
    export.set_defaults(handler=_export)


def _add_merge_command(commands: Any) -> None:
    merge = commands.add_parser(
        "merge", help="merge the LoRA adapters of runs on one base into a new run folder"
    )
    merge.add_argument("runs", nargs="+", metavar="RUN", help="run folders with a LoRA adapter")
    merge.add_argument("--out", required=True, help="the merged run's folder (created)")
    merge.add_argument(
        "--method",
        default="ties",
        choices=("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune", "svd"),
        help="how to combine them (PEFT's add_weighted_adapter; default: ties)",
    )
    merge.add_argument(
        "--weights",
        type=_floats,
        help="one weight per run, comma-separated (default: equal weights summing to 1)",
    )
    merge.add_argument(
        "--density",
        type=float,
        help="ties, dare_* and magnitude_prune: the share of each adapter's weights kept "
        "(default 0.5)",
    )
    merge.add_argument("--svd-rank", type=int, help="svd: the merged rank (default: the largest)")
    with_example(
        merge,
        "omnitune merge runs/words runs/reverse --method ties --density 0.7 --out runs/both",
    )
    merge.set_defaults(handler=_merge)


def _add_prune_command(commands: Any) -> None:
    prune = commands.add_parser(
        "prune", help="remove decoder layers (text, Whisper's decoder) into a new model folder"
    )
    prune.add_argument("target", help="run folder (its adapter merged first) or model folder")
    prune.add_argument("--layers", type=int, required=True, help="how many layers to remove")
    prune.add_argument(
        "--by",
        default="importance",
        choices=("importance", "last"),
        help="importance: the layers that change their input least on the data (1 - cosine "
        "of input and output hidden states); last: the last ones",
    )
    prune.add_argument("--data", help="the data that scores the layers (default: data.eval)")
    prune.add_argument("--out", required=True, help="the pruned model's folder (created)")
    with_example(prune, "omnitune prune runs/digits-full --layers 1 --out models/digits-pruned")
    prune.set_defaults(handler=_prune)


def _add_data_commands(commands: Any) -> None:
    data = commands.add_parser(
        "data", help="read a run's datasets ahead of training (Arrow cache) and describe them"
    )
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION")
    for name, text in (
        ("prepare", "tokenise/cache data.train and data.eval as `train` will read them"),
        ("info", "rows, skips by reason, length histogram and cache location"),
    ):
        action = data_commands.add_parser(name, help=text)
        action.add_argument("config", help="YAML run config")
        accept_overrides(action, f"omnitune data {name} configs/text-lora.yaml data.num_proc=2")
        action.set_defaults(handler=_data, data_action=name)
    sample = data_commands.add_parser(
        "sample",
        help="write a small example dataset (digit chats or digit-image questions) to try a "
        "config on",
    )
    sample.add_argument("kind", choices=("text", "vision_language"))
    sample.add_argument(
        "--format",
        choices=SAMPLE_FORMATS,
        default="sft",
        help="sft: questions and answers; pairs: a right and a wrong answer (dpo, orpo); "
        "feedback: one answer labelled right or wrong (kto); reversal, spelling (text): "
        "numerals reversed or spelled out, two tasks to merge adapters across",
    )
    sample.add_argument("--out", required=True, help="folder to write (created if missing)")
    sample.add_argument("--rows", type=int, default=512, help="training rows (held out: 1/8)")
    sample.add_argument("--seed", type=int, default=0)
    with_example(sample, "omnitune data sample text --out data/text")
    sample.set_defaults(handler=_data_sample)
    data.set_defaults(handler=help_of(data))


def _add_model_commands(commands: Any) -> None:
    # The families come from the builders' registry (standard library only at import).
    from omnitune.modalities.tiny import TINY_BUILDERS

    models = commands.add_parser("models", help="build tiny offline models")
    model_commands = models.add_subparsers(dest="models_command", metavar="ACTION")
    tiny = model_commands.add_parser(
        "build-tiny",
        help="build a tiny model, tokenizer and processor offline and save_pretrained them",
    )
    tiny.add_argument("family", choices=tuple(TINY_BUILDERS))
    tiny.add_argument("--out", required=True, help="folder to write (created if missing)")
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    tiny.add_argument(
        "--hidden-size", type=int, default=64, help="model width, a multiple of 16 up to 128"
    )
    tiny.add_argument(
        "--vocab-size",
        type=int,
        help=(
            "a causal LM's vocabulary rows, more than its tokenizer uses (e.g. 151936, "
            "Qwen2.5's): a tiny model with a real vocabulary's logits, for memory tests"
        ),
    )
    with_example(tiny, "omnitune models build-tiny whisper --out models/tiny-whisper")
    tiny.set_defaults(handler=_models_build_tiny)
    check_model = model_commands.add_parser(
        "check",
        help="load a model folder or hub id as training would and run one generate()",
    )
    check_model.add_argument("model", help="local folder or hub id (hub ids need the local cache)")
    check_model.add_argument("--max-new-tokens", type=int, default=8)
    check_model.add_argument(
        "--prompt",
        default="Which digit is this?",
        help="the user message (text) or the question about a synthetic image (VLM)",
    )
    with_example(check_model, "omnitune models check models/tiny-whisper --max-new-tokens 4")
    check_model.set_defaults(handler=_models_check)
    models.set_defaults(handler=help_of(models))


def _config_check(args: argparse.Namespace) -> int:
    from omnitune.trainers.config import load_run_config

    config = load_run_config(args.file, args.overrides)
    print(
        f"{args.file}: ok ({config.model.modality}, {config.peft.method}, {config.objective.name})"
    )
    return 0


def _config_show(args: argparse.Namespace) -> int:
    from omnitune.trainers.config import load_run_config

    config = load_run_config(args.file, args.overrides)
    if args.json:
        print(config.model_dump_json(indent=2))
    else:
        import yaml

        print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _train(args: argparse.Namespace) -> int:
    from omnitune.trainers.config import load_run_config

    config = load_run_config(args.config, args.overrides)
    from omnitune.trainers.loop import train

    result = train(config)
    if result.main_process:
        print(describe_result(result))
    return 0


def describe_result(result: RunResult) -> str:
    """`RUN: N steps, train loss L; saved ...`: what `train` prints when a run ends."""
    # A run resumed from its last checkpoint trains no step here, so it has no train loss.
    loss = (
        "none (no step left to train)" if result.train_loss is None else f"{result.train_loss:.4f}"
    )
    return f"{result.run_dir}: {result.steps} steps, train loss {loss}; {_saved(result)}"


def _saved(result: RunResult) -> str:
    """`saved RUN/adapter: best checkpoint, step 40 of 60 (wer 0.2790); eval loss ..., wer ...`:
    the folder, which checkpoint it holds, and that checkpoint's evaluation."""
    from omnitune.trainers.run_weights import ChosenCheckpoint

    text = f"saved {result.output}"
    if result.checkpoint:
        chosen = dict(result.checkpoint)
        metrics = chosen.pop("metrics")
        text += f": {ChosenCheckpoint(path=result.output, metrics=metrics, **chosen).describe()}"
        overall = {k: v for k, v in metrics.items() if "/" not in k}
        if overall:
            text += "; eval " + ", ".join(f"{k} {v:.4f}" for k, v in overall.items())
    return text


def _eval(args: argparse.Namespace) -> int:
    from omnitune.trainers.evaluation import evaluate_target

    data = args.data or [None]
    if len(args.targets) > 1 or len(data) > 1:
        return _eval_table(args, data)
    args.target = args.targets[0]
    result = evaluate_target(args.target, data[0], args.overrides, args.checkpoint)
    if args.json:
        import json

        chosen = result.checkpoint.as_dict() if result.checkpoint else None
        if chosen:
            chosen.pop("metrics")
        print(
            json.dumps(
                {
                    "data": result.data,
                    "examples": result.examples,
                    "checkpoint": chosen,
                    **result.metrics,
                    "footprint": result.footprint,
                    **({"pruning": result.chain} if result.chain else {}),
                }
            )
        )
    else:
        from omnitune.trainers.footprint import chain_table, describe
        from omnitune.trainers.runlog import format_metrics

        if result.checkpoint is not None:
            print(f"{args.target}: {result.checkpoint.describe()}")
        print(f"{result.data}: {format_metrics(result.metrics)}")
        print(f"model: {describe(result.footprint)}")
        if result.chain:
            print(chain_table(result.chain))
    if args.predictions:
        _write_predictions(args.predictions, result.predictions)
    return 0


#: The footprint's speeds: a table times the forward pass only when it shows one.
SPEEDS = ("tokens_per_second", "utterances_per_second")


def _eval_table(args: argparse.Namespace, data: list[str | None]) -> int:
    """Every target scored on every data file: `--metric` in a table (a row per target, a
    column per file), or a JSON line per pair with --json."""
    import json

    from omnitune.core.errors import UsageError
    from omnitune.trainers.evaluation import evaluate_target

    if args.predictions:
        raise UsageError("--predictions: takes one target and one data file")
    rows = []
    for target in args.targets:
        cells = []
        for source in data:
            result = evaluate_target(
                target, source, args.overrides, args.checkpoint, speed=args.metric in SPEEDS
            )
            if args.json:
                print(json.dumps({"target": target, "data": result.data, **result.metrics}))
            values = {**result.metrics, **result.footprint}
            if args.metric not in values:
                raise UsageError(
                    f"--metric: {args.metric} was not computed on {result.data} (computed: "
                    f"{', '.join(values)})"
                )
            cells.append(f"{values[args.metric]:.4f}")
        rows.append([target, *cells])
    if not args.json:
        header = [f"{args.metric} of", *(source or "(the run's data.eval)" for source in data)]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            print("  ".join(cells).rstrip())
    return 0


def _write_predictions(path: str, rows: list[dict[str, Any]]) -> None:
    import json
    from pathlib import Path

    from omnitune.core.errors import UsageError

    if not rows:
        raise UsageError(
            "--predictions: this evaluation generated nothing to write (loss only); for text, "
            "add exact_match to eval.metrics (eval.metrics=[perplexity,exact_match])"
        )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    mean = sum(row["score"] for row in rows) / len(rows)
    print(f"{target}: {len(rows)} predictions (mean score {mean:.4f})", file=sys.stderr)


def _data(args: argparse.Namespace) -> int:
    import time

    from omnitune.trainers.config import load_run_config
    from omnitune.trainers.data_commands import UNITS, describe, read_run_data

    config = load_run_config(args.config, args.overrides)
    started = time.perf_counter()
    read = read_run_data(config)
    unit = UNITS.get(config.model.modality, "units")
    for role, examples in read:
        print(describe(role, examples, unit))
    if args.data_action == "prepare":
        print(f"ready in {time.perf_counter() - started:.1f} s")
    return 0


#: What `omnitune data sample --format` writes: the rows each kind of objective reads.
SAMPLE_FORMATS = ("sft", "pairs", "feedback", "reversal", "spelling")


def _data_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    out, held_out = Path(args.out), max(1, args.rows // 8)
    if args.kind == "text":
        from omnitune.modalities.text import sample_data

        write = {
            "sft": sample_data.write_digit_chat,
            "pairs": sample_data.write_digit_pairs,
            "feedback": sample_data.write_digit_feedback,
            "reversal": sample_data.write_digit_reversal,
            "spelling": sample_data.write_digit_spelling,
        }[args.format]
        paths = write(out, train=args.rows, test=held_out, seed=args.seed)
        written = [paths["train"], paths["eval"]]
    else:
        from omnitune.core.errors import UsageError
        from omnitune.modalities.vision_language import sample_data

        if args.format in ("reversal", "spelling"):
            raise UsageError(f"--format: {args.format} is a text task (omnitune data sample text)")
        if args.rows + held_out > 1797:  # scikit-learn's digits: 1,797 images
            raise UsageError("--rows: at most 1,597 for vision_language (1,797 digit images)")
        write = {
            "sft": sample_data.write_digit_vqa,
            "pairs": sample_data.write_digit_vqa_pairs,
            "feedback": sample_data.write_digit_vqa_feedback,
        }[args.format]
        written = [write(out / "train", 0, args.rows), write(out / "test", args.rows, held_out)]
    for path in written:
        rows = sum(1 for line in path.open() if line.strip())
        print(f"{path}: {rows} rows")
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.format:
        return _deploy(args)
    if args.quantize:
        from omnitune.core.errors import ConfigError

        raise ConfigError("--quantize: only with --format (gguf, ctranslate2 or onnx)")
    from omnitune.trainers.export import export_run

    exported = export_run(args.run, merge=args.merge, out=args.out, which=args.checkpoint)
    # The folder alone on stdout, as `models build-tiny` prints it: `$(omnitune export RUN)`.
    print(f"omnitune export: from the {exported.checkpoint.describe()}", file=sys.stderr)
    print(exported.folder)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    """`export --format`: the table and the verdict on stdout; exit 1 when the unquantised
    export's parity fails (the files stay, for a look at what differs)."""
    from omnitune.trainers.deploy.export import deploy_run

    deployed = deploy_run(
        args.run, args.format, args.quantize, args.out, args.checkpoint, args.data, args.samples
    )
    report = deployed.report
    print(f"omnitune export: from the {deployed.checkpoint}", file=sys.stderr)
    print(
        f"{report.format} {report.quantize}: {deployed.model} "
        f"({report.exported['size_mb']:.2f} MB; PyTorch weights {report.pytorch['size_mb']:.2f} MB)"
    )
    print(f"parity on {report.examples} eval examples, {report.runtime} vs PyTorch:")
    print(report.table())
    print(f"report: {deployed.folder / 'parity.json'}")
    print(f"serve: {deployed.launch}")
    return 0 if report.passed else 1


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from None


def _merge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from omnitune.trainers.merging import merge_runs

    record = merge_runs(
        [Path(run) for run in args.runs],
        Path(args.out),
        method=args.method,
        weights=args.weights,
        density=args.density,
        svd_rank=args.svd_rank,
    )
    weights = ", ".join(f"{s['run']} x {s['weight']:g}" for s in record["sources"])
    density = f", density {record['density']:g}" if record["density"] is not None else ""
    print(f"merged {len(record['sources'])} adapters ({args.method}{density}): {weights}")
    print(
        f"{args.out}: adapter/, config.yaml, merge.json"
        + (", reference.json" if (Path(args.out) / "reference.json").is_file() else "")
    )
    return 0


def _prune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from omnitune.trainers.footprint import chain_table, pruning_chain
    from omnitune.trainers.pruning import prune
    from omnitune.trainers.runlog import format_metrics

    record = prune(args.target, Path(args.out), args.layers, by=args.by, data=args.data)
    layers, parameters = record["layers"], record["parameters"]
    print(
        f"{args.out}: {layers['after']} of {layers['before']} decoder layers (removed "
        f"{', '.join(map(str, layers['removed']))} by {args.by}); parameters "
        f"{parameters['before']:,} -> {parameters['after']:,}"
    )
    print(f"importance: {', '.join(f'{s:.4f}' for s in record['importance'])}")
    print(f"before: {record['data']}: {format_metrics(record['metrics']['before'])}")
    print(f"after:  {record['data']}: {format_metrics(record['metrics']['after'])}")
    print(chain_table(pruning_chain(record)))
    return 0


def _models_build_tiny(args: argparse.Namespace) -> int:
    from omnitune.modalities.tiny import build_tiny

    out = build_tiny(
        args.family,
        args.out,
        seed=args.seed,
        hidden_size=args.hidden_size,
        vocab_size=args.vocab_size,
    )
    print(out)
    return 0


def _models_check(args: argparse.Namespace) -> int:
    from omnitune.modalities.loading import infer_modality, load_model_config, load_pretrained
    from omnitune.modalities.smoke import smoke_generate

    modality = infer_modality(load_model_config(args.model))
    model, processor = load_pretrained(args.model, modality)
    result = smoke_generate(
        model, processor, modality, max_new_tokens=args.max_new_tokens, prompt=args.prompt
    )
    print(
        f"{args.model}: {modality}, {result.model_class} ({result.parameters:,} parameters), "
        f"{result.processor_class}; generated {result.generated_tokens} tokens "
        f"from a {result.input_tokens}-token prompt: {result.text!r}"
    )
    return 0
