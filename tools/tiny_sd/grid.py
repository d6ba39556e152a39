"""A picture of what the tiny digits checkpoint samples through a WebUI: one row per prompt, classifier labels.

    python -m tools.tiny_sd.grid --url http://127.0.0.1:7862 --out docs/tiny_digits_grid.png

Rows: "a handwritten digit 0" .. "9", then the generic prompt twice (seeds continue); each image is captioned with
what the digit reader reads. Prints the share of each digit prompt's images read as that digit.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lib_safe_denoiser.banks.files import atomic_write_bytes
from tools.tiny_sd.config import DIGIT_PROMPT, GENERIC_PROMPT, IMAGE_SIZE
from tools.tiny_sd.digits64 import DigitReader
from tools.tiny_sd.efficacy import Client, Row, generate, requests_for

CAPTION = 12
GENERIC_ROWS = 2


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:7860")
    ap.add_argument("--per-row", type=int, default=12)
    ap.add_argument("--out", type=Path, default=Path("docs/tiny_digits_grid.png"))
    args = ap.parse_args(argv)
    client = Client(args.url)
    print(f"checkpoint: {client.select_checkpoint()}")
    reader = DigitReader()
    prompts = [DIGIT_PROMPT.format(digit=d) for d in range(10)] + [GENERIC_PROMPT]
    rows: list[tuple[list[bytes], np.ndarray]] = []
    for k, prompt in enumerate(prompts):
        n = args.per_row * (GENERIC_ROWS if prompt == GENERIC_PROMPT else 1)
        row = Row(prompt, fields={"sampler_name": "Euler a"}, prompt=prompt)
        images = [img for req in requests_for(row, n) for img in generate(client, "txt2img", req, req["n_iter"])[0]]
        labels = reader.read_pictures(images).numpy()
        if k < 10:
            print(f"{prompt!r}: {np.mean(labels == k):.0%} read as {k}")
        else:
            print(f"{prompt!r}: digits read {np.bincount(labels, minlength=10).tolist()}")
        rows.extend((images[i:i + args.per_row], labels[i:i + args.per_row]) for i in range(0, n, args.per_row))
    cell = IMAGE_SIZE + CAPTION
    sheet = Image.new("RGB", (args.per_row * IMAGE_SIZE, len(rows) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (images, labels) in enumerate(rows):
        for c, (data, label) in enumerate(zip(images, labels, strict=True)):
            sheet.paste(Image.open(io.BytesIO(data)).convert("RGB"), (c * IMAGE_SIZE, r * cell))
            draw.text((c * IMAGE_SIZE + 2, r * cell + IMAGE_SIZE), f"read {label}", fill="black")
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
