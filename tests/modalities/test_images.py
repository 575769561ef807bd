"""Every image file Pillow can open reaches the model as the picture a viewer shows, and bad
files are skipped with their reason, never a traceback (issue 18, media inputs).

Each case writes a file from a known 8-bit picture and states the 8-bit RGB rendering a viewer
shows of it; `open_image` must return that rendering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omnitune.modalities.vision_language.images import ImageProblem, open_image

HEIGHT, WIDTH = 24, 32
GRAY = np.tile(np.linspace(0, 255, WIDTH).round().astype(np.uint8), (HEIGHT, 1))
RGB = np.stack([GRAY, GRAY[::-1], np.full_like(GRAY, 90)], axis=-1)
HALF = np.where(np.arange(WIDTH) < WIDTH // 2, 0, 255).astype(np.uint8)[None, :].repeat(HEIGHT, 0)


def on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float64) / 255
    return np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8)


def as_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def write_case(name: str, folder: Path) -> tuple[Path, np.ndarray, int]:
    """(file, the viewer's 8-bit RGB rendering, tolerance in grey levels) for one case."""
    path = folder / name
    if name == "1.png":
        bits = GRAY > 127
        Image.fromarray(bits).convert("1").save(path)
        return path, as_rgb(np.where(bits, 255, 0).astype(np.uint8)), 0
    if name == "L.png":
        Image.fromarray(GRAY, "L").save(path)
        return path, as_rgb(GRAY), 0
    if name == "LA.png":
        Image.fromarray(np.stack([GRAY, HALF], -1), "LA").save(path)
        return path, on_white(as_rgb(GRAY), HALF), 1
    if name == "P.png":
        palette = Image.fromarray(RGB, "RGB").quantize(16)
        palette.save(path)
        return path, np.asarray(palette.convert("RGB")), 0
    if name == "P-transparent.png":
        palette = Image.fromarray(RGB, "RGB").quantize(16)
        index = np.asarray(palette)
        clear = int(index[0, 0])
        palette.save(path, transparency=clear)
        shown = np.asarray(palette.convert("RGB")).copy()
        shown[index == clear] = 255
        return path, shown, 0
    if name == "RGB.png":
        Image.fromarray(RGB, "RGB").save(path)
        return path, RGB, 0
    if name == "RGBA.png":
        Image.fromarray(np.concatenate([RGB, HALF[..., None]], -1), "RGBA").save(path)
        return path, on_white(RGB, HALF), 1
    if name == "CMYK.jpg":
        Image.fromarray(RGB, "RGB").convert("CMYK").save(path, quality=100)
        return path, RGB, 12
    if name == "YCbCr.jpg":
        Image.fromarray(RGB, "RGB").convert("YCbCr").save(path, quality=100)
        return path, RGB, 12
    if name == "I16.png":
        Image.fromarray(GRAY.astype(np.uint16) * 257).save(path)
        return path, as_rgb(GRAY), 0
    if name == "I.tiff":
        Image.fromarray(GRAY.astype(np.int32) * 257, "I").save(path)
        return path, as_rgb(GRAY), 0
    if name == "F.tiff":
        Image.fromarray(GRAY.astype(np.float32) / 255, "F").save(path)
        return path, as_rgb(GRAY), 0
    if name == "exif-rotated.jpg":
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: the viewer turns it 90 degrees clockwise
        Image.fromarray(RGB, "RGB").save(path, exif=exif, quality=100)
        return path, np.rot90(RGB, k=-1), 12
    if name == "animated.gif":
        first = Image.fromarray(GRAY, "L").convert("P")
        second = Image.fromarray(255 - GRAY, "L").convert("P")
        first.save(path, save_all=True, append_images=[second], duration=100, loop=0)
        return path, np.asarray(first.convert("RGB")), 0
    raise AssertionError(name)


CASES = [
    "1.png",
    "L.png",
    "LA.png",
    "P.png",
    "P-transparent.png",
    "RGB.png",
    "RGBA.png",
    "CMYK.jpg",
    "YCbCr.jpg",
    "I16.png",
    "I.tiff",
    "F.tiff",
    "exif-rotated.jpg",
    "animated.gif",
]


@pytest.mark.parametrize("name", CASES)
def test_every_mode_is_read_as_the_picture_a_viewer_shows(name, tmp_path):
    path, expected, tolerance = write_case(name, tmp_path)
    shown = np.asarray(open_image(path))
    assert shown.dtype == np.uint8 and shown.shape == expected.shape
    difference = np.abs(shown.astype(int) - expected.astype(int))
    assert difference.max() <= tolerance, (name, float(difference.mean()))


def test_bad_files_are_refused_with_their_reason(tmp_path):
    Image.fromarray(RGB, "RGB").save(tmp_path / "whole.png")
    whole = (tmp_path / "whole.png").read_bytes()
    files = {
        "empty.png": b"",
        "text.png": b"this is not an image\n",
        "truncated.png": whole[: len(whole) // 2],
    }
    reasons = {}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageProblem) as caught:
            open_image(tmp_path / name)
        reasons[name] = caught.value.reason
    assert reasons == {
        "empty.png": "unreadable image",
        "text.png": "unreadable image",
        "truncated.png": "truncated image",
    }


def test_a_file_declaring_more_pixels_than_the_cap_is_refused_before_decoding(tmp_path):
    path = tmp_path / "large.png"
    Image.new("L", (4000, 3000)).save(path)  # 12 million pixels declared
    with pytest.raises(ImageProblem) as caught:
        open_image(path, max_decode_pixels=10_000_000)
    assert caught.value.reason == "image over the pixel cap"
    assert open_image(path, max_pixels=4_000, max_decode_pixels=20_000_000).size == (73, 54)


@pytest.mark.slow
@pytest.mark.reliability
def test_eval_skips_and_counts_bad_images_and_names_the_line_of_a_missing_one(tiny_model, tmp_path):
    """`omnitune eval` of a VLM over a manifest holding every kind of bad image file: each is
    counted under its reason and the good rows are scored; a missing file names its line."""
    import json

    from omnitune.modalities.vision_language.sample_data import write_digit_vqa
    from tests import reliability
    from tests.conftest import run_cli

    manifest = write_digit_vqa(tmp_path / "data", 0, 4)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    Image.fromarray(RGB, "RGB").save(tmp_path / "data" / "whole.png")
    whole = (tmp_path / "data" / "whole.png").read_bytes()
    bad = {
        "empty.png": (b"", "unreadable image"),
        "text.png": (b"this is not an image\n", "unreadable image"),
        "audio.jpg": (b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(100), "unreadable image"),
        "truncated.png": (whole[: len(whole) // 2], "truncated image"),
    }
    for name, (content, _) in bad.items():
        (tmp_path / "data" / name).write_bytes(content)
    Image.new("L", (4000, 3000)).save(tmp_path / "data" / "huge.png")
    reasons = {name: reason for name, (_, reason) in bad.items()}
    reasons["huge.png"] = "image over the pixel cap"
    lines = [json.dumps(row) for row in rows]
    lines += [json.dumps({**rows[0], "image": name}) for name in reasons]
    lines += ['{"image": "whole.png", "question": ']  # a cut row
    manifest.write_text("\n".join(lines) + "\n")
    command = ["eval", str(tiny_model("llava")), "--data", str(manifest)]
    limits = ["data.options.max_decode_pixels=10000000", "eval.generation.max_new_tokens=2"]
    result = run_cli(*command, *limits)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert f"{len(rows)} examples" in output, output[-2000:]
    for reason in set(reasons.values()):
        count = list(reasons.values()).count(reason)
        assert f"{count} {reason}" in output, (reason, output[-2000:])

    manifest.write_text(manifest.read_text() + json.dumps({**rows[0], "image": "gone.png"}) + "\n")
    missing = run_cli(*command, *limits)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert f"{manifest}:{len(lines) + 1}:" in missing.stderr and "gone.png" in missing.stderr
    reliability.record(
        "image-bad-files",
        "Unusable image files in a dataset",
        f"`omnitune eval` of a tiny LLaVA over a manifest of {len(rows)} good rows and these "
        "files (`data.options.max_decode_pixels: 10000000`): each is skipped and counted under "
        "its reason; a row naming a missing file stops it with exit 1 and `FILE:LINE`. The "
        "14 image modes and kinds that are read (1, L, LA, P with and without transparency, "
        "RGB, RGBA, CMYK, YCbCr, I;16, I, F, EXIF-rotated, animated) are checked against their "
        "8-bit RGB rendering by `test_every_mode_is_read_as_the_picture_a_viewer_shows`.",
        [{"file": name, "skipped as": reason} for name, reason in reasons.items()],
    )
