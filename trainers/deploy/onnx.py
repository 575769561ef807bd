"""ONNX for ONNX Runtime: a causal LM's logits graph, or Whisper's encoder and decoder graphs.

Optimum's exporter (the usual route) has no release for transformers 5, which omnitune pins, so
the graphs are exported with `torch.onnx.export` (the TorchScript exporter: the dynamo exporter
needs onnxscript, a further dependency, for no gain at these graphs). Each graph takes whole
sequences and returns every position's logits, without a key/value cache: generation re-runs
the sequence, which costs speed, not correctness, and keeps one graph per model part. The
unquantised export must match PyTorch's logits within 1e-3; `--quantize int8` applies ONNX
Runtime's dynamic quantisation (int8 weights of the matrix products) and reports its cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omnitune.trainers.deploy.base import DeployFormat

QUANTIZATIONS = ("float32", "int8")
TEXT_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
OPSET = 17
LOGIT_TOLERANCE = 1e-3


def write(hf_folder: Path, out: Path, quantize: str, modality: str) -> Path:
    """`out/` with model.onnx (text) or encoder.onnx + decoder.onnx (Whisper), and the
    tokenizer/processor files to run them."""
    import warnings

    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The tracer's notes on branches it fixes at the traced shapes (transformers' mask and
        # attention code): the graphs are checked against PyTorch on the eval set instead.
        warnings.simplefilter("ignore")
        graphs = _export(hf_folder, out, modality)
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        for graph in graphs:
            quantized = graph.with_suffix(".int8.onnx")
            quantize_dynamic(str(graph), str(quantized), weight_type=QuantType.QInt8)
            quantized.replace(graph)
    return out


def _export(hf_folder: Path, out: Path, modality: str) -> list[Path]:
    import torch

    if modality == "speech":
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        model = WhisperForConditionalGeneration.from_pretrained(hf_folder, dtype=torch.float32)
        WhisperProcessor.from_pretrained(hf_folder).save_pretrained(out)
        graphs = _export_whisper(model.eval(), out)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)
        AutoTokenizer.from_pretrained(hf_folder).save_pretrained(out)
        graphs = [_export_causal_lm(model.eval(), out / "model.onnx")]
    model.config.save_pretrained(out)
    return graphs


class _Logits:
    def __init__(self, model: Any) -> None:
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: Any, attention_mask: Any) -> Any:
                return self.model(
                    input_ids=input_ids, attention_mask=attention_mask, use_cache=False
                ).logits

        self.module = Wrapped()


def _export_causal_lm(model: Any, path: Path) -> Path:
    import torch

    ids = torch.arange(3, 8)[None]
    torch.onnx.export(
        _Logits(model).module,
        (ids, torch.ones_like(ids)),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_axes={
            name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask", "logits")
        },
        opset_version=OPSET,
        dynamo=False,
    )
    return path


def _export_whisper(model: Any, out: Path) -> list[Path]:
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = model.model.encoder

        def forward(self, input_features: Any) -> Any:
            return self.encoder(input_features=input_features).last_hidden_state

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, decoder_input_ids: Any, encoder_hidden_states: Any) -> Any:
            # An explicit all-ones mask: without one, transformers looks for packed sequences in
            # the position ids with torch.diff, which has no ONNX export.
            return self.model(
                encoder_outputs=(encoder_hidden_states,),
                decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=torch.ones_like(decoder_input_ids),
                use_cache=False,
            ).logits

    frames = 2 * model.config.max_source_positions
    features = torch.zeros(1, model.config.num_mel_bins, frames)
    with torch.no_grad():
        hidden = Encoder()(features)
    encoder, decoder = out / "encoder.onnx", out / "decoder.onnx"
    torch.onnx.export(
        Encoder(),
        (features,),
        str(encoder),
        input_names=["input_features"],
        output_names=["encoder_hidden_states"],
        dynamic_axes={"input_features": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    tokens = torch.tensor([[model.config.decoder_start_token_id] * 4])
    torch.onnx.export(
        Decoder(),
        (tokens, hidden),
        str(decoder),
        input_names=["decoder_input_ids", "encoder_hidden_states"],
        output_names=["logits"],
        dynamic_axes={
            "decoder_input_ids": {0: "batch", 1: "sequence"},
            "encoder_hidden_states": {0: "batch"},
            "logits": {0: "batch", 1: "sequence"},
        },
        opset_version=OPSET,
        dynamo=False,
    )
    return [encoder, decoder]


def _session(path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxTextRuntime:
    def __init__(self, path: Path) -> None:
        self.session = _session(path / "model.onnx")

    def logits(self, tokens: list[int]) -> Any:
        import numpy as np

        ids = np.array([tokens], dtype=np.int64)
        return self.session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0]

    def greedy(self, prompt: list[int], max_new_tokens: int, stop: set[int]) -> list[int]:
        import numpy as np

        sequence, out = list(prompt), []
        for _ in range(max_new_tokens):
            token = int(np.argmax(self.logits(sequence)[-1]))
            out.append(token)
            if token in stop:
                break
            sequence.append(token)
        return out

    def tokenize(self, text: str) -> list[int] | None:
        return None


class OnnxWhisperRuntime:
    def __init__(self, path: Path) -> None:
        from transformers import WhisperProcessor

        self.encoder = _session(path / "encoder.onnx")
        self.decoder = _session(path / "decoder.onnx")
        self.processor = WhisperProcessor.from_pretrained(path)

    def _hidden(self, features: Any) -> Any:
        import numpy as np

        return self.encoder.run(None, {"input_features": features[None].astype(np.float32)})[0]

    def decoder_logits(self, features: Any, tokens: list[int]) -> Any:
        import numpy as np

        ids = np.array([tokens], dtype=np.int64)
        inputs = {"decoder_input_ids": ids, "encoder_hidden_states": self._hidden(features)}
        return self.decoder.run(None, inputs)[0][0]

    def transcribe(
        self, clips: list[Any], language: str | None, task: str, max_new_tokens: int
    ) -> list[str]:
        import numpy as np

        tokenizer, extractor = self.processor.tokenizer, self.processor.feature_extractor
        tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
        prefix = list(tokenizer.prefix_tokens)
        texts = []
        for clip in clips:
            features = extractor(clip, sampling_rate=extractor.sampling_rate, return_tensors="np")
            hidden = self._hidden(features["input_features"][0])
            tokens = list(prefix)
            for _ in range(max_new_tokens):
                ids = np.array([tokens], dtype=np.int64)
                logits = self.decoder.run(
                    None, {"decoder_input_ids": ids, "encoder_hidden_states": hidden}
                )[0][0, -1]
                token = int(np.argmax(logits))
                tokens.append(token)
                if token == tokenizer.eos_token_id:
                    break
            texts.append(tokenizer.decode(tokens[len(prefix) :], skip_special_tokens=True).strip())
        return texts


def load(path: Path, quantize: str, modality: str, hf_folder: Path) -> Any:
    return OnnxWhisperRuntime(path) if modality == "speech" else OnnxTextRuntime(path)


def launch(path: Path, modality: str) -> str:
    graph = path / ("encoder.onnx" if modality == "speech" else "model.onnx")
    return f"python -c \"import onnxruntime; onnxruntime.InferenceSession('{graph}')\""


FORMAT = DeployFormat(
    name="onnx",
    runtime="ONNX Runtime",
    families={"text": TEXT_FAMILIES, "speech": ("whisper",)},
    quantizations=QUANTIZATIONS,
    write=write,
    load=load,
    launch=launch,
    logit_tolerance=LOGIT_TOLERANCE,
)
