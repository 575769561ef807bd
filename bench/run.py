"""`make bench`: run every benchmark and write bench/results.md and bench/results.json."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.harness import REPO, Comparison, compare, python, run_side, scale, write_results

CACHE = REPO / "bench" / ".cache"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def train_once(config: str, *overrides: str) -> None:
    """Train the base model a fine-tuning benchmark starts from (cached in bench/.cache)."""
    command = [python(), "-m", "omnitune", "train", str(REPO / "configs" / config)]
    subprocess.run([*command, *overrides], cwd=REPO, check=True, capture_output=True)


def trainer_overhead(pairs: int = 9) -> Comparison:
    # 9 pairs: single runs here swing by 15-20%; the median of 7 pair ratios moved by ~0.05.
    from omnitune.modalities.text.sample_data import write_digit_chat
    from omnitune.modalities.tiny import build_tiny

    model = build_tiny("text", CACHE / "tiny-text", seed=0)
    data = write_digit_chat(CACHE / "text", train=512, test=16)["train"]
    common = ["--model", str(model), "--data", str(data), "--steps", "400"]
    module = [python(), "-m", "bench.trainer_overhead"]
    return compare(
        Comparison(
            task="trainer core vs plain PyTorch loop (tiny Llama, LoRA, 1 thread)",
            figure="samples_per_second",
            unit="samples/s",
            higher_is_better=True,
            reference_name="plain PyTorch loop",
            target=">= 0.95 (core costs <= 5%)",
        ),
        [*module, "--side", "omnitune", *common, "--out", str(CACHE / "run")],
        [*module, "--side", "plain", *common],
        pairs=pairs,
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )


def speech_command(side: str) -> list[str]:
    """One side of the speech LoRA benchmark: LoRA on the `shift` voices from a tiny Whisper
    trained on `base` (built once, cached)."""
    from omnitune.modalities.tiny import build_tiny

    base = CACHE / "speech-base"
    if not (base / "model" / "config.json").is_file():
        tiny = build_tiny("whisper", CACHE / "tiny-whisper", seed=0)
        train_once("demo-speech-base.yaml", f"model.name_or_path={tiny}", f"output_dir={base}")
    module = [python(), "-m", "bench.speech_finetune", "--side", side]
    return [*module, "--model", str(base / "model"), "--steps", "300"]


def speech_finetune(pairs: int = 3) -> Comparison:
    return compare(
        Comparison(
            task="speech LoRA fine-tune vs HF recipe (tiny Whisper, shift voices, 1 thread)",
            figure="utterances_per_second",
            unit="utterances/s",
            higher_is_better=True,
            reference_name="Seq2SeqTrainer + PEFT LoRA + padding collator",
            target=">= 1.5 at equal or better WER, no more memory",
            also=("wer", "end_to_end_seconds"),
        ),
        speech_command("omnitune"),
        speech_command("reference"),
        pairs=pairs,
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )


def vlm_data() -> Path:
    """The digit VQA data of the VLM rows (written once, cached)."""
    from omnitune.modalities.vision_language.sample_data import write_digit_vqa

    data = CACHE / "vlm-data"
    if not (data / "test" / "data.jsonl").is_file():
        write_digit_vqa(data / "base-train", 0, 1400)
        write_digit_vqa(data / "train", 0, 600, domain="shift")
        write_digit_vqa(data / "test", 1400, 100, domain="shift")
    return data


def vlm_command(side: str) -> list[str]:
    """One side of the VLM LoRA benchmark: LoRA on the `shift` digits from a tiny LLaVA trained
    on `base` (built once, cached)."""
    from omnitune.modalities.tiny import build_tiny

    data, base = vlm_data(), CACHE / "llava-base"
    if not (base / "model" / "config.json").is_file():
        tiny = build_tiny("llava", CACHE / "tiny-llava", seed=0)
        train_once(
            "demo-llava.yaml",
            f"model.name_or_path={tiny}",
            f"data.train={data / 'base-train' / 'data.jsonl'}",
            "data.eval=null",
            f"output_dir={base}",
        )
    module = [python(), "-m", "bench.vlm_finetune", "--side", side]
    return [*module, "--model", str(base / "model"), "--data", str(data), "--steps", "100"]


def vlm_finetune(pairs: int = 3) -> Comparison:
    return compare(
        Comparison(
            task="VLM LoRA fine-tune vs TRL SFTTrainer (tiny LLaVA, shift digits, 1 thread)",
            figure="samples_per_second",
            unit="samples/s",
            higher_is_better=True,
            reference_name="TRL SFTTrainer VLM path + PEFT LoRA",
            target=">= 1.3 at equal accuracy",
            also=("vqa_accuracy",),
        ),
        vlm_command("omnitune"),
        vlm_command("reference"),
        pairs=pairs,
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )


def packed_sft(pairs: int = 3) -> Comparison:
    """Packed SFT vs the padded Hugging Face Trainer recipe on length-skewed chats."""
    from bench.packed_sft import write_skewed_chats
    from omnitune.modalities.tiny import build_tiny

    model = build_tiny("text", CACHE / "tiny-text-128", seed=0, hidden_size=128)
    data = CACHE / "skewed-chats"
    if not (data / "test.jsonl").is_file():
        write_skewed_chats(data)
    common = ["--model", str(model), "--data", str(data)]
    module = [python(), "-m", "bench.packed_sft"]
    return compare(
        Comparison(
            task="packed SFT vs padded HF Trainer + PEFT (tiny Llama h128, skewed lengths)",
            figure="tokens_per_second",
            unit="tokens/s",
            higher_is_better=True,
            reference_name="transformers Trainer + PEFT LoRA + DataCollatorForSeq2Seq padding",
            target=">= 2 at equal or better held-out loss",
            also=("held_out_loss", "steps"),
        ),
        [*module, "--side", "omnitune", *common, "--out", str(CACHE / "packed-run")],
        [*module, "--side", "hf", *common, "--out", str(CACHE / "padded-run")],
        pairs=pairs,
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )


def moe_sft(pairs: int = 3) -> Comparison:
    """LoRA SFT of a Mixture-of-Experts model (tiny Mixtral h128, attention and fused experts)
    vs TRL SFTTrainer + PEFT on the same model and length-skewed chats."""
    from bench.packed_sft import write_skewed_chats
    from omnitune.modalities.tiny import build_tiny

    model = build_tiny("mixtral", CACHE / "tiny-mixtral-128", seed=0, hidden_size=128)
    data = CACHE / "skewed-chats"
    if not (data / "test.jsonl").is_file():
        write_skewed_chats(data)
    common = ["--model", str(model), "--data", str(data)]
    module = [python(), "-m", "bench.moe_sft"]
    return compare(
        Comparison(
            task="MoE LoRA SFT vs TRL SFTTrainer + PEFT (tiny Mixtral h128, experts + attention)",
            figure="tokens_per_second",
            unit="tokens/s",
            higher_is_better=True,
            reference_name="TRL SFTTrainer + PEFT LoRA (target_parameters on the experts)",
            target=">= 1.3 at equal held-out loss",
            also=("held_out_loss", "steps"),
        ),
        [*module, "--side", "omnitune", *common, "--out", str(CACHE / "moe-run")],
        [*module, "--side", "trl", *common, "--out", str(CACHE / "moe-trl-run")],
        pairs=pairs,
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )


def distill(pairs: int = 3) -> Comparison:
    """Off-policy distillation (JSD, full student) vs TRL's GKDTrainer at lmbda 0: the same
    teacher (tiny chat h128 fine-tuned on the chats), student (h64) and two epochs."""
    from bench.distill import train_teacher
    from bench.packed_sft import write_skewed_chats
    from omnitune.modalities.tiny import build_tiny

    data = CACHE / "skewed-chats"
    if not (data / "test.jsonl").is_file():
        write_skewed_chats(data)
    base = build_tiny("text", CACHE / "tiny-text-128", seed=0, hidden_size=128)
    teacher = train_teacher(str(base), data, CACHE / "distill-teacher")
    student = build_tiny("text", CACHE / "tiny-text-64-student", seed=1, hidden_size=64)
    common = ["--teacher", str(teacher), "--student", str(student), "--data", str(data)]
    module = [python(), "-m", "bench.distill"]
    return compare(
        Comparison(
            task="Off-policy distillation (JSD) vs TRL GKDTrainer, lmbda 0 (tiny chat h128 -> h64)",
            figure="samples_per_second",
            unit="samples/s",
            higher_is_better=True,
            reference_name="TRL GKDTrainer (trl.experimental.gkd), lmbda 0, beta 0.5",
            target=">= 1.3 at equal or better held-out KL to the teacher",
            also=("held_out_teacher_kl", "steps"),
        ),
        [*module, "--side", "omnitune", *common, "--out", str(CACHE / "distill-run")],
        [*module, "--side", "trl", *common, "--out", str(CACHE / "distill-trl-run")],
        pairs=pairs,
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )


def preference(objective: str, pairs: int = 3) -> Comparison:
    """DPO, ORPO or KTO (LoRA) vs TRL's trainer for it, on digit-chat preference pairs (KTO:
    the same task as unpaired answers labelled right or wrong, half of each)."""
    from omnitune.modalities.text.sample_data import write_digit_feedback, write_digit_pairs
    from omnitune.modalities.tiny import build_tiny

    model = build_tiny("text", CACHE / "tiny-text", seed=0)
    unpaired = objective == "kto"
    data = CACHE / ("digit-feedback" if unpaired else "digit-pairs")
    if not (data / "test.jsonl").is_file():
        write = write_digit_feedback if unpaired else write_digit_pairs
        write(data, train=512, test=64, seed=0)
    common = ["--objective", objective, "--model", str(model), "--data", str(data)]
    common += ["--steps", "100"]
    module = [python(), "-m", "bench.preference_finetune"]
    peer = {
        "dpo": "trl.DPOTrainer",
        "orpo": "trl.experimental.orpo.ORPOTrainer",
        "kto": "trl.KTOTrainer",
    }[objective]
    quality = ("label_accuracy", "reward_margin") if unpaired else ("reward_accuracy",)
    return compare(
        Comparison(
            task=(
                f"{objective.upper()} LoRA vs TRL (tiny Llama, digit-chat "
                f"{'answers labelled right/wrong' if unpaired else 'pairs'}, 1 thread)"
            ),
            figure="rows_per_second",
            unit="answers/s" if unpaired else "pairs/s",
            higher_is_better=True,
            reference_name=f"{peer} (TRL 1.16) + PEFT LoRA",
            target=(
                f">= 1.3 at equal or better held-out {quality[0].replace('_', ' ')}, no more memory"
            ),
            also=(*quality, "reward_margin") if not unpaired else quality,
        ),
        [*module, "--side", "omnitune", *common, "--out", str(CACHE / f"{objective}-run")],
        [*module, "--side", "trl", *common, "--out", str(CACHE / f"{objective}-trl")],
        pairs=pairs,
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )


def sft_chat_model() -> tuple[Path, Path]:
    """The digit-chat model after 60 steps of full SFT (right about a third of the time: room
    for online alignment to improve) and its data, built once and cached."""
    from omnitune.modalities.text.sample_data import write_digit_chat
    from omnitune.modalities.tiny import build_tiny

    data = CACHE / "digit-chat-online"
    if not (data / "test.jsonl").is_file():
        write_digit_chat(data, train=256, test=64, seed=0)
    out = CACHE / "sft60"
    if not (out / "model" / "config.json").is_file():
        tiny = build_tiny("text", CACHE / "tiny-text", seed=0)
        train_once(
            "demo-text.yaml",
            f"model.name_or_path={tiny}",
            f"data.train={data / 'train.jsonl'}",
            "data.eval=null",
            "train.max_steps=60",
            "train.warmup_steps=5",
            "train.num_threads=1",
            "train.resume=never",
            f"output_dir={out}",
        )
    return out / "model", data


def grpo(pairs: int = 5) -> Comparison:
    """GRPO (LoRA) vs TRL's GRPOTrainer from the same SFT model, 40 steps of 64 completions."""
    model, data = sft_chat_model()
    common = ["--model", str(model), "--data", str(data), "--steps", "40"]
    module = [python(), "-m", "bench.grpo_finetune"]
    return compare(
        Comparison(
            task="GRPO LoRA vs TRL (tiny Llama after SFT, digit chat, exact-match reward)",
            figure="completions_per_second",
            unit="completions/s",
            higher_is_better=True,
            reference_name="trl.GRPOTrainer (TRL 1.16) + PEFT LoRA",
            target=">= 1.5 at equal or better held-out exact match, no more memory",
            also=("exact_match", "reward_last_10"),
        ),
        [*module, "--side", "omnitune", *common, "--out", str(CACHE / "grpo-run")],
        [*module, "--side", "trl", *common, "--out", str(CACHE / "grpo-trl")],
        pairs=pairs,
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )


