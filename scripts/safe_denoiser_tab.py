"""WebUI glue: the "Safe Denoiser" tab for managing negation banks, and the "Safe Denoiser policy" tab.

The tabs themselves (``safe_denoiser_webui/bank_tab.py``, ``policy_panel.py``) know nothing of the
WebUI; this file hands them the WebUI's stores, its VAE encoder (``encode_now``, under the queue
lock, cancelled by the WebUI's Interrupt), the signed-in user of each request (``--gradio-auth``)
and the settings.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from modules import script_callbacks, shared

from safe_denoiser_webui import policy_panel as policy_tab
from safe_denoiser_webui import users
from safe_denoiser_webui.bank_tab import TAB_ID, TAB_TITLE, TabServices, build_tab
from safe_denoiser_webui.concepts import judge_for
from safe_denoiser_webui.encoding import encode_now
from safe_denoiser_webui.options import FOLDER_IMPORT_CHOICES, OPT_DEFAULT_RESIZE, OPT_FOLDER_IMPORT, option
from safe_denoiser_webui.services import POLICY_STORE, PRESET_STORE, STORE

EXPORT_DIR = Path(tempfile.gettempdir()) / "safe_denoiser_exports"
"""Exports wait here until downloaded (gradio serves a copy); old ones are pruned on the next export."""
FOLDER_IMPORT_ALLOWED = FOLDER_IMPORT_CHOICES[0]


def is_operator(user: str | None) -> bool:
    return users.current_user(user).operator


def services() -> TabServices:
    return TabServices(
        store=STORE,
        encode=encode_now,
        cancel=shared.state.interrupt,
        export_dir=EXPORT_DIR,
        is_operator=is_operator,
        limits=users.upload_limits,
        default_resize=lambda: option(OPT_DEFAULT_RESIZE),
        folder_import=lambda: option(OPT_FOLDER_IMPORT) == FOLDER_IMPORT_ALLOWED,
        clip_judge=lambda: judge_for(shared.sd_model),
    )


def policy_panel() -> policy_tab.PolicyPanel:
    return policy_tab.PolicyPanel(POLICY_STORE, PRESET_STORE, STORE,
                       user_of=lambda request: users.current_user(getattr(request, "username", None)))


def on_ui_tabs() -> list[tuple[Any, str, str]]:
    return [(build_tab(services()), TAB_TITLE, TAB_ID),
            (policy_panel().build(), policy_tab.TAB_TITLE, policy_tab.TAB_ID)]


script_callbacks.on_ui_tabs(on_ui_tabs)
