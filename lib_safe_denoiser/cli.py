"""Command line: ``python -m lib_safe_denoiser <command> ...``.

Commands are argparse sub-parsers; each leaf sets ``handler`` (``args -> exit code``). Errors the
user can fix (``SafeDenoiserError``, file-system errors) print one line to stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lib_safe_denoiser.banks.store import BankStore, find_images
from lib_safe_denoiser.errors import SafeDenoiserError

DATA_DIR_ENV = "SD_WEBUI_DATA_DIR"
STORE_SUBDIR = "safe_denoiser"

_DATA_DIR_HELP = (
    f"WebUI data directory (default: ${DATA_DIR_ENV}, else the WebUI this extension is installed in, "
    f"else the current directory); banks live in <data-dir>/{STORE_SUBDIR}"
)


def default_data_dir(environ: dict[str, str] | None = None, package_dir: Path | None = None) -> Path:
    """Where the WebUI keeps its data, guessed the way a user would.

    ``$SD_WEBUI_DATA_DIR`` wins; otherwise, if this package sits in ``<dir>/extensions/<ext>/``,
    ``<dir>`` is the WebUI root (it holds ``webui.py``) or the ``--data-dir`` the WebUI was run with
    (which is where it puts ``extensions/``); otherwise the current directory.
    """
    env = os.environ if environ is None else environ
    if env.get(DATA_DIR_ENV):
        return Path(env[DATA_DIR_ENV])
    ext_dir = (package_dir or Path(__file__).resolve().parent).parent
    candidate = ext_dir.parent.parent
    if (candidate / "webui.py").is_file() or ext_dir.parent.name == "extensions":
        return candidate
    return Path.cwd()


def store_for(args: argparse.Namespace) -> BankStore:
    data_dir = Path(args.data_dir) if getattr(args, "data_dir", None) else default_data_dir()
    return BankStore(data_dir / STORE_SUBDIR)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lib_safe_denoiser",
        description="Safe denoiser tools: manage negation banks (and run the standalone demo).",
    )
    parser.add_argument("--data-dir", default=None, help=_DATA_DIR_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_bank_commands(commands)
    _add_demo_command(commands)
    # More command groups go here, each a function like _add_bank_commands(commands) whose leaf
    # parsers set_defaults(handler=...) returning an exit code.
    return parser


def _add_bank_commands(commands: argparse._SubParsersAction) -> None:
    # --data-dir after the sub-command too; SUPPRESS keeps a top-level value when it is not repeated.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=argparse.SUPPRESS, help=_DATA_DIR_HELP)

    bank = commands.add_parser("bank", help="manage negation banks")
    sub = bank.add_subparsers(dest="bank_command", metavar="ACTION", required=True)

    add = sub.add_parser("add", parents=[common], help="create a bank from the images in a folder")
    add.add_argument("name", help="bank name: letters, digits, space, _ - . (at most 64)")
    add.add_argument("folder", help="folder of png/jpg/jpeg/webp/bmp images")
    add.add_argument("--description", default="", help="free text shown in the UI")
    add.add_argument("--recursive", action="store_true", help="include sub-folders")
    mode = add.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace a bank of the same name")
    mode.add_argument("--append", action="store_true", help="add the images to an existing bank")
    add.set_defaults(handler=_bank_add)

    lst = sub.add_parser("list", parents=[common], help="list banks")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(handler=_bank_list)

    show = sub.add_parser("show", parents=[common], help="show one bank, its images and cached latents")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_bank_show)

    delete = sub.add_parser("delete", parents=[common], help="delete a bank (shared images are kept)")
    delete.add_argument("name")
    delete.set_defaults(handler=_bank_delete)

    gc = sub.add_parser("gc", parents=[common], help="free disk space no bank uses any more")
    gc.add_argument(
        "--grace",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="keep unreferenced images younger than this: a running WebUI may be saving them (default 600)",
    )
    gc.set_defaults(handler=_bank_gc)


def _bank_add(args: argparse.Namespace) -> int:
    store = store_for(args)
    if args.append:
        folder = Path(args.folder)
        files = find_images(folder, recursive=args.recursive)
        before = store.get(args.name).n_images
        info = store.add_images(args.name, [(f.relative_to(folder).as_posix(), f) for f in files])
        added = info.n_images - before
        print(f"bank {info.name!r}: added {added} images, now {info.n_images} (hash {info.short_hash})")
        return 0
    info = store.add_folder(
        args.name,
        args.folder,
        recursive=args.recursive,
        overwrite=args.overwrite,
        description=args.description,
    )
    print(f"bank {info.name!r}: {info.n_images} images (hash {info.short_hash}) in {store.root}")
    return 0


def _bank_list(args: argparse.Namespace) -> int:
    store = store_for(args)
    infos = store.list()
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=1))
        return 0
    if not infos:
        print(f"no banks in {store.root}")
        return 0
    width = max(len(i.name) for i in infos)
    for i in infos:
        line = f"{i.name:<{width}}  {i.n_images:>6} images  {i.short_hash}  {i.created}"
        print(f"{line}  {i.description.splitlines()[0]}" if i.description else line)
    return 0


def _bank_show(args: argparse.Namespace) -> int:
    store = store_for(args)
    info = store.get(args.name)
    images = store.image_entries(args.name)
    cached = store.cached_sizes(args.name)
    if args.json:
        data = {
            **info.as_dict(),
            "images": images,
            "cached_latents": [{"vae_id": v, "latent_hw": list(hw)} for v, hw in cached],
        }
        print(json.dumps(data, indent=1))
        return 0
    print(f"name:         {info.name}")
    print(f"images:       {info.n_images}")
    print(f"content hash: {info.content_hash}")
    print(f"created:      {info.created}")
    print(f"updated:      {info.updated}")
    if info.description:
        print(f"description:  {info.description}")
    print("cached latents:" + ("" if cached else " none (encoded on first use)"))
    for vae_id, (h, w) in cached:
        print(f"  {vae_id}  {h}x{w}")
    print("image list:")
    for n, e in enumerate(images, 1):
        print(f"  {n:>4}. {e['sha256'][:10]}  {e['source_name']}")
    return 0


def _bank_delete(args: argparse.Namespace) -> int:
    store = store_for(args)
    store.delete(args.name)
    print(f"bank {args.name!r} deleted")
    return 0


def _bank_gc(args: argparse.Namespace) -> int:
    removed = store_for(args).gc(grace_s=max(0.0, args.grace))
    print(f"removed {removed} unused files or caches")
    return 0


def _add_demo_command(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="standalone demo: negate one digit on the bundled 8x8 digits model (no WebUI)",
        description="Sample the bundled digits model with and without the safe denoiser from the same noise, "
        "negating one digit; writes <out>/grid.png and <out>/metrics.json.",
    )
    demo.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    demo.add_argument("--digit", type=int, default=7, choices=range(10), metavar="0..9",
                      help="the digit to negate (default: 7)")
    demo.add_argument("--samples", type=_positive_int, default=10000, help="samples per run (default: 10000)")
    demo.add_argument("--mode", choices=("odds", "paper", "constant"), default="odds",
                      help="how beta is estimated (default: odds); the settings are the demo's per-mode ones")
    demo.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    demo.add_argument("--steps", type=_positive_int, default=32, help="Euler steps (default: 32)")
    demo.add_argument("--bank-size", type=_positive_int, default=60,
                      help="images of the digit in the negation set (default: 60)")
    demo.add_argument("--bank-source", choices=("train", "heldout"), default="train",
                      help="draw the negation set from the training images or the held-out ones (default: train)")
    demo.add_argument("--threads", type=_positive_int, default=None,
                      help="torch CPU threads (default: torch's choice)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(handler=_demo)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _demo(args: argparse.Namespace) -> int:
    import torch  # the demo's imports (torch, sklearn) stay out of the bank commands

    from lib_safe_denoiser.demo.run import DemoOptions, run_demo, summary

    if args.threads:
        torch.set_num_threads(args.threads)
    opts = DemoOptions(out=args.out, digit=args.digit, samples=args.samples, mode=args.mode, seed=args.seed,
                       steps=args.steps, bank_size=args.bank_size, bank_source=args.bank_source,
                       progress=not args.no_progress)
    try:
        metrics = run_demo(opts)
    except ValueError as e:  # e.g. a bank larger than the images of the digit
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(metrics, args.out))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except SafeDenoiserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