def real_text(pairs: int = 2, warmup: bool = False) -> list[Comparison]:
    """LoRA SFT of a Qwen2.5-0.5B-shaped model (2 of its 24 layers, its full 151,936-token
    vocabulary and hidden size) on rows of 512 and 2,048 tokens vs TRL SFTTrainer + PEFT.
    A pair at 2,048 tokens takes about 100 s on 2 cores, so 2 pairs and no warm-up pair (the
    figures leave each side's first step out)."""
    from bench.real_shapes import build_text_model, write_text_rows
    from omnitune.modalities.tiny import build_tiny

    tokenizer = build_tiny("text", CACHE / "tiny-text", seed=0)
    model = build_text_model(tokenizer, CACHE / "qwen2.5-0.5b-shape-2l", layers=2)
    module = [python(), "-m", "bench.real_shapes", "--model", str(model)]
    rows = []
    for length in (512, 2048):
        data = write_text_rows(CACHE / "real-shape-data", tokenizer, length)
        common = ["--data", str(data), "--length", str(length)]
        target = ">= 1.2 tokens/s at <= 0.6x the peak memory" if length == 2048 else "(no target)"
        rows.append(
            compare(
                Comparison(
                    task=(
                        f"LoRA SFT at Qwen2.5-0.5B's shape (2 of 24 layers, 151,936-token "
                        f"vocabulary), rows of {length} tokens, float32, all cores"
                    ),
                    figure="tokens_per_second",
                    unit="tokens/s",
                    higher_is_better=True,
                    reference_name="trl.SFTTrainer (TRL 1.16) + PEFT LoRA",
                    target=target,
                ),
                [*module, "--side", "omnitune", *common, "--out", str(CACHE / "real-text")],
                [*module, "--side", "trl", *common, "--out", str(CACHE / "real-text-trl")],
                pairs=pairs,
                env={"HF_HUB_OFFLINE": "1"},
                warmup=warmup,
            )
        )
    return rows


