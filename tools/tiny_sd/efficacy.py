"""Measure the extension negating a digit through a live WebUI that has the tiny digits checkpoint loaded.

One *cell* is a generation setting (a row: sampler, scheduler, img2img, hires fix, ...) and a mode: the same
seeds are generated without the extension and with it, the decoded pictures are read as digits, and the cell
reports the negated digit's share both ways, the class-histogram TV of the other digits and the wall-time ratio.
The banks are made through the extension's REST routes from held-out digits (never seen in training), so the
WebUI's own VAE encodes them. Only the standard library talks HTTP: the report runs in any venv with torch.
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from lib_safe_denoiser.demo.data import load_split
from lib_safe_denoiser.demo.metrics import class_histogram, total_variation, without_class
from tools.tiny_sd.config import CHECKPOINT_NAME, GENERIC_PROMPT, IMAGE_SIZE
from tools.tiny_sd.digits64 import DigitReader, to_png, upscale

ROUTES = "/safe-denoiser/v1"
BANK_SIZE = 30
STEPS = 16
CFG_SCALE = 3.0
SEED = 100_000
FLOOR_SEED = 900_000
"""Where the noise-floor run's seeds start: far from SEED.., so its pictures are other draws of the same model."""
IMG2IMG_DENOISE = 0.75
HIRES_DENOISE = 0.6
CHUNK = 25
"""Images per request (``n_iter``): requests alternate plain / steered per chunk, so load drifts hit both."""
TIMEOUT_S = 1800

ODDS = {"mode": "odds", "preset": "custom", "strength": 20.0, "prior": 0.1, "window_start": 0.0, "window_end": 0.95}
"""beta0 20 over the whole timeline but the last 5%: the demo's beta0 5 in its sigma window (0.2..0.92 here) halved
the negated share only (docs/efficacy.md)."""
PAPER: dict[str, Any] = {"mode": "paper"}
"""The paper mode as a user gets it: the default preset's official SD numbers."""
MODES = {"odds": ODDS, "paper": PAPER}


class WebUIError(RuntimeError):
    """An HTTP error from the WebUI, with its detail."""


@dataclass
class Client:
    url: str
    auth: tuple[str, str] | None = None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[Any, float]:
        """(the JSON answer, seconds it took)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        if self.auth:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise WebUIError(f"{method} {path}: HTTP {exc.code} {exc.read()[:400]!r}") from exc
        return (json.loads(raw) if raw else None), time.perf_counter() - start

    def loaded_checkpoint(self) -> str:
        return str(self.call("GET", "/sdapi/v1/options")[0].get("sd_model_checkpoint", ""))

    def select_checkpoint(self, name: str = CHECKPOINT_NAME) -> str:
        """Load the checkpoint file ``name`` (the tiny digits one by default) if the WebUI lists it; its title, or a
        WebUIError saying what is missing."""
        loaded = self.loaded_checkpoint()
        if loaded.split(" ")[0] == name:
            return loaded
        self.call("POST", "/sdapi/v1/refresh-checkpoints")
        titles = [m["title"] for m in self.call("GET", "/sdapi/v1/sd-models")[0]]
        match = [t for t in titles if t.split(" ")[0] == name]
        if not match:
            raise WebUIError(f"the WebUI does not list {name} (has: {titles}); copy it and its .yaml "
                             "into models/Stable-diffusion/ (docs/efficacy.md)")
        self.call("POST", "/sdapi/v1/options", {"sd_model_checkpoint": match[0]})
        return match[0]


def pictures_b64(images: torch.Tensor) -> list[str]:
    return [base64.b64encode(to_png(img)).decode() for img in images]


@dataclass(frozen=True)
class Banks:
    negated: str
    reference: str
    digit: int
    inits: torch.Tensor
    """[M, 3, 64, 64] held-out images of the negated digit that are not in the bank: img2img starts from them."""


def make_banks(client: Client, digit: int, prefix: str = "efficacy", sizes: tuple[int, ...] = (IMAGE_SIZE,)) -> Banks:
    """The negation bank (held-out images of ``digit``) and the odds mode's reference bank (held-out images of the
    other digits, 3 or 4 of each), made fresh over REST and encoded at ``sizes``."""
    _, heldout = load_split()
    own = upscale(heldout.of_class(digit))
    others = [upscale(heldout.of_class(d)) for d in range(10) if d != digit]
    rounds = -(-BANK_SIZE // len(others))  # round robin over the other digits: 3 or 4 of each
    reference = torch.stack([imgs[i] for i in range(rounds) for imgs in others])[:BANK_SIZE]
    names = {"negated": f"{prefix}-digit-{digit}", "reference": f"{prefix}-not-{digit}"}
    for key, imgs in (("negated", own[:BANK_SIZE]), ("reference", reference)):
        try:
            client.call("DELETE", f"{ROUTES}/banks/{names[key]}")
        except WebUIError as exc:
            if "HTTP 404" not in str(exc):
                raise
        items = [{"name": f"{i:02d}.png", "data": d} for i, d in enumerate(pictures_b64(imgs))]
        client.call("POST", f"{ROUTES}/banks", {"name": names[key], "description": f"tiny digits: {key}",
                                                 "images": items})
        for size in sizes:
            client.call("POST", f"{ROUTES}/banks/{names[key]}/encode", {"width": size, "height": size})
    return Banks(names["negated"], names["reference"], digit, own[BANK_SIZE:])


def use_reference(client: Client, banks: Banks, name: str, sizes: tuple[int, ...] = (IMAGE_SIZE,)) -> Banks:
    """``banks`` with an existing bank as the odds mode's reference, encoded at ``sizes``."""
    for size in sizes:
        client.call("POST", f"{ROUTES}/banks/{name}/encode", {"width": size, "height": size})
    return replace(banks, reference=name)


