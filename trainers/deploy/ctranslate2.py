"""CTranslate2: faster-whisper's format for Whisper, and CTranslate2's `Generator` for the text
families its converter takes.

CTranslate2's own `TransformersConverter` writes the model; faster-whisper also needs the
tokenizer (`tokenizer.json`) and the feature extractor's settings (`preprocessor_config.json`)
beside it, which it reads instead of fetching them from the hub. A Whisper whose special tokens
sit below its text tokens is relabelled into Whisper's layout first
(trainers/deploy/whisper_vocabulary.py). Weights are stored in the `--quantize` type and run in
it: float32, or int8 (int8 matrices with float32 activations on the CPU).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from omnitune.trainers.deploy.base import DeployFormat
from omnitune.trainers.deploy.whisper_vocabulary import for_faster_whisper

QUANTIZATIONS = ("float32", "int8", "int8_float32")
TEXT_FAMILIES = ("llama", "mistral", "qwen2")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


def write(hf_folder: Path, out: Path, quantize: str, modality: str) -> Path:
    """The converted model folder `out`."""
    import ctranslate2.converters

    source = hf_folder
    copy = [name for name in _TOKENIZER_FILES if (hf_folder / name).is_file()]
    if modality == "speech":
        from transformers import WhisperFeatureExtractor

        source = for_faster_whisper(hf_folder, hf_folder.parent / f".relaid-{hf_folder.name}")
        WhisperFeatureExtractor.from_pretrained(hf_folder).save_pretrained(source)
        copy = ["tokenizer.json", "preprocessor_config.json"]
    converter = ctranslate2.converters.TransformersConverter(str(source), copy_files=copy)
    converter.convert(str(out), quantization=quantize, force=True)
    if source != hf_folder:
        shutil.rmtree(source, ignore_errors=True)
    if modality == "speech":
        _write_generation_facts(hf_folder, out)
    return out


def _write_generation_facts(hf_folder: Path, out: Path) -> None:
    """generation.json beside the model: whether it is multilingual (what faster-whisper must
    be told for a vocabulary CTranslate2 does not recognise; see _Multilingual)."""
    import json

    generation = hf_folder / "generation_config.json"
    stored = json.loads(generation.read_text()) if generation.is_file() else {}
    facts = {"is_multilingual": bool(stored.get("is_multilingual", True))}
    (out / "generation.json").write_text(json.dumps(facts) + "\n")


class FasterWhisperRuntime:
    """A converted Whisper in faster-whisper, greedy, one thread, no VAD, no timestamps, no
    temperature fallback, and the model's own suppressed tokens (its generation config's, which
    the converter stored as `suppress_ids`): the decoding `omnitune eval` does with
    transformers. (faster-whisper always suppresses the task, start and no-speech tokens too.)"""

    def __init__(self, path: Path, quantize: str) -> None:
        import json

        from faster_whisper import WhisperModel

        self.model = WhisperModel(str(path), device="cpu", compute_type=quantize, cpu_threads=1)
        multilingual = json.loads((path / "generation.json").read_text())["is_multilingual"]
        if multilingual and not self.model.model.is_multilingual:
            self.model.model = _Multilingual(self.model.model)
        stored = json.loads((path / "config.json").read_text(encoding="utf-8"))
        self.suppress = list(stored.get("suppress_ids") or [])
        self.suppress_blank = bool(stored.get("suppress_ids_begin"))

    def transcribe(
        self, clips: list[Any], language: str | None, task: str, max_new_tokens: int
    ) -> list[str]:
        # CTranslate2 lets a Whisper generate at most half of max_length, the other half being
        # the prompt's (4 tokens: start, language, task, no timestamps); asking faster-whisper for
        # 2N - 4 new tokens lets it generate N, as transformers' max_new_tokens=N does.
        budget = 2 * max_new_tokens - 4
        texts = []
        for clip in clips:
            segments, _ = self.model.transcribe(
                clip,
                language=language,
                task=task,
                beam_size=1,
                best_of=1,
                temperature=0.0,
                without_timestamps=True,
                suppress_tokens=list(self.suppress),
                suppress_blank=self.suppress_blank,
                condition_on_previous_text=False,
                no_speech_threshold=None,
                log_prob_threshold=None,
                compression_ratio_threshold=None,
                vad_filter=False,
                max_new_tokens=budget,
            )
            texts.append("".join(segment.text for segment in segments).strip())
        return texts


class _Multilingual:
    """A CTranslate2 Whisper that answers `is_multilingual` as its generation config does.

    CTranslate2 (4.8.5) decides it from the vocabulary and says False for a multilingual
    Whisper whose vocabulary is not OpenAI's (a tiny one, a retrained tokenizer); faster-whisper
    would then prompt it as an English-only model, <|startoftranscript|> alone, and not with the
    language and task it was trained with. Everything else is the CTranslate2 model's own."""

    def __init__(self, model: Any) -> None:
        self._model = model

    is_multilingual = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class GeneratorRuntime:
    """A converted causal LM in CTranslate2's Generator, one thread."""

    def __init__(self, path: Path, quantize: str, hf_folder: Path) -> None:
        import ctranslate2
        from transformers import AutoTokenizer

        self.generator = ctranslate2.Generator(
            str(path), device="cpu", compute_type=quantize, intra_threads=1
        )
        self.tokenizer = AutoTokenizer.from_pretrained(hf_folder)

    def logits(self, tokens: list[int]) -> Any:
        import numpy as np

        return np.array(self.generator.forward_batch([tokens]))[0].astype(np.float32)

    def greedy(self, prompt: list[int], max_new_tokens: int, stop: set[int]) -> list[int]:
        result = self.generator.generate_batch(
            [self.tokenizer.convert_ids_to_tokens(prompt)],
            max_length=max_new_tokens,
            sampling_topk=1,
            include_prompt_in_result=False,
            end_token=sorted(stop),
            return_end_token=True,
        )
        return list(result[0].sequences_ids[0])

    def tokenize(self, text: str) -> list[int] | None:
        return None


def load(path: Path, quantize: str, modality: str, hf_folder: Path) -> Any:
    if modality == "speech":
        return FasterWhisperRuntime(path, quantize)
    return GeneratorRuntime(path, quantize, hf_folder)


def launch(path: Path, modality: str) -> str:
    if modality == "speech":
        return f"python -c \"from faster_whisper import WhisperModel; WhisperModel('{path}')\""
    return f"python -c \"import ctranslate2; ctranslate2.Generator('{path}')\""


#: faster-whisper pads or trims every window to this many mel frames (OpenAI's 30 s).
FASTER_WHISPER_FRAMES = 3000


def refuse(modality: str, model_config: Any) -> str | None:
    frames = 2 * getattr(model_config, "max_source_positions", 0)
    if modality == "speech" and frames != FASTER_WHISPER_FRAMES:
        return (
            f"faster-whisper pads every window to {FASTER_WHISPER_FRAMES:,} mel frames (30 s, as "
            f"OpenAI's Whisper checkpoints take), and this Whisper's encoder takes {frames:,} "
            f"({frames // 100} s); export it with --format onnx, or fine-tune a 30-second Whisper"
        )
    return None


FORMAT = DeployFormat(
    name="ctranslate2",
    runtime="CTranslate2 (faster-whisper for Whisper)",
    families={"speech": ("whisper",), "text": TEXT_FAMILIES},
    quantizations=QUANTIZATIONS,
    write=write,
    load=load,
    launch=launch,
    refuse=refuse,
)