def real_speech(pairs: int = 2) -> Comparison:
    """LoRA fine-tune of a Whisper-small-shaped model (2 of its 12+12 layers; d_model 768,
    51,865-token vocabulary, 30-second windows of 3,000 frames) vs the HF recipe: batch 8, 6
    steps, both cores, speed and memory only (random weights: no WER)."""
    from bench.real_shapes import build_whisper_model
    from omnitune.modalities.tiny import build_tiny

    tiny = build_tiny("whisper-30s", CACHE / "tiny-whisper-30s", seed=0)
    model = build_whisper_model(tiny, CACHE / "whisper-small-shape-2l", layers=2)
    module = [python(), "-m", "bench.speech_finetune", "--model", str(model)]
    common = ["--steps", "6", "--batch", "8", "--threads", "2", "--no-wer"]
    return compare(
        Comparison(
            task=(
                "speech LoRA at Whisper-small's shape (2 of 12+12 layers, 30-s windows), "
                "batch 8, float32, all cores"
            ),
            figure="utterances_per_second",
            unit="utterances/s",
            higher_is_better=True,
            reference_name="Seq2SeqTrainer + PEFT LoRA + padding collator (the HF recipe)",
            target=">= 1.3 at <= its memory",
        ),
        [*module, "--side", "omnitune", *common, "--out", str(CACHE / "real-speech")],
        [*module, "--side", "reference", *common, "--out", str(CACHE / "real-speech-hf")],
        pairs=pairs,
        env={"HF_HUB_OFFLINE": "1"},
        warmup=False,
    )


