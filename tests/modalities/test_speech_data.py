"""Speech data: every source form, the feature cache, augmentation, bucketing, breakdowns,
and the shipped espeak-ng corpus."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from omnitune.trainers.config import RunConfig
from tests.conftest import run_cli
from tests.speech_data import RATE, tone_utterance, write_tone_corpus

CORPUS = Path(__file__).resolve().parents[2] / "modalities" / "speech" / "corpus"


def _config(train: str, cache: Path, **options) -> RunConfig:
    return RunConfig.model_validate(
        {
            "model": {"name_or_path": "unused", "modality": "speech"},
            "data": {"train": train, "options": {"cache_dir": str(cache), **options}},
            "train": {"max_steps": 1},
        }
    )


@pytest.fixture(scope="module")
def processor(tiny_model):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model("whisper"))


def _read(source, processor, cache, training=True, **options):
    from omnitune.modalities.speech.data import read_speech_dataset

    return read_speech_dataset(
        str(source), _config(str(source), cache, **options), processor, training
    )


def test_cached_features_equal_fresh_ones_and_examples_hold_no_samples(processor, tmp_path):
    from omnitune.modalities.speech.collate import make_speech_collator
    from omnitune.modalities.speech.features import extract

    manifest = write_tone_corpus(tmp_path / "data", 6, seed=0)
    examples = _read(manifest, processor, tmp_path / "cache")
    assert len(examples) == 6
    # Paths and scalars in memory: features live on disk until a batch needs them.
    assert all(isinstance(v, (str, int, float)) for item in examples.items for v in item.values())
    cached = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(cached) == 6
    # A 2-s window holds ~1 s of tone: the stored part is well under the whole window.
    assert all(p.stat().st_size < 0.8 * 80 * 200 * 4 for p in cached)

    config = _config(str(manifest), tmp_path / "cache")
    batch = make_speech_collator(processor, config, training=False)(examples.items[:3])
    from omnitune.modalities.speech.audio import read_audio

    for row, item in enumerate(examples.items[:3]):
        fresh = extract(processor.feature_extractor, read_audio(item["audio"], RATE))
        assert np.array_equal(batch["input_features"][row].numpy(), fresh)

    # A second read hits the cache; an edited file gets new features, not stale ones.
    mtimes = {p: p.stat().st_mtime_ns for p in cached}
    _read(manifest, processor, tmp_path / "cache")
    assert {p: p.stat().st_mtime_ns for p in cached} == mtimes
    first = Path(examples.items[0]["audio"])
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    _read(manifest, processor, tmp_path / "cache")
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 7


def test_folder_with_sidecar_transcripts_and_audiofolder_metadata(processor, tmp_path):
    import random

    import soundfile

    sidecar = tmp_path / "sidecar"
    sidecar.mkdir()
    rng = random.Random(0)
    for name, digits, text in [("a", [1, 2], "one two"), ("b", [3], "three"), ("c", [4], None)]:
        soundfile.write(sidecar / f"{name}.flac", tone_utterance(digits, rng), RATE)
        if text:
            (sidecar / f"{name}.txt").write_text(text + "\n")
    examples = _read(sidecar, processor, tmp_path / "cache")
    assert sorted(e["text"] for e in examples.items) == ["one two", "three"]
    assert examples.skipped == {"no transcript file": 1}

    folder = tmp_path / "audiofolder"
    folder.mkdir()
    soundfile.write(folder / "x.wav", tone_utterance([5, 6], rng), RATE)
    (folder / "metadata.csv").write_text("file_name,transcription,speaker\nx.wav,five six,ann\n")
    examples = _read(folder, processor, tmp_path / "cache")
    assert [(e["text"], e["speaker"]) for e in examples.items] == [("five six", "ann")]


def test_hf_dataset_saved_to_disk_with_audio_bytes(processor, tmp_path):
    import io
    import random

    import soundfile
    from datasets import Audio, Dataset

    rng = random.Random(1)
    rows = []
    for digits, text in [([7], "seven"), ([8, 9], "eight nine")]:
        buffer = io.BytesIO()
        soundfile.write(buffer, tone_utterance(digits, rng), RATE, format="WAV")
        rows.append({"audio": {"bytes": buffer.getvalue(), "path": None}, "sentence": text})
    dataset = Dataset.from_list(rows).cast_column("audio", Audio(decode=False))
    dataset.save_to_disk(str(tmp_path / "hf"))
    examples = _read(tmp_path / "hf", processor, tmp_path / "cache", text_column="sentence")
    assert [e["text"] for e in examples.items] == ["seven", "eight nine"]
    assert all(Path(e["audio"]).is_file() for e in examples.items)

    with pytest.raises(Exception, match=r"no 'speech' column .* set data\.options\.audio_column"):
        _read(tmp_path / "hf", processor, tmp_path / "cache", audio_column="speech")


def test_augmentation_changes_training_batches_only(processor, tmp_path):
    import torch

    from omnitune.modalities.speech.collate import make_speech_collator

    manifest = write_tone_corpus(tmp_path / "data", 4, seed=2)
    augment = {
        "spec_augment": {"p": 1.0, "freq_masks": 2, "freq_width": 20, "time_masks": 2},
        "noise": {"p": 1.0, "snr_db": [5, 5]},
        "speed": {"p": 1.0, "factors": [0.8]},
    }
    config = _config(str(manifest), tmp_path / "cache", augment=augment)
    examples = _read(manifest, processor, tmp_path / "cache", augment=augment)
    clean = make_speech_collator(processor, config, training=False)(examples.items)
    again = make_speech_collator(processor, config, training=False)(examples.items)
    assert torch.equal(clean["input_features"], again["input_features"])

    torch.manual_seed(0)
    noisy = make_speech_collator(processor, config, training=True)(examples.items)
    features = noisy["input_features"]
    assert features.shape == clean["input_features"].shape
    assert not torch.isnan(features).any()
    assert not torch.allclose(features, clean["input_features"])
    # SpecAugment's masks hold each clip's floor: whole mel rows sit at the clip minimum.
    floor_rows = (features == features.amin(dim=(1, 2), keepdim=True)).all(dim=2).sum(dim=1)
    assert (floor_rows >= 1).all()
    assert torch.equal(noisy["labels"], clean["labels"])

    torch.manual_seed(0)
    replay = make_speech_collator(processor, config, training=True)(examples.items)
    assert torch.equal(replay["input_features"], features), "draws come from torch's seeded RNG"


def test_duration_buckets_hold_similar_lengths_and_cover_the_epoch():
    from omnitune.trainers.sampling import BatchPlan

    rng = np.random.default_rng(0)
    lengths = rng.uniform(0.5, 15.0, size=1000)
    bucketed = BatchPlan(1000, per_device_batch=10, world_size=1, seed=3, lengths=lengths)
    plain = BatchPlan(1000, per_device_batch=10, world_size=1, seed=3)

    def mean_spread(plan: BatchPlan) -> float:
        order = plan.epoch_order(0)
        spreads = [np.ptp(lengths[plan.batch(order, b, 0)]) for b in range(plan.batches_per_epoch)]
        return float(np.mean(spreads))

    assert sorted(bucketed.epoch_order(0)) == list(range(1000))
    assert np.array_equal(bucketed.epoch_order(1), bucketed.epoch_order(1))
    assert not np.array_equal(bucketed.epoch_order(0), bucketed.epoch_order(1))
    assert mean_spread(bucketed) < 0.1 * mean_spread(plain)
    # The batches are shuffled: the epoch does not run from longest to shortest.
    order = bucketed.epoch_order(0)
    firsts = [lengths[order[b * 10]] for b in range(100)]
    assert not all(a >= b for a, b in itertools.pairwise(firsts))


def test_error_rates_break_down_by_speaker():
    from omnitune.modalities.speech.metrics import error_rates_by_field

    examples = [
        {"text": "one two", "speaker": "ann"},
        {"text": "three four", "speaker": "bob"},
    ]
    rates = error_rates_by_field(examples, ["One, two.", "three five"])
    assert rates["wer/speaker=ann"] == 0.0
    assert rates["wer/speaker=bob"] == 0.5
    assert rates["wer"] == 0.25


def test_invalid_speech_options_name_the_field(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: {name_or_path: x, modality: speech}\n"
        "data: {train: t.jsonl, options: {augment: {noise: {snr_db: [30, 10]}, spec: {}}}}\n"
        "train: {max_steps: 1}\n"
    )
    result = run_cli("config", "check", str(config))
    assert result.returncode == 2
    assert "data.options.augment.noise.snr_db: low end 30.0 is above high end 10.0" in result.stderr
    assert "data.options.augment.spec: unknown key; did you mean 'speed'?" in result.stderr


def test_shipped_corpus_has_two_domains_of_distinct_voices_within_budget():
    from omnitune.modalities.speech.audio import read_audio

    size = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert size <= 10 * 1024 * 1024
    voices = {}
    for domain in ("base", "shift"):
        voices[domain] = set()
        for split in ("train", "test"):
            rows = [json.loads(line) for line in (CORPUS / domain / f"{split}.jsonl").open()]
            assert len(rows) >= 40
            for row in rows:
                assert (CORPUS / domain / row["audio"]).is_file()
                assert row["domain"] == domain and row["duration"] <= 2.0
                voices[domain].add(row["speaker"])
    assert len(voices["base"] | voices["shift"]) >= 6
    assert not voices["base"] & voices["shift"]
    samples = read_audio(CORPUS / "base" / "train" / "base-train-0000.flac", RATE)
    assert 0.3 < len(samples) / RATE <= 2.0
