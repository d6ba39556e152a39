"""Command line: ``python -m lib_safe_denoiser <command> ...``.

Commands are argparse sub-parsers; each leaf sets ``handler`` (``args -> exit code``). Errors the
user can fix (``SafeDenoiserError``, file-system errors) print one line to stderr and exit 2.
``bank add`` saves the good images of a folder and lists the files it skipped; it exits 1 if it
added nothing (every image was already there).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from lib_safe_denoiser.banks.archive import LATENT_MODES
from lib_safe_denoiser.banks.images import DEFAULT_RESIZE, RESIZE_POLICIES
from lib_safe_denoiser.banks.inputs import IMAGE_EXTENSIONS, find_images, validate_tags
from lib_safe_denoiser.banks.model_samples import GENERIC_PROMPTS, MODEL_SAMPLES_TAG, SampleRequest, make_reference
from lib_safe_denoiser.banks.store import GC_GRACE_S, AddReport, BankStore
from lib_safe_denoiser.banks.variations import VARIATIONS_TAG, VariationRequest, make_variations
from lib_safe_denoiser.banks.webui_http import Generation, WebUIHttp
from lib_safe_denoiser.errors import BankError, SafeDenoiserError

DATA_DIR_ENV = "SD_WEBUI_DATA_DIR"
STORE_SUBDIR = "safe_denoiser"
MIN_HASH_PREFIX = 6
MIB = 1 << 20

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

    add = sub.add_parser("add", parents=[common], help="create a bank from the images in a folder (or append)",
                         description="Bad files are skipped and listed; the exit code is 0 if any image was added, "
                         "1 if none was (all duplicates), 2 on an error.")
    add.add_argument("name", help="bank name: letters, digits, space, _ - . (at most 64)")
    add.add_argument("folder", help="folder of images (" + "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS) + ")")
    add.add_argument("--description", default="", help="free text shown in the UI")
    add.add_argument("--tags", default="", help="comma-separated labels, e.g. 'nsfw,v2'")
    add.add_argument("--resize", choices=RESIZE_POLICIES, default=DEFAULT_RESIZE,
                     help=f"how images are fitted to a generation's aspect ratio (default: {DEFAULT_RESIZE})")
    add.add_argument("--owner", default=None, help="the WebUI user who owns the bank (default: shared)")
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

    update = sub.add_parser("update", parents=[common], help="change a bank's description, tags or resize policy")
    update.add_argument("name")
    update.add_argument("--description", default=None)
    update.add_argument("--tags", default=None, help="comma-separated labels (replaces the current ones)")
    update.add_argument("--resize", choices=RESIZE_POLICIES, default=None)
    update.set_defaults(handler=_bank_update)

    remove = sub.add_parser("remove", parents=[common], help="remove images from a bank (by hash, as 'show' lists)")
    remove.add_argument("name")
    remove.add_argument("hashes", nargs="+", metavar="HASH",
                        help=f"an image's sha256, or a unique prefix of at least {MIN_HASH_PREFIX} characters")
    remove.set_defaults(handler=_bank_remove)

    rename = sub.add_parser("rename", parents=[common], help="rename a bank (its cached latents stay valid)")
    rename.add_argument("name")
    rename.add_argument("new_name")
    rename.set_defaults(handler=_bank_rename)

    delete = sub.add_parser("delete", parents=[common], help="delete a bank (shared images are kept)")
    delete.add_argument("name")
    delete.set_defaults(handler=_bank_delete)

    export = sub.add_parser("export", parents=[common], help="write a bank to one .zip file")
    export.add_argument("name")
    export.add_argument("dest", nargs="?", default=".", help="the .zip file, or a folder for <name>.zip (default: .)")
    export.add_argument("--latents", choices=LATENT_MODES, default="include",
                        help="none: images only; include: images and cached latents (default); "
                        "only: cached latents without the images")
    export.set_defaults(handler=_bank_export)

    imp = sub.add_parser("import", parents=[common], help="add a bank from a .zip file made by 'export'")
    imp.add_argument("archive")
    imp.add_argument("--name", default=None, help="save it under this name (default: its own)")
    imp.add_argument("--owner", default=None, help="the WebUI user who owns it (default: shared)")
    imp.add_argument("--overwrite", action="store_true", help="replace a bank of the same name")
    imp.set_defaults(handler=_bank_import)

    sample = sub.add_parser(
        "sample", help="make a reference bank of the model's own samples through a running WebUI (odds mode)",
        description="Asks the WebUI's /sdapi/v1/txt2img for samples of generic prompts and stores them as a new "
        f"bank tagged '{MODEL_SAMPLES_TAG}' through its /safe-denoiser/v1 routes. Use it as the odds mode's "
        "reference bank: a job removes from it the samples that resemble its negation banks.")
    sample.add_argument("name", help="name of the new bank")
    sample.add_argument("--count", type=_positive_int, default=SampleRequest.count,
                        help=f"samples to make (default: {SampleRequest.count})")
    sample.add_argument("--prompt", action="append", dest="prompts", metavar="TEXT",
                        help="a prompt, taken in turn per batch (repeatable; default: a few generic ones)")
    sample.add_argument("--batch-size", type=_positive_int, default=SampleRequest.batch_size)
    _generation_arguments(sample)
    sample.set_defaults(handler=_bank_sample)

    vary = sub.add_parser(
        "vary", help="make a bank of model-made variations of a bank's images through a running WebUI",
        description="Asks the WebUI's /sdapi/v1/img2img for variations of every image of SOURCE and stores them as "
        f"the new bank NAME, tagged '{VARIATIONS_TAG}'. Select it beside SOURCE: a small bank then stands for more "
        "of its concept than its own images.")
    vary.add_argument("source", help="the bank whose images are varied")
    vary.add_argument("name", help="name of the new bank")
    vary.add_argument("--per-image", type=_positive_int, default=VariationRequest.per_image,
                      help=f"variations of each image (default: {VariationRequest.per_image})")
    vary.add_argument("--denoising", type=float, default=VariationRequest.denoising,
                      help=f"img2img denoising strength: how far a variation may go (default: "
                      f"{VariationRequest.denoising})")
    vary.add_argument("--prompt", default="", help="what the images show, so the variations stay in it")
    _generation_arguments(vary)
    vary.set_defaults(handler=_bank_vary)

    gc = sub.add_parser("gc", parents=[common], help="free disk space no bank uses any more")
    gc.add_argument(
        "--grace",
        type=float,
        default=GC_GRACE_S,
        metavar="SECONDS",
        help=f"keep unreferenced files younger than this: a running WebUI may be saving them (default {GC_GRACE_S:g})",
    )
    gc.set_defaults(handler=_bank_gc)


def _print_report(report: AddReport) -> int:
    """The summary, then every skipped file and near-duplicate on its own line; exit 1 if nothing was added."""
    print(report.summary())
    for s in report.skipped:
        print(f"  skipped {s.name}: {s.reason}")
    for new, old in report.near_duplicates:
        print(f"  near-duplicate {new} ~ {old}")
    i = report.info
    print(f"bank {i.name!r}: {i.n_images} images (hash {i.short_hash})")
    return 0 if report.added else 1


def _bank_add(args: argparse.Namespace) -> int:
    store = store_for(args)
    if args.append:
        folder = Path(args.folder)
        files, not_images = find_images(folder, recursive=args.recursive)
        report = store.add_images(args.name, [(f.relative_to(folder).as_posix(), f) for f in files])
        return _print_report(dataclasses.replace(report, skipped=(*not_images, *report.skipped)))
    report = store.add_folder(
        args.name,
        args.folder,
        recursive=args.recursive,
        overwrite=args.overwrite,
        description=args.description,
        owner=args.owner,
        tags=validate_tags(args.tags),
        resize=args.resize,
    )
    return _print_report(report)


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
        flags = [f"owner {i.owner}" if i.owner else "shared", i.resize]
        if not i.has_images:
            flags.append("latents only")
        if i.tags:
            flags.append("tags " + ",".join(i.tags))
        line = f"{i.name:<{width}}  {i.n_images:>6} images  {i.short_hash}  {i.created}  [{'; '.join(flags)}]"
        print(f"{line}  {i.description.splitlines()[0]}" if i.description else line)
    return 0


def _bank_show(args: argparse.Namespace) -> int:
    store = store_for(args)
    info = store.get(args.name)
    images = store.image_entries(args.name)
    cached = store.cache_status(args.name)
    if args.json:
        data = {**info.as_dict(), "images": images, "cached_latents": [c.as_dict() for c in cached]}
        print(json.dumps(data, indent=1))
        return 0
    print(f"name:         {info.name}")
    print(f"images:       {info.n_images}" + ("" if info.has_images else " (latents only: no image files)"))
    print(f"content hash: {info.content_hash}")
    print(f"owner:        {info.owner or '(shared)'}")
    print(f"tags:         {', '.join(info.tags) or '(none)'}")
    print(f"resize:       {info.resize}")
    print(f"created:      {info.created}")
    print(f"updated:      {info.updated}")
    if info.description:
        print(f"description:  {info.description}")
    print("cached latents:" + ("" if cached else " none (encoded on first use)"))
    for c in cached:
        kind = "carried" if c.carried else f"last used {c.last_used}"
        print(f"  {c.vae_id}  {c.latent_hw[0]}x{c.latent_hw[1]}  {c.resize}  {c.bytes / MIB:.1f} MiB  {kind}")
    print("image list:")
    for n, e in enumerate(images, 1):
        print(f"  {n:>4}. {e['sha256'][:10]}  {e['source_name']}")
    return 0


def _bank_update(args: argparse.Namespace) -> int:
    tags = validate_tags(args.tags) if args.tags is not None else None
    info = store_for(args).update(args.name, description=args.description, tags=tags, resize=args.resize)
    print(f"bank {info.name!r} updated")
    return 0


def _bank_remove(args: argparse.Namespace) -> int:
    store = store_for(args)
    known = [e["sha256"] for e in store.image_entries(args.name)]
    info = store.remove_images(args.name, [_resolve_hash(h, known, args.name) for h in args.hashes])
    print(f"bank {info.name!r}: {info.n_images} images left (hash {info.short_hash})")
    return 0


def _generation_arguments(parser: argparse.ArgumentParser) -> None:
    """The WebUI, the login, the generation settings (``Generation``) and ``--shared`` of a command that makes a
    bank with the model through a running WebUI."""
    parser.add_argument("--url", default="http://127.0.0.1:7860", help="the WebUI (default: http://127.0.0.1:7860)")
    parser.add_argument("--login", default=os.environ.get("SD_WEBUI_LOGIN"),
                        help="user:password for --api-auth (default: $SD_WEBUI_LOGIN)")
    parser.add_argument("--negative-prompt", default=Generation.negative_prompt)
    parser.add_argument("--width", type=_positive_int, default=Generation.width)
    parser.add_argument("--height", type=_positive_int, default=Generation.height)
    parser.add_argument("--steps", type=_positive_int, default=Generation.steps)
    parser.add_argument("--sampler", default=Generation.sampler)
    parser.add_argument("--cfg-scale", type=float, default=Generation.cfg_scale)
    parser.add_argument("--seed", type=int, default=Generation.seed)
    parser.add_argument("--shared", action="store_true", help="share the bank with every user (operators only)")


def _generation(args: argparse.Namespace) -> dict:
    """The ``Generation`` fields from the options ``_generation_arguments`` added (same names)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(Generation)}