def real_vlm(pairs: int = 2) -> Comparison:
    """LoRA fine-tune of a SmolVLM-256M-shaped Idefics3 (2 of its 12 vision and 30 text layers;
    SigLIP-B/16-512 and SmolLM2-135M widths, 49,280-token vocabulary) on 512-pixel tiles (5 per
    image, 320 image tokens) vs TRL's VLM path: batch 4, 4 steps, both cores, speed and memory
    only (random weights: no accuracy)."""
    from bench.real_shapes import build_vlm_model
    from omnitune.modalities.tiny import build_tiny

    tiny = build_tiny("idefics3", CACHE / "tiny-idefics3", seed=0)
    model = build_vlm_model(tiny, CACHE / "smolvlm-256m-shape-2l", layers=2)
    module = [python(), "-m", "bench.vlm_finetune", "--model", str(model)]
    common = ["--data", str(vlm_data()), "--steps", "4", "--batch", "4", "--threads", "2"]
    common.append("--no-accuracy")
    return compare(
        Comparison(
            task=(
                "VLM LoRA at SmolVLM-256M's shape (2 of 12+30 layers, 512-pixel tiles), "
                "batch 4, float32, all cores"
            ),
            figure="samples_per_second",
            unit="samples/s",
            higher_is_better=True,
            reference_name="TRL SFTTrainer VLM path + PEFT LoRA",
            target="(no target)",
        ),
        [*module, "--side", "omnitune", *common, "--out", str(CACHE / "real-vlm")],
        [*module, "--side", "reference", *common, "--out", str(CACHE / "real-vlm-trl")],
        pairs=pairs,
        env={"HF_HUB_OFFLINE": "1"},
        warmup=False,
    )


