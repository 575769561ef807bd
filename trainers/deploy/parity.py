"""The parity report: the exported model, run in its real runtime, against the PyTorch model it
came from, on the run's eval set.

Text (each eval chat's prompt):
- `token_agreement`: the share of PyTorch's greedy answer tokens that the runtime also ranks
  first when fed the same prefix (teacher-forced, so one early difference does not count as
  every later token);
- `answers_identical`: the share of prompts whose free-running greedy answers are identical;
- `exact_match` against the references and `perplexity` of the eval chats' answer tokens, for
  each side;
- `tokenizer_agreement`: where the runtime tokenizes (llama.cpp), the share of prompts it
  encodes to the same ids as the Hugging Face tokenizer;
- `max_logit_diff`: the largest absolute logit difference on those sequences.
Speech (each eval clip): `transcripts_identical`, `wer` for each side, and `max_logit_diff` of the
decoder where the runtime exposes its logits.
Both: size on disk (MB) and speed on one thread of this machine (tokens/s of greedy generation,
utterances/s of transcription).

The unquantised export passes when token agreement >= 0.99 and perplexity within 1% (text), or
WER within 0.01 (speech), and its logits within the format's tolerance where it states one. A
quantised export's figures are reported, not judged: its cost is what the report is for.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnitune.trainers.deploy.base import DeployFormat, folder_size_mb

MIN_TOKEN_AGREEMENT = 0.99
MAX_PERPLEXITY_CHANGE = 0.01
MAX_WER_CHANGE = 0.01
#: Examples whose outputs differ, kept in parity.json to look at.
MAX_DIFFERENCES = 10


@dataclass
class ParityReport:
    """What parity.json holds: the export, each side's figures, the checks and the verdict."""

    format: str
    runtime: str
    quantize: str
    judged: bool
    examples: int
    figures: dict[str, float] = field(default_factory=dict)
    pytorch: dict[str, float] = field(default_factory=dict)
    exported: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    #: the first examples whose outputs differ: input, reference, PyTorch's and the export's
    differences: list[dict[str, str]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "runtime": self.runtime,
            "quantize": self.quantize,
            "judged": self.judged,
            "passed": self.passed,
            "examples": self.examples,
            "agreement": self.figures,
            "pytorch": self.pytorch,
            "exported": self.exported,
            "failures": self.failures,
            "differences": self.differences,
        }

    def table(self) -> str:
        """The printed table: one row per figure, PyTorch beside the export."""
        rows = [("figure", "pytorch", f"{self.format} {self.quantize}")]
        for key in self.pytorch:
            rows.append((key, _fmt(self.pytorch[key]), _fmt(self.exported.get(key))))
        for key, value in self.figures.items():
            rows.append((key, "", _fmt(value)))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        verdict = (
            "parity: passed"
            if self.passed and self.judged
            else "parity: reported (quantised: not judged)"
            if self.passed
            else "parity: FAILED: " + "; ".join(self.failures)
        )
        return "\n".join([*lines, verdict])


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and (math.isnan(value) or abs(value) >= 100):
        return f"{value:,.1f}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@dataclass
class _TextTally:
    """What the text checks add up over the eval prompts, per side where it is per side."""

    agree: int = 0
    total: int = 0
    identical: int = 0
    tokenized: int = 0
    same_tokens: int = 0
    max_diff: float = 0.0
    answers: dict[str, list[str]] = field(default_factory=lambda: {"pytorch": [], "exported": []})
    seconds: dict[str, float] = field(default_factory=lambda: {"pytorch": 0.0, "exported": 0.0})
    generated: dict[str, int] = field(default_factory=lambda: {"pytorch": 0, "exported": 0})
    differences: list[dict[str, str]] = field(default_factory=list)


def text_parity(
    fmt: DeployFormat,
    runtime: Any,
    model: Any,
    tokenizer: Any,
    items: list[dict[str, Any]],
    max_new_tokens: int,
    quantize: str,
) -> ParityReport:
    from omnitune.modalities.text.generation import exact_match

    reference = TorchTextRuntime(model)
    engines = {"pytorch": reference, "exported": runtime}
    stop = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
    prompts = [i for i in items if i.get("prompt_messages")]
    tally = _TextTally()
    for item in prompts:
        _compare_prompt(tally, item, tokenizer, engines, max_new_tokens, stop)

    report = ParityReport(fmt.name, fmt.runtime, quantize, quantize == fmt.unquantized, len(items))
    report.differences = tally.differences
    report.figures["token_agreement"] = tally.agree / tally.total if tally.total else math.nan
    report.figures["answers_identical"] = tally.identical / len(prompts) if prompts else math.nan
    if tally.tokenized:
        report.figures["tokenizer_agreement"] = tally.same_tokens / tally.tokenized
    report.figures["max_logit_diff"] = tally.max_diff
    for side, engine in engines.items():
        figures = report.pytorch if side == "pytorch" else report.exported
        if prompts:
            figures["exact_match"] = exact_match(
                [i["answer"] for i in prompts], tally.answers[side]
            )
        figures["perplexity"] = _perplexity(engine, items)
        seconds = tally.seconds[side]
        figures["tokens_per_second"] = tally.generated[side] / seconds if seconds else math.nan
    _judge_text(report, fmt)
    return report