def _bank_sample(args: argparse.Namespace) -> int:
    request = SampleRequest(count=args.count, prompts=tuple(args.prompts or GENERIC_PROMPTS),
                            batch_size=args.batch_size, **_generation(args))
    with tqdm(total=request.count, desc=f"sampling {args.name}", unit="img") as bar:
        result = make_reference(WebUIHttp(args.url, args.login).post, args.name, request, shared=args.shared,
                                progress=lambda done, _total: bar.update(done - bar.n))
    return _made(result, "samples")


def _bank_vary(args: argparse.Namespace) -> int:
    request = VariationRequest(per_image=args.per_image, denoising=args.denoising, prompt=args.prompt,
                               **_generation(args))
    with tqdm(desc=f"varying {args.source} into {args.name}", unit="img") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = make_variations(WebUIHttp(args.url, args.login), args.source, args.name, request,
                                 shared=args.shared, progress=progress)
    return _made(result, "variations")


def _made(result: dict, unit: str) -> int:
    for line in result["skipped"]:
        print(f"skipped {line}")
    print(f"{result['bank']}: {result['images']} {unit} stored")
    return 0 if result["images"] else 1


def _resolve_hash(prefix: str, known: list[str], bank: str) -> str:
    """A full sha256 from a unique prefix, so hashes can be copied from ``bank show``."""
    prefix = prefix.strip().lower()
    if len(prefix) < MIN_HASH_PREFIX:
        raise BankError(f"hash {prefix!r} is too short; give at least {MIN_HASH_PREFIX} characters")
    matches = [k for k in known if k.startswith(prefix)]
    if not matches:
        raise BankError(f"bank {bank!r} has no image whose hash starts with {prefix!r}; nothing removed")
    if len(matches) > 1:
        raise BankError(f"hash prefix {prefix!r} matches {len(matches)} images of bank {bank!r}; give more characters")
    return matches[0]


def _bank_rename(args: argparse.Namespace) -> int:
    info = store_for(args).rename(args.name, args.new_name)
    print(f"bank {args.name!r} renamed to {info.name!r}")
    return 0


def _bank_delete(args: argparse.Namespace) -> int:
    store = store_for(args)
    store.delete(args.name)
    print(f"bank {args.name!r} deleted")
    return 0


def _bank_export(args: argparse.Namespace) -> int:
    path = store_for(args).export_bank(args.name, Path(args.dest), latents=args.latents)
    print(f"bank {args.name!r} exported to {path} ({path.stat().st_size / MIB:.1f} MiB)")
    return 0


def _bank_import(args: argparse.Namespace) -> int:
    info = store_for(args).import_bank(Path(args.archive), name=args.name, owner=args.owner, overwrite=args.overwrite)
    kind = "" if info.has_images else ", latents only"
    print(f"bank {info.name!r} imported: {info.n_images} images (hash {info.short_hash}{kind})")
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