def proxy_overhead(pairs: int = 3) -> list[Comparison]:
    """The recording proxy (recording on, daemon running) vs calling the stub upstream
    directly: per-call latency and throughput, the same runs feeding both rows."""
    module = [python(), "-m", "bench.proxy_overhead", "--calls", "1000"]
    latency = compare(
        Comparison(
            task="monitor proxy: latency per call against an instant upstream",
            figure="p50_ms",
            unit="ms",
            higher_is_better=False,
            reference_name="the same calls straight to the upstream stub",
            target="<= 1 ms added at p50 and <= 5 ms at p99 up to 16 clients",
            also=("p99_ms", "stream_p50_ms", "stream_p99_ms", "c16_p50_ms", "c16_p99_ms"),
        ),
        [*module, "--side", "proxy"],
        [*module, "--side", "direct"],
        pairs=pairs,
    )
    throughput = Comparison(
        task="monitor proxy: calls/s with 16 concurrent clients",
        figure="rps_16",
        unit="calls/s",
        higher_is_better=True,
        reference_name="the same calls straight to the upstream stub",
        target="(reported: throughput at 1, 16, 64 clients)",
        also=("rps_1", "rps_64", "events_stored"),
        omnitune=latency.omnitune,
        reference=latency.reference,
    )
    return [latency, throughput]


def monitor_ingest(pairs: int = 3) -> Comparison:
    """200,000 events through each server per run (about 8 s), a warm-up pair, 3 pairs."""
    module = [python(), "-m", "bench.monitor_ingest", "--events", "200000"]
    return compare(
        Comparison(
            task="monitor ingest, 200k events, every detector and scanner on (server on 1 core)",
            figure="events_per_second",
            unit="events/s",
            higher_is_better=True,
            reference_name="bare Starlette + SQLite + prometheus_client endpoint, no detectors",
            target=">= 20,000 events/s absolute",
            also=("rss_mb_at_10pct", "rss_mb_at_end", "server_cpu_share"),
        ),
        [*module, "--side", "omnitune"],
        [*module, "--side", "reference"],
        pairs=pairs,
    )


def scaled(results: dict[str, list[dict]], base: str, template: Comparison) -> list[Comparison]:
    """One row per scale point against the base point (the `reference` columns)."""
    rows = []
    for label, runs in results.items():
        if label == base:
            continue
        row = Comparison(**{**template.__dict__, "omnitune": runs, "reference": results[base]})
        row.task = f"{template.task}: {label} vs {base}"
        row.reference_name = f"same at {base}"
        rows.append(row)
    return rows


def monitor_concurrency(rounds: int = 3) -> list[Comparison]:
    """Ingest with 1, 4 and 16 concurrent client connections (60,000 events each)."""
    module = [python(), "-m", "bench.monitor_ingest", "--side", "omnitune", "--events", "60000"]
    points = {f"{n} clients": [*module, "--clients", str(n)] for n in (1, 4, 16)}
    results = scale(points, "1 clients", rounds=rounds)
    return scaled(
        results,
        "1 clients",
        Comparison(
            task="scale: monitor ingest vs concurrent clients",
            figure="events_per_second",
            unit="events/s",
            higher_is_better=True,
            target=">= 0.8: no collapse as connections multiply",
            also=("server_cpu_share",),
        ),
    )


def monitor_memory() -> list[Comparison]:
    """The daemon's RSS after 10^4, 10^5 and 10^6 events of one run (a level, not a speed:
    one run; the table's ratio is RSS at 10^4 over RSS at the larger count, 1 = flat)."""
    counts = (10_000, 100_000, 1_000_000)
    command = [python(), "-m", "bench.monitor_ingest", "--side", "omnitune"]
    command += ["--events", str(counts[-1]), "--rss-at", ",".join(map(str, counts))]
    figures = run_side(command)
    at = {
        n: {"rss_mb": figures[f"rss_mb_at_{n}"], "peak_rss_mb": figures["peak_rss_mb"]}
        for n in counts
    }
    return [
        Comparison(
            task=f"scale: monitor daemon memory after {n:,} events vs after {counts[0]:,}",
            figure="rss_mb",
            unit="MB",
            higher_is_better=False,
            omnitune=[at[n]],
            reference=[at[counts[0]]],
            reference_name=f"same run at {counts[0]:,} events",
            target="~1 (memory bounded by the windows, not the traffic)",
        )
        for n in counts[1:]
    ]


