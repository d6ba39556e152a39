"""A small gradio app that hosts the real "Safe Denoiser" tab with a stand-in encoder.

The tab is rendered into an outer Blocks inside a ``gr.TabItem``, as the WebUI renders the tabs
``on_ui_tabs`` returns. The stand-in "VAE" is a real, deterministic encoder (8x8 average pooling
and a fixed 3 -> 4 channel mix) that honours cancellation between batches, like ``encode_now``.
Run it by hand to look at the tab: ``python -m tests.browser.app --port 7899``.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import torch

from lib_safe_denoiser.banks.encode import LATENT_DOWNSCALE
from lib_safe_denoiser.banks.store import BankStore
from lib_safe_denoiser.errors import BankError
from safe_denoiser_webui.bank_tab import TAB_ID, TAB_TITLE, TabServices, build_tab

STAND_IN_VAE = "stand-in-vae"
STORE_DIR = "store"
"""The bank store's folder under ``--data``; exports go to ``exports`` beside it."""
LATENT_CHANNELS = 4
QUEUE_WORKERS = 4
WEBUI_CSS = """button.tool { max-width: 2.2em; min-width: 2.2em !important; height: 2.4em; align-self: end;
line-height: 1em; border-radius: 0.5em; }"""
"""The WebUI's rule for tool buttons (its style.css, there on ``.gradio-button.tool``), so the tab
looks here as it does there."""


@dataclass(frozen=True)
class StandInResult:
    bank: str
    vae_id: str
    latent_hw: tuple[int, int]
    n_images: int


class StandInEncoder:
    """``encode(bank, width, height, progress)`` over a store, cancelled by ``cancel()``.

    ``delay_s`` slows each batch so a test can press cancel while it runs.
    """

    def __init__(self, store: BankStore, *, batch_size: int = 2, delay_s: float = 0.0) -> None:
        self.store = store
        self.batch_size = batch_size
        self.delay_s = delay_s
        self.cancelled = threading.Event()
        mix = torch.Generator().manual_seed(7)
        self.weight = torch.randn(LATENT_CHANNELS, 3, 1, 1, generator=mix)
        self.calls = 0

    def vae(self, img01: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        pooled = torch.nn.functional.avg_pool2d(img01 * 2 - 1, LATENT_DOWNSCALE)
        return torch.nn.functional.conv2d(pooled, self.weight)

    def __call__(self, bank: str, width: int, height: int,
                 progress: Callable[[int, int], None] | None = None) -> StandInResult:
        if min(width, height) < LATENT_DOWNSCALE or width % LATENT_DOWNSCALE or height % LATENT_DOWNSCALE:
            raise BankError(f"width and height must be positive multiples of {LATENT_DOWNSCALE}, got {width}x{height}")
        self.cancelled.clear()
        hw = (height // LATENT_DOWNSCALE, width // LATENT_DOWNSCALE)
        latents = self.store.latents(bank, encoder=self.vae, vae_id=STAND_IN_VAE, latent_hw=hw,
                                     batch_size=self.batch_size, progress=progress, cancel=self.cancelled.is_set)
        return StandInResult(bank, STAND_IN_VAE, hw, int(latents.shape[0]))

    def cancel(self) -> None:
        self.cancelled.set()


def stand_in_services(store: BankStore, encoder: StandInEncoder, export_dir: Path, *,
                      operators: frozenset[str] = frozenset(), auth: bool = False,
                      folder_import: bool = True) -> TabServices:
    """The tab's services as the WebUI wires them, with users from ``operators`` (anonymous is an
    operator unless ``auth``)."""
    return TabServices(store=store, encode=encoder, cancel=encoder.cancel, export_dir=export_dir,
                       is_operator=lambda user: (user in operators) if auth else True,
                       folder_import=lambda: folder_import)


def host(services: TabServices) -> gr.Blocks:
    """An outer page with the tab inside a TabItem, as the WebUI lays out extension tabs."""
    tab = build_tab(services)
    with (gr.Blocks(title="Safe Denoiser tab", css=WEBUI_CSS, analytics_enabled=False) as demo, gr.Tabs(elem_id="tabs"),
          gr.TabItem(TAB_TITLE, id=TAB_ID, elem_id=f"tab_{TAB_ID}")):
        tab.render()
    try:
        demo.queue(concurrency_count=QUEUE_WORKERS)
    except TypeError:  # gradio 4 renamed it
        demo.queue(default_concurrency_limit=QUEUE_WORKERS)
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7899)
    parser.add_argument("--data", type=Path, default=None, help="data folder (default: a temporary one)")
    parser.add_argument("--encode-delay", type=float, default=0.0, help="seconds per batch of the stand-in VAE")
    args = parser.parse_args()
    root = args.data or Path(tempfile.mkdtemp(prefix="safe-denoiser-tab-"))
    store = BankStore(root / STORE_DIR)
    services = stand_in_services(store, StandInEncoder(store, batch_size=1, delay_s=args.encode_delay),
                                 root / "exports")
    host(services).launch(server_name="127.0.0.1", server_port=args.port, quiet=True, show_api=False)


if __name__ == "__main__":
    main()
