"""How omnitune's training cost grows with the work: the trainer core of `trainer_overhead`
(tiny Llama, LoRA on q/v, batch 16, one thread) on 1x, 2x and 4x the data or the sequence
length.

- dataset size: one epoch over 512, 1,024 or 2,048 digit-chat examples. Training samples/s
  should stay flat; the end-to-end seconds (loading, tokenizing, training, saving) should grow
  no faster than the data.
- sequence length: 60 steps on texts of 64, 128 or 256 tokens. Tokens/s shows what longer
  sequences cost beyond their length (attention is quadratic in it, the rest linear).

    python -m bench.training_scale --model DIR --data FILE --epochs 1
    python -m bench.training_scale --model DIR --data FILE --steps 60 --max-length 256

`write_texts` makes the sequence-length data: random vocabulary words, each text exactly as
many tokens long as asked once the text modality has tokenized it and appended EOS.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from bench.harness import peak_rss_mb
from bench.trainer_overhead import run_omnitune


def write_texts(model_dir: Path, path: Path, count: int, tokens: int, seed: int = 0) -> Path:
    """`count` JSONL rows {"text": ...} that the text modality turns into exactly `tokens`
    tokens each (special tokens and the EOS it appends included)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    words = sorted({tokenizer.convert_tokens_to_string([t]).strip() for t in tokenizer.get_vocab()})
    words = [w for w in words if w.isalpha() and len(w) > 2]
    specials = len(tokenizer("")["input_ids"])
    target = tokens - (tokenizer.eos_token_id is not None)
    rng = random.Random(seed)
    rows: list[str] = []
    while len(rows) < count:
        # Twice as many words as tokens is always enough; cut at the token boundary, keep the
        # text if it re-tokenizes to exactly `tokens` (a cut can merge with its neighbour).
        text = " ".join(rng.choice(words) for _ in range(2 * tokens))
        offsets = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        cut = offsets["offset_mapping"][target - specials - 1][1]
        if len(tokenizer(text[:cut])["input_ids"]) == target:
            rows.append(json.dumps({"text": text[:cut]}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--tokens-per-sample", type=float, help="for tokens/s")
    parser.add_argument("--out", default="bench/.cache/scale-run")
    args = parser.parse_args()
    figures = run_omnitune(
        args.model,
        args.data,
        args.steps,
        args.out,
        max_length=args.max_length,
        epochs=args.epochs,
    )
    if args.tokens_per_sample:
        figures["tokens_per_second"] = figures["samples_per_second"] * args.tokens_per_sample
    print(json.dumps({**figures, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