def training_scale(rounds: int = 3) -> list[Comparison]:
    """The trainer core on 1x, 2x, 4x the examples (one epoch) and the sequence length."""
    from bench.training_scale import write_texts
    from omnitune.modalities.text.sample_data import write_digit_chat
    from omnitune.modalities.tiny import build_tiny

    model = build_tiny("text", CACHE / "tiny-text", seed=0)
    module = [python(), "-m", "bench.training_scale", "--model", str(model)]
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    sizes = {}
    for factor, count in ((1, 512), (2, 1024), (4, 2048)):
        data = write_digit_chat(CACHE / f"scale-data-{count}", train=count, test=8)["train"]
        sizes[f"{factor}x ({count} examples)"] = [*module, "--data", str(data), "--epochs", "1"]
    lengths = {}
    for factor, tokens in ((1, 64), (2, 128), (4, 256)):
        data = CACHE / f"scale-length-{tokens}" / "train.jsonl"
        if not data.is_file():
            write_texts(model, data, 512, tokens)
        lengths[f"{factor}x ({tokens} tokens)"] = [
            *module,
            "--data",
            str(data),
            "--steps",
            "60",
            "--max-length",
            str(tokens),
            "--tokens-per-sample",
            str(tokens),
        ]
    base_size, base_length = next(iter(sizes)), next(iter(lengths))
    return [
        *scaled(
            scale(sizes, base_size, rounds=rounds, env=env),
            base_size,
            Comparison(
                task="scale: training samples/s vs dataset size (1 epoch, tiny Llama, 1 thread)",
                figure="samples_per_second",
                unit="samples/s",
                higher_is_better=True,
                target="~1 (flat); end-to-end time grows no faster than the data",
                also=("end_to_end_seconds",),
            ),
        ),
        *scaled(
            scale(lengths, base_length, rounds=rounds, env=env),
            base_length,
            Comparison(
                task="scale: training tokens/s vs sequence length (60 steps, tiny Llama, 1 thread)",
                figure="tokens_per_second",
                unit="tokens/s",
                higher_is_better=True,
                target=">= 0.8 (cost grows about linearly with the tokens)",
                also=("samples_per_second",),
            ),
        ),
    ]


def data_scale(rows: tuple[int, ...] = (10_000, 100_000, 1_000_000)) -> list[Comparison]:
    """Time to the first step and peak RSS at each dataset size, first run and cached re-run,
    against datasets.map(num_proc) + TRL SFTTrainer on the same rows (one pair each: a first
    run at 10^6 rows takes minutes on each side)."""
    from omnitune.modalities.tiny import build_tiny

    model = build_tiny("text", CACHE / "tiny-text", seed=0)
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    rows_out = []
    for count in rows:
        for phase in ("first", "cached"):
            common = ["--rows", str(count), "--phase", phase, "--model", str(model)]
            common += ["--work", str(CACHE / "data-scale")]
            module = [python(), "-m", "bench.data_scale"]
            rows_out.append(
                compare(
                    Comparison(
                        task=f"data: time to first step, {count:,} text rows, {phase} run",
                        figure="seconds_to_first_step",
                        unit="s",
                        higher_is_better=False,
                        reference_name="datasets.map + TRL SFTTrainer",
                        target=">= 1 (no slower); cached: data ready <= 2 s at 10^6 rows",
                        also=("data_ready_seconds", "peak_rss_mb"),
                    ),
                    [*module, "--side", "omnitune", *common],
                    [*module, "--side", "trl", *common],
                    pairs=1,
                    env=env,
                    warmup=False,
                )
            )
    return rows_out