def _compare_prompt(
    tally: _TextTally,
    item: dict[str, Any],
    tokenizer: Any,
    engines: dict[str, Any],
    max_new_tokens: int,
    stop: set[int],
) -> None:
    """One eval prompt: both sides' greedy answers, the runtime's argmax along PyTorch's
    answer, the logit difference, and the runtime's own tokens of the prompt."""
    import numpy as np

    messages = item["prompt_messages"]
    prompt = list(
        tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )
    continuations = {}
    for side, engine in engines.items():
        start = time.perf_counter()
        continuations[side] = engine.greedy(prompt, max_new_tokens, stop)
        tally.seconds[side] += time.perf_counter() - start
        tally.generated[side] += len(continuations[side])
        tally.answers[side].append(tokenizer.decode(continuations[side], skip_special_tokens=True))
    ours, theirs = continuations["pytorch"], continuations["exported"]
    tally.identical += theirs == ours
    if theirs != ours and len(tally.differences) < MAX_DIFFERENCES:
        tally.differences.append(
            {
                "input": messages[-1]["content"],
                "reference": item["answer"],
                "pytorch": tally.answers["pytorch"][-1],
                "exported": tally.answers["exported"][-1],
            }
        )
    sequence = prompt + ours
    exported = engines["exported"].logits(sequence[:-1])
    reference = engines["pytorch"].logits(sequence[:-1])
    predicted = np.argmax(exported[len(prompt) - 1 : len(sequence) - 1], axis=-1)
    tally.agree += int((predicted == np.array(ours)).sum())
    tally.total += len(ours)
    tally.max_diff = max(tally.max_diff, float(np.abs(exported - reference).max()))
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    own = engines["exported"].tokenize(text)
    if own is not None:
        tally.tokenized += 1
        tally.same_tokens += list(own) == prompt


def _perplexity(engine: Any, items: list[dict[str, Any]]) -> float:
    """exp(mean negative log-likelihood) of every label token after the first position."""
    import numpy as np

    nll, count = 0.0, 0
    for item in items:
        ids, labels = list(item["input_ids"]), list(item["labels"])
        logits = engine.logits(ids[:-1]).astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        for position in range(len(ids) - 1):
            if labels[position + 1] != -100:
                nll -= log_probs[position, ids[position + 1]]
                count += 1
    return math.exp(nll / count) if count else float("nan")


def _judge_text(report: ParityReport, fmt: DeployFormat) -> None:
    if not report.judged:
        return
    agreement = report.figures["token_agreement"]
    if not agreement >= MIN_TOKEN_AGREEMENT:
        report.failures.append(f"token agreement {agreement:.4f} < {MIN_TOKEN_AGREEMENT}")
    before, after = report.pytorch["perplexity"], report.exported["perplexity"]
    if not abs(after - before) <= MAX_PERPLEXITY_CHANGE * before:
        report.failures.append(
            f"perplexity {after:.4g} vs {before:.4g}: more than {MAX_PERPLEXITY_CHANGE:.0%} apart"
        )
    _judge_logits(report, fmt)


def _judge_logits(report: ParityReport, fmt: DeployFormat) -> None:
    diff = report.figures.get("max_logit_diff")
    if fmt.logit_tolerance is not None and diff is not None and not diff <= fmt.logit_tolerance:
        report.failures.append(f"max logit difference {diff:.3g} > {fmt.logit_tolerance:g}")


class TorchTextRuntime:
    """The PyTorch model behind the same questions the exported runtimes answer."""

    def __init__(self, model: Any) -> None:
        self.model = model.eval()

    def logits(self, tokens: list[int]) -> Any:
        import torch

        with torch.inference_mode():
            return self.model(torch.tensor([tokens])).logits[0].float().numpy()

    def greedy(self, prompt: list[int], max_new_tokens: int, stop: set[int]) -> list[int]:
        import torch

        with torch.inference_mode():
            output = self.model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=sorted(stop),
                pad_token_id=min(stop),
            )
        return output[0, len(prompt) :].tolist()

    def tokenize(self, text: str) -> list[int] | None:
        return None


