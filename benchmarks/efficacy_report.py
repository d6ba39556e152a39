"""Efficacy through a live WebUI: negate one digit on the tiny digits checkpoint, per sampler and per job kind.

Needs a WebUI (``--api``) with this extension and ``tiny-digits-sd15.safetensors`` + its yaml in
``models/Stable-diffusion/`` (``python -m tools.tiny_sd.train``; docs/efficacy.md). The script selects that
checkpoint, makes a negation bank of 30 held-out images of the digit and a reference bank of 30 held-out images
of the other digits over the extension's REST routes, then for every (row, mode) generates N images with the
generic prompt from the same seeds without and with the correction, reads them with the digit classifier and
prints: the negated share plain -> steered, its relative reduction, the TV of the other digits' histogram, the
share of the other pictures that changed digit, and the wall-time ratio steered / plain. ``--floor`` adds a plain
run from other seeds per cell: the TV two plain runs of N show by chance. Cells print as they finish; rows run in
the order given.

    python benchmarks/efficacy_report.py --url http://127.0.0.1:7862 [--digit 7] [--n 200]
        [--modes odds,paper] [--rows "Euler a,DPM++ 2M Karras,img2img 0.75"] [--auth user:password]
        [--checkpoint tiny-digits-sd15-v.safetensors] [--floor]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tools.tiny_sd.config import CHECKPOINT_NAME, V_CHECKPOINT_NAME  # noqa: E402
from tools.tiny_sd.digits64 import DigitReader  # noqa: E402
from tools.tiny_sd.efficacy import (  # noqa: E402
    MODES,
    Cell,
    Client,
    all_rows,
    contact_sheet,
    make_banks,
    run_cell,
    use_reference,
)

HEADER = f"{'row':<18} {'mode':<6} {'N':>4}  {'negated plain -> steered':>25}  {'reduction':>9}  {'TV others':>9}  " \
         f"{'TV floor':>8}  {'others changed':>14}  {'time x':>6}"


def line(cell: Cell) -> str:
    shares = f"{100 * cell.share_plain:6.2f}% -> {100 * cell.share_steered:6.2f}%"
    return (f"{cell.row:<18} {cell.mode:<6} {cell.n:>4}  {shares:>25}  {100 * cell.reduction:8.1f}%  "
            f"{cell.tv_others:9.4f}  {cell.tv_floor:8.4f}  {100 * cell.others_changed:13.1f}%  {cell.time_ratio:6.3f}")


def histograms(cell: Cell) -> str:
    """The class shares behind the cell's numbers, one digit per column."""
    runs = [("plain", cell.plain), ("steered", cell.steered)] + ([("floor", cell.floor)] if cell.floor is not None
                                                                  else [])
    return "\n".join(f"    {name:<8}" + " ".join(f"{d}:{100 * v:5.1f}%" for d, v in enumerate(hist))
                     for name, hist in runs)


def markdown(cells: list[Cell]) -> str:
    out = ["| row | mode | N | negated plain -> steered | reduction | TV others | TV floor | others changed | "
           "time steered / plain |", "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        out.append(f"| {c.row} | {c.mode} | {c.n} | {100 * c.share_plain:.2f}% -> {100 * c.share_steered:.2f}% | "
                   f"{100 * c.reduction:.1f}% | {c.tv_others:.4f} | {c.tv_floor:.4f} | {100 * c.others_changed:.1f}% | "
                   f"{c.time_ratio:.3f} |")
    return "\n".join(out)


def main() -> None:
    rows = all_rows()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("SD_WEBUI_URL", "http://127.0.0.1:7860"))
    ap.add_argument("--auth", default="", help="user:password for a WebUI run with --api-auth")
    ap.add_argument("--digit", type=int, default=7, choices=range(10))
    ap.add_argument("--n", type=int, default=200, help="images per cell, each plain and steered")
    ap.add_argument("--modes", default="odds,paper")
    ap.add_argument("--rows", default=",".join(rows), help="comma-separated row names, in the order to run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the classifier")
    ap.add_argument("--prefix", default="efficacy", help="bank name prefix (runs side by side need different ones)")
    ap.add_argument("--strength", type=float, help="override the modes' strength")
    ap.add_argument("--prior", type=float, help="override the odds mode's prior unsafe share z")
    ap.add_argument("--window", help="override the window: START,END (fractions of the timeline)")
    ap.add_argument("--preset", help="a built-in preset whose numbers fill the fields the mode leaves out")
    ap.add_argument("--reference", help="the odds mode's reference: an existing bank (e.g. one made by "
                    "`python -m lib_safe_denoiser bank sample`) instead of 30 held-out images of the other digits")
    ap.add_argument("--checkpoint", default=CHECKPOINT_NAME, help=f"the checkpoint file to load, e.g. "
                    f"{V_CHECKPOINT_NAME} (train --prediction v)")
    ap.add_argument("--floor", action="store_true", help="per cell, also a plain run from other seeds: the TV two "
                    "plain runs of N show by chance (costs one more plain run)")
    ap.add_argument("--sheets", type=Path, help="a folder: save per cell a picture of the steered images still "
                    "read as the digit")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    chosen = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [m for m in modes if m not in MODES] + [r for r in chosen if r not in rows]
    if unknown:
        sys.exit(f"unknown mode or row: {unknown}; rows: {list(rows)}; modes: {list(MODES)}")
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    client = Client(args.url, auth)  # type: ignore[arg-type]
    start = time.time()
    print(f"checkpoint: {client.select_checkpoint(args.checkpoint)}")
    sizes = (64, 128) if "hires fix x2" in chosen else (64,)
    banks = make_banks(client, args.digit, prefix=args.prefix, sizes=sizes)
    if args.reference:
        banks = use_reference(client, banks, args.reference, sizes)
    overrides: dict[str, object] = {} if args.strength is None else {"strength": args.strength}
    if args.preset:
        overrides["preset"] = args.preset
    if args.prior is not None:
        overrides["prior"] = args.prior
    if args.window:
        start_f, end_f = (float(v) for v in args.window.split(","))
        overrides.update(window_start=start_f, window_end=end_f, preset="custom")
    reader = DigitReader()
    print(f"settings: {', '.join(f'{m} {MODES[m]}' for m in modes)}; overrides {overrides or 'none'}")
    held_out = "30 held-out images of the other digits"
    print(f"negating digit {args.digit}: bank {banks.negated!r} (30 held-out images), reference {banks.reference!r} "
          f"({'given' if args.reference else held_out}); {args.n} images per cell, plain and steered, same seeds")
    print(HEADER, flush=True)
    cells = []
    for name in chosen:
        for mode in modes:
            cells.append(run_cell(client, reader, banks, rows[name], mode, args.n, overrides, floor=args.floor))
            print(line(cells[-1]), histograms(cells[-1]), sep="\n", flush=True)
            if args.sheets and cells[-1].negated_steered:
                args.sheets.mkdir(parents=True, exist_ok=True)
                slug = "".join(ch if ch.isalnum() else "-" for ch in f"{name}-{mode}").lower()
                contact_sheet(cells[-1].negated_steered).save(args.sheets / f"{slug}.png")
    print(f"\n{markdown(cells)}\n\n{len(cells)} cells in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