def data_workers(pairs: int = 3) -> list[Comparison]:
    """Training steps/s of the speech and vision-language LoRA benchmarks with one background
    data worker vs none (the loop collating), same runs otherwise: on 2 cores at 1 torch
    thread, collation moves to the idle core."""
    rows = []
    for name, command, figure, unit, extra in (
        ("speech", speech_command, "utterances_per_second", "utterances/s", []),
        (
            "speech (noise, speed, SpecAugment)",
            speech_command,
            "utterances_per_second",
            "utterances/s",
            ["OMNITUNE_BENCH_AUGMENT=1"],
        ),
        ("vision-language", vlm_command, "samples_per_second", "samples/s", []),
    ):
        ours = ["env", "OMNITUNE_BENCH_WORKERS=1", *extra, *command("omnitune")]
        base = ["env", "OMNITUNE_BENCH_WORKERS=0", *extra, *command("omnitune")]
        rows.append(
            compare(
                Comparison(
                    task=f"{name} LoRA: 1 data worker vs 0 (2 cores, 1 torch thread)",
                    figure=figure,
                    unit=unit,
                    higher_is_better=True,
                    reference_name="data_workers: 0",
                    target=">= 1.15",
                ),
                ours,
                base,
                pairs=pairs,
                env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
            )
        )
    return rows


def monitor_client(pairs: int = 3) -> Comparison:
    module = [python(), "-m", "bench.monitor_client"]
    return compare(
        Comparison(
            task="monitor client: cost of logging one call on the serving thread",
            figure="median_us_per_event",
            unit="us/event",
            higher_is_better=False,
            reference_name="one synchronous POST per event (keep-alive http.client)",
            target="<= 20 us median per event, absolute",
            also=("p99_us_per_event", "delivered"),
        ),
        [*module, "--side", "omnitune", "--calls", "20000"],
        [*module, "--side", "reference", "--calls", "2000"],
        pairs=pairs,
    )


PEERS = REPO / "bench" / ".venv-peers" / "bin" / "python"