def speech_parity(
    fmt: DeployFormat,
    runtime: Any,
    model: Any,
    processor: Any,
    items: list[dict[str, Any]],
    config: Any,
    quantize: str,
) -> ParityReport:
    import numpy as np

    from omnitune.modalities.speech.audio import read_audio
    from omnitune.modalities.speech.collate import set_language_and_task
    from omnitune.modalities.speech.features import example_features
    from omnitune.modalities.speech.metrics import error_rates, normalise
    from omnitune.modalities.speech.options import speech_options

    options = speech_options(config)
    extractor = processor.feature_extractor
    max_new_tokens = config.eval.generation.max_new_tokens
    set_language_and_task(processor, config)  # sets the tokenizer's prefix tokens
    start = time.perf_counter()
    ours = [
        _torch_transcript(model, processor, example_features(i, extractor), max_new_tokens)
        for i in items
    ]
    seconds = {"pytorch": time.perf_counter() - start}
    clips = [read_audio(i["audio"], extractor.sampling_rate) for i in items]
    start = time.perf_counter()
    theirs = runtime.transcribe(
        clips, _language_code(options.language), options.task, max_new_tokens
    )
    seconds["exported"] = time.perf_counter() - start
    references = [i["text"] for i in items]
    report = ParityReport(fmt.name, fmt.runtime, quantize, quantize == fmt.unquantized, len(items))
    report.figures["transcripts_identical"] = sum(
        normalise(a) == normalise(b) for a, b in zip(ours, theirs, strict=True)
    ) / max(len(items), 1)
    report.differences = [
        {"input": item["audio"], "reference": ref, "pytorch": a, "exported": b}
        for item, ref, a, b in zip(items, [i["text"] for i in items], ours, theirs, strict=True)
        if normalise(a) != normalise(b)
    ][:MAX_DIFFERENCES]
    max_diff = None
    if hasattr(runtime, "decoder_logits"):
        for item in items:
            features = example_features(item, extractor)
            tokens = _decoder_tokens(model, processor, features, max_new_tokens)
            logits = np.asarray(runtime.decoder_logits(features, tokens))
            diff = float(np.abs(logits - _torch_decoder_logits(model, features, tokens)).max())
            max_diff = diff if max_diff is None else max(max_diff, diff)
    if max_diff is not None:
        report.figures["max_logit_diff"] = max_diff
    for side, texts in (("pytorch", ours), ("exported", theirs)):
        figures = report.pytorch if side == "pytorch" else report.exported
        rates = error_rates(references, texts)
        figures["wer"], figures["cer"] = rates["wer"], rates["cer"]
        figures["utterances_per_second"] = len(items) / seconds[side] if seconds[side] else 0.0
    if report.judged:
        before, after = report.pytorch["wer"], report.exported["wer"]
        if not abs(after - before) <= MAX_WER_CHANGE:
            report.failures.append(
                f"WER {after:.4f} vs {before:.4f}: more than {MAX_WER_CHANGE} apart"
            )
        _judge_logits(report, fmt)
    return report


def _language_code(language: str | None) -> str | None:
    """Whisper's language code ("en") for a code or a name ("english")."""
    if language is None:
        return None
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    return TO_LANGUAGE_CODE.get(language.lower(), language.lower())


def _decoder_tokens(model: Any, processor: Any, features: Any, max_new_tokens: int) -> list[int]:
    """The decoder's prefix (start, language, task, no timestamps) and the PyTorch model's
    greedy transcript of the clip's one window: the tokens whose logits both sides are asked
    for, and the transcript the runtimes' is compared with.

    One window, decoded by transformers' plain `GenerationMixin.generate` from the prefix, as
    the runtimes decode it. Whisper's own `generate` takes every id above <|notimestamps|> for a
    timestamp; for a Whisper whose text tokens come after it (the tiny ones: special tokens
    first) it splits the transcript there, seeks and decodes a second window, appending what it
    hallucinates from the padding. `omnitune eval` still scores that; the report does not.
    """
    import torch
    from transformers.generation.utils import GenerationMixin

    prefix = list(processor.tokenizer.prefix_tokens)
    with torch.inference_mode():
        output = GenerationMixin.generate(
            model,
            input_features=torch.from_numpy(features)[None],
            decoder_input_ids=torch.tensor([prefix]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
        )
    return output[0].tolist()


def _torch_transcript(model: Any, processor: Any, features: Any, max_new_tokens: int) -> str:
    tokens = _decoder_tokens(model, processor, features, max_new_tokens)
    return processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def _torch_decoder_logits(model: Any, features: Any, tokens: list[int]) -> Any:
    import torch

    with torch.inference_mode():
        return (
            model(
                input_features=torch.from_numpy(features)[None],
                decoder_input_ids=torch.tensor([tokens]),
            )
            .logits[0]
            .float()
            .numpy()
        )


def sizes(hf_folder: Path, exported: Path, report: ParityReport) -> None:
    """Size on disk of the PyTorch weights and of the export, in MB."""
    weights = [p for p in hf_folder.iterdir() if p.suffix in (".safetensors", ".bin")]
    report.pytorch["size_mb"] = sum(p.stat().st_size for p in weights) / 1e6
    report.exported["size_mb"] = folder_size_mb(exported)
