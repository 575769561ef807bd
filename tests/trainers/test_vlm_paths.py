"""Vision-language: the over-long policy (image tokens never cut) and the base + LoRA demo path
on the `shift` digits, driven through the CLI with the shipped configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from omnitune.modalities.vision_language.sample_data import write_digit_vqa
from omnitune.trainers.config import RunConfig
from tests.conftest import run_cli


def _with_long_question(folder):
    data = write_digit_vqa(folder, 0, 4)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows.append({**rows[0], "question": "Which digit is this? " * 60})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def test_an_overlong_sample_is_dropped_and_counted_or_fails_naming_it(tiny_model, tmp_path):
    from transformers import AutoProcessor

    from omnitune.modalities.vision_language.data import read_vlm_dataset

    data = _with_long_question(tmp_path / "digits")
    processor = AutoProcessor.from_pretrained(tiny_model("llava"))

    def read(**data_section):
        config = RunConfig.model_validate(
            {
                "model": {"name_or_path": "unused", "modality": "vision_language"},
                "data": {"train": str(data), **data_section},
                "train": {"max_steps": 1},
            }
        )
        return read_vlm_dataset(str(data), config, processor, training=True)

    everything = read(max_length=4096)
    assert len(everything) == 5
    short, long = min(everything.lengths), max(everything.lengths)
    assert long > 4 * short  # the long question, image tokens included in both

    kept = read(max_length=int(short) + 10)
    assert len(kept) == 4
    assert kept.skipped == {f"longer than data.max_length ({int(short) + 10} tokens)": 1}

    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(tiny_model("llava")), "modality": "vision_language"},
                "data": {
                    "train": str(data),
                    "max_length": int(short) + 10,
                    "options": {"overlong": "fail"},
                },
                "train": {"max_steps": 1},
                "output_dir": str(tmp_path / "run"),
            }
        )
    )
    failed = run_cli("train", str(config))
    assert failed.returncode == 1
    assert f"{data}:5: {int(long)} tokens with its image tokens, over data.max_length" in (
        failed.stderr
    )
    bad = run_cli("config", "check", str(config), "data.options.overlong=cut")
    assert bad.returncode == 2
    assert "data.options.overlong: Input should be 'drop' or 'fail'" in bad.stderr


def test_hf_image_columns_and_file_urls_are_read(tiny_model, tmp_path):
    import io

    from datasets import Dataset, Image
    from PIL import Image as PILImage
    from transformers import AutoProcessor

    from omnitune.core.errors import DataError
    from omnitune.modalities.vision_language.data import read_vlm_dataset

    processor = AutoProcessor.from_pretrained(tiny_model("llava"))
    digits = write_digit_vqa(tmp_path / "digits", 0, 2)
    rows = [json.loads(line) for line in digits.read_text().splitlines()]

    def read(source):
        config = RunConfig.model_validate(
            {
                "model": {"name_or_path": "unused", "modality": "vision_language"},
                "data": {"train": str(source)},
                "train": {"max_steps": 1},
            }
        )
        return read_vlm_dataset(str(source), config, processor, training=True)

    def png_bytes(name):
        buffer = io.BytesIO()
        PILImage.open(tmp_path / "digits" / name).save(buffer, format="PNG")
        return buffer.getvalue()

    # An Image column holding bytes, with question/answer columns.
    qa = Dataset.from_list(
        [{**r, "image": {"bytes": png_bytes(r["image"]), "path": None}} for r in rows]
    ).cast_column("image", Image(decode=False))
    qa.save_to_disk(str(tmp_path / "hf-qa"))
    examples = read(tmp_path / "hf-qa")
    assert [e["answer"] for e in examples.items] == [r["answer"] for r in rows]
    assert all(Path(e["images"][0]).is_file() for e in examples.items)

    # HF chat style: an `images` list column and bare {"type": "image"} parts.
    chat = Dataset.from_list(
        [
            {
                "images": [{"bytes": png_bytes(r["image"]), "path": None}],
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": r["answer"]}]},
                ],
            }
            for r in rows
        ]
    ).cast_column("images", [Image(decode=False)])
    chat.save_to_disk(str(tmp_path / "hf-chat"))
    assert [e["answer"] for e in read(tmp_path / "hf-chat").items] == [r["answer"] for r in rows]

    # file:// URLs are local paths; other URLs are refused (nothing is fetched at run time).
    urls = tmp_path / "urls.jsonl"
    image = (tmp_path / "digits" / rows[0]["image"]).as_uri()
    urls.write_text(json.dumps({**rows[0], "image": image}) + "\n")
    assert len(read(urls)) == 1
    urls.write_text(json.dumps({**rows[0], "image": "https://example.org/a.png"}) + "\n")
    with pytest.raises(DataError, match="only local paths and file:// URLs are read"):
        read(urls)