def monitor_drift(test: str, pairs: int = 3, peer: str = "alibi") -> Comparison | None:
    """Against Alibi Detect or Evidently, from their own virtualenv (`make bench-peers`);
    skipped, with a line saying so, without it."""
    if not PEERS.is_file():
        print(f"monitor_drift_{test}: skipped, {PEERS} missing (make bench-peers)", flush=True)
        return None
    if peer == "evidently":
        return compare(
            Comparison(
                task="drift detection, KS on synthetic shifts vs Evidently DriftedColumnsCount(ks)",
                figure="windows_per_second",
                unit="windows/s",
                higher_is_better=True,
                reference_name="evidently 0.7 Report([DriftedColumnsCount(method='ks')])",
                target=">= 10 at equal power and no more false alarms",
                also=("power", "false_alarm_rate"),
            ),
            [python(), "-m", "bench.monitor_drift", "--side", "omnitune", "--test", test],
            [str(PEERS), "-m", "bench.monitor_drift", "--side", "evidently", "--test", test],
            pairs=pairs,
            env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        )
    name = {"ks": "KSDrift", "mmd": "MMDDrift (PyTorch backend)"}[test]
    return compare(
        Comparison(
            task=f"drift detection, {test.upper()} on synthetic shifts vs Alibi Detect {name}",
            figure="windows_per_second",
            unit="windows/s",
            higher_is_better=True,
            reference_name=f"alibi-detect 0.13 {name}",
            target=">= 10 at equal power and no more false alarms",
            also=("power", "false_alarm_rate"),
        ),
        [python(), "-m", "bench.monitor_drift", "--side", "omnitune", "--test", test],
        [str(PEERS), "-m", "bench.monitor_drift", "--side", "alibi", "--test", test],
        pairs=pairs,
        env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def monitor_online(stream: str) -> list[Comparison]:
    """Calibrated online drift (bench/monitor_online.py) against Alibi Detect's online detector
    for the stream (from `make bench-peers`'s virtualenv; that row is skipped, with a line
    saying so, without it) and against the daemon's previous windowed default. Each side is
    one seeded experiment of 6 references x 6 runs per figure, so one pair."""
    module = ["-m", "bench.monitor_online", "--stream", stream]
    figures = ("mean_run_events", "run_to_ert", "mean_delay_events", "configure_seconds")
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    peer = {"scalar": "CVMDriftOnline", "embedding": "MMDDriftOnline (PyTorch backend)"}[stream]
    rows = []
    if PEERS.is_file():
        rows.append(
            compare(
                Comparison(
                    task=f"online drift, {stream} stream, ERT 500 vs Alibi Detect {peer}",
                    figure="events_per_second",
                    unit="events/s",
                    higher_is_better=True,
                    reference_name=f"alibi-detect 0.13 {peer}",
                    target=">= 10x events/s; run length within 25% of the ERT where the "
                    "peer's is; delay no worse",
                    also=figures,
                ),
                [python(), *module, "--side", "omnitune"],
                [str(PEERS), *module, "--side", "alibi"],
                pairs=1,
                env=env,
                warmup=False,
            )
        )
    else:
        print(f"monitor_online_{stream}: Alibi row skipped, {PEERS} missing", flush=True)
    rows.append(
        compare(
            Comparison(
                task=f"online drift, {stream} stream, ERT 500 vs the windowed default",
                figure="events_per_second",
                unit="events/s",
                higher_is_better=True,
                reference_name="omnitune drift.method: windowed (previous default)",
                target="run length near the ERT; shorter delay",
                also=figures,
            ),
            [python(), *module, "--side", "omnitune"],
            [python(), *module, "--side", "windowed"],
            pairs=1,
            env=env,
            warmup=False,
        )
    )
    return rows


def gpu_training(pairs: int = 3) -> Comparison | None:
    """`trainer_overhead` at a real size on a GPU (bench/gpu_training.py); skipped, with a line
    saying so, where torch sees no CUDA device."""
    import torch

    if not torch.cuda.is_available():
        print("gpu_training: skipped, no CUDA device on this machine", flush=True)
        return None
    from bench.gpu_training import build_real_size
    from bench.training_scale import write_texts
    from omnitune.modalities.tiny import build_tiny

    tokenizer = build_tiny("text", CACHE / "tiny-text", seed=0)
    model = build_real_size(tokenizer, CACHE / "llama-0.5b")
    data = CACHE / "gpu-data" / "train.jsonl"
    if not data.is_file():
        write_texts(tokenizer, data, 2048, 512)
    common = ["--model", str(model), "--data", str(data), "--steps", "60"]
    common += ["--max-length", "512", "--tokens-per-sample", "512"]
    module = [python(), "-m", "bench.trainer_overhead"]
    return compare(
        Comparison(
            task="trainer core vs plain PyTorch loop on GPU (0.5B Llama shape, bf16, LoRA)",
            figure="tokens_per_second",
            unit="tokens/s",
            higher_is_better=True,
            reference_name="plain PyTorch loop, bf16 autocast",
            target=">= 0.95 (core costs <= 5%)",
            also=("mfu", "samples_per_second"),
        ),
        [*module, "--side", "omnitune", *common, "--out", str(CACHE / "gpu-run")],
        [*module, "--side", "plain", *common],
        pairs=pairs,
        env={"HF_HUB_OFFLINE": "1"},
    )


BENCHMARKS = {
    "trainer_overhead": trainer_overhead,
    "speech_finetune": speech_finetune,
    "vlm_finetune": vlm_finetune,
    "packed_sft": packed_sft,
    "moe_sft": moe_sft,
    "distill": distill,
    "dpo": lambda: preference("dpo"),
    "orpo": lambda: preference("orpo"),
    "kto": lambda: preference("kto"),
    "grpo": grpo,
    "real_text": real_text,
    "real_speech": real_speech,
    "real_vlm": real_vlm,
    "monitor_ingest": monitor_ingest,
    "monitor_client": monitor_client,
    "proxy_overhead": proxy_overhead,
    "monitor_drift_ks": lambda: monitor_drift("ks"),
    "monitor_drift_mmd": lambda: monitor_drift("mmd"),
    "monitor_drift_ks_evidently": lambda: monitor_drift("ks", peer="evidently"),
    "monitor_online_scalar": lambda: monitor_online("scalar"),
    "monitor_online_embedding": lambda: monitor_online("embedding"),
    "monitor_concurrency": monitor_concurrency,
    "monitor_memory": monitor_memory,
    "training_scale": training_scale,
    "data_scale": data_scale,
    "data_workers": data_workers,
    "gpu_training": gpu_training,
}


def main(argv: list[str]) -> None:
    selected = argv or list(BENCHMARKS)
    CACHE.mkdir(parents=True, exist_ok=True)
    results = []
    unknown = [name for name in selected if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHMARKS)}")
    began = time.perf_counter()
    for name in selected:
        start = time.perf_counter()
        measured = BENCHMARKS[name]()
        if measured is None:
            continue
        rows = measured if isinstance(measured, list) else [measured]
        for row in rows:
            print(
                f"{name}: {row.task}: ratio {row.ratio:.3f} "
                f"({row.median('omnitune'):.1f} vs {row.median('reference'):.1f} {row.unit})",
                flush=True,
            )
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        results.extend(rows)
    print(f"all selected benchmarks: {time.perf_counter() - began:.0f} s", flush=True)
    write_results(results, REPO / "bench", keep_others=bool(argv))
    print((REPO / "bench" / "results.md").read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