@dataclass(frozen=True)
class Row:
    """One generation setting: the request fields beside prompt, seeds and size."""

    name: str
    endpoint: str = "txt2img"
    fields: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 1
    prompt: str = GENERIC_PROMPT
    init: bool = False
    mask: bool = False


def sampler_rows() -> list[Row]:
    """Every sampler the issue names with the default scheduler, and with Karras where the sampler uses sigmas."""
    rows = []
    for sampler in ("Euler a", "Euler", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "Heun", "DDIM", "PLMS", "UniPC"):
        rows.append(Row(f"{sampler}", fields={"sampler_name": sampler, "scheduler": "Automatic"}))
        if sampler not in ("DDIM", "PLMS", "UniPC"):  # timestep samplers: the WebUI ignores the scheduler
            rows.append(Row(f"{sampler} Karras", fields={"sampler_name": sampler, "scheduler": "Karras"}))
    return rows


def job_rows() -> list[Row]:
    base = {"sampler_name": "Euler a", "scheduler": "Automatic"}
    return [
        Row("img2img 0.75", "img2img", {**base, "denoising_strength": IMG2IMG_DENOISE}, init=True),
        Row("inpainting", "img2img", {**base, "denoising_strength": IMG2IMG_DENOISE, "inpainting_fill": 1,
                                      "mask_blur": 2, "inpaint_full_res": False}, init=True, mask=True),
        Row("hires fix x2", "txt2img", {**base, "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent",
                                        "hr_second_pass_steps": STEPS // 2, "denoising_strength": HIRES_DENOISE}),
        Row("batch size 4", fields=base, batch_size=4),
        Row("AND-prompt", fields=base, prompt=f"{GENERIC_PROMPT} AND {GENERIC_PROMPT}"),
    ]


def all_rows() -> dict[str, Row]:
    return {r.name: r for r in sampler_rows() + job_rows()}


def centre_mask() -> str:
    """The inpainting mask: the middle 48x48 (where the digit is) repainted, the border kept."""
    arr = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    arr[8:-8, 8:-8] = 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def requests_for(row: Row, n: int, inits: torch.Tensor | None = None, seed: int = SEED) -> list[dict[str, Any]]:
    """The requests that make ``n`` images for a row (seeds ``seed``.. ; img2img: one init image per chunk)."""
    base = {"prompt": row.prompt, "negative_prompt": "", "steps": STEPS, "cfg_scale": CFG_SCALE,
            "width": IMAGE_SIZE, "height": IMAGE_SIZE, "batch_size": row.batch_size, "do_not_save_grid": True,
            "save_images": False, "send_images": True, **row.fields}
    chunk = max(row.batch_size, CHUNK // row.batch_size * row.batch_size)
    if row.init:  # several init images, a few seeds each, so one picture cannot decide the row
        if inits is None or not len(inits):
            raise ValueError(f"row {row.name!r} starts from images: pass some")
        chunk = max(1, min(chunk, n // min(n, len(inits))))
    out, done = [], 0
    while done < n:
        size = min(chunk, n - done)
        req = {**base, "seed": seed + done, "n_iter": max(1, size // row.batch_size)}
        if row.init:
            req["init_images"] = pictures_b64(inits[len(out) % len(inits)].unsqueeze(0))
            if row.mask:
                req["mask"] = centre_mask()
        out.append(req)
        done += req["n_iter"] * row.batch_size
    return out


def steering(banks: Banks, mode: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The alwayson_scripts entry: the mode's settings, with ``overrides`` (e.g. another strength) on top."""
    args = {"enabled": True, "bank": banks.negated, **MODES[mode], **(overrides or {})}
    if mode == "odds":
        args["reference_bank"] = banks.reference
    return {"safe denoiser": {"args": [args]}}


@dataclass
class Cell:
    row: str
    mode: str
    n: int
    digit: int
    plain: np.ndarray
    steered: np.ndarray
    plain_s: float
    steered_s: float
    negated_steered: list[bytes] = field(default_factory=list)
    """The steered pictures read as the negated digit: look at what remains (``contact_sheet``)."""
    plain_labels: np.ndarray | None = None
    steered_labels: np.ndarray | None = None
    """Per picture, in seed order: the same index is the same seed plain and steered."""
    floor: np.ndarray | None = None
    """Class shares of a second plain run from other seeds (``FLOOR_SEED``..): how far two plain runs of N
    differ by chance."""

    @property
    def share_plain(self) -> float:
        return float(self.plain[self.digit])

    @property
    def share_steered(self) -> float:
        return float(self.steered[self.digit])

    @property
    def reduction(self) -> float:
        """Relative reduction of the negated share (1 = all gone); nan when the plain share is 0."""
        return 1.0 - self.share_steered / self.share_plain if self.share_plain > 0 else float("nan")

    @property
    def tv_others(self) -> float:
        """TV of the other digits' histograms (each renormalised without the negated digit)."""
        return total_variation(without_class(self.steered, self.digit), without_class(self.plain, self.digit))

    @property
    def others_changed(self) -> float:
        """Of the pictures that were not the negated digit plain, the share read as another digit steered: what
        the correction did to the rest, apart from where the removed pictures went."""
        if self.plain_labels is None or self.steered_labels is None:
            return float("nan")
        rest = self.plain_labels != self.digit
        return float((self.steered_labels[rest] != self.plain_labels[rest]).mean()) if rest.any() else float("nan")

    @property
    def tv_floor(self) -> float:
        """TV of the other digits between the plain run and the floor run: the chance level of ``tv_others``'s
        unpaired form at this N (nan without a floor run)."""
        if self.floor is None:
            return float("nan")
        return total_variation(without_class(self.floor, self.digit), without_class(self.plain, self.digit))

    @property
    def time_ratio(self) -> float:
        return self.steered_s / self.plain_s


def generate(client: Client, endpoint: str, req: dict[str, Any], expect: int) -> tuple[list[bytes], float]:
    answer, seconds = client.call("POST", f"/sdapi/v1/{endpoint}", req)
    images = [base64.b64decode(b) for b in answer["images"]]
    if len(images) != expect:
        raise WebUIError(f"{endpoint}: expected {expect} images, got {len(images)}")
    return images, seconds


def run_cell(client: Client, reader: DigitReader, banks: Banks, row: Row, mode: str, n: int,
             overrides: dict[str, Any] | None = None, floor: bool = False) -> Cell:
    """The same requests without and with the correction, alternating; the pictures read as digits. ``floor``
    adds a plain run from other seeds (``Cell.tv_floor``)."""
    plain: list[bytes] = []
    steered: list[bytes] = []
    times = [0.0, 0.0]
    steer = {"alwayson_scripts": steering(banks, mode, overrides)}
    for req in requests_for(row, n, banks.inits):
        expect = req["n_iter"] * row.batch_size
        for k, (extra, sink) in enumerate((({}, plain), (steer, steered))):
            images, seconds = generate(client, row.endpoint, {**req, **extra}, expect)
            sink.extend(images)
            times[k] += seconds
    labels = [reader.read_pictures(imgs) for imgs in (plain, steered)]
    hist = [class_histogram(lab) for lab in labels]
    remaining = [pic for pic, label in zip(steered, labels[1].tolist(), strict=True) if label == banks.digit]
    other = plain_histogram(client, reader, row, n, banks.inits, FLOOR_SEED) if floor else None
    return Cell(row.name, mode, len(plain), banks.digit, hist[0], hist[1], times[0], times[1], remaining,
                labels[0].numpy(), labels[1].numpy(), other)


def plain_histogram(client: Client, reader: DigitReader, row: Row, n: int, inits: torch.Tensor | None = None,
                    seed: int = SEED) -> np.ndarray:
    """Class shares of ``n`` plain images of a row from seeds ``seed``..: what the checkpoint samples there."""
    pictures = [img for req in requests_for(row, n, inits, seed)
                for img in generate(client, row.endpoint, req, req["n_iter"] * row.batch_size)[0]]
    return class_histogram(reader.read_pictures(pictures))


def contact_sheet(pictures: list[bytes], size: int = 2 * IMAGE_SIZE) -> Image.Image:
    """The pictures side by side, each scaled to ``size``: one row, for the eye."""
    sheet = Image.new("RGB", (size * max(1, len(pictures)), size))
    for i, data in enumerate(pictures):
        sheet.paste(Image.open(io.BytesIO(data)).convert("RGB").resize((size, size)), (i * size, 0))
    return sheet

