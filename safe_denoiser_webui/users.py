"""The WebUI's users as the extension sees them: its auth flags, our operators setting and the
upload limits from the settings (the rules themselves are in ``lib_safe_denoiser.policy.users``)."""

from __future__ import annotations

from modules import shared

from lib_safe_denoiser.banks.inputs import MIB, InputLimits
from lib_safe_denoiser.policy.users import User, make_user
from safe_denoiser_webui.options import (
    FOLDER_IMPORT_CHOICES,
    OPT_FOLDER_IMPORT,
    OPT_OPERATORS,
    OPT_UPLOAD_MAX_FILES,
    OPT_UPLOAD_MAX_MB,
    option,
)


def api_auth() -> str | None:
    """``--api-auth`` ("user:pass,user2:pass2"), or None."""
    return shared.cmd_opts.api_auth or None


def ui_users_configured() -> bool:
    """Whether the UI has logins (``--gradio-auth`` or ``--gradio-auth-path``)."""
    return bool(shared.cmd_opts.gradio_auth or shared.cmd_opts.gradio_auth_path)


def auth_enabled() -> bool:
    """Whether this WebUI has users at all; without any, everyone is the local user and an operator."""
    return bool(api_auth()) or ui_users_configured()


def current_user(name: str | None) -> User:
    """The user behind a UI event (``gr.Request.username``) or an authenticated API call."""
    return make_user(name, option(OPT_OPERATORS), auth_enabled())


def folder_import_enabled() -> bool:
    """Whether operators may make banks from folders on the server (the setting's first choice)."""
    return option(OPT_FOLDER_IMPORT) == FOLDER_IMPORT_CHOICES[0]


def upload_limits() -> InputLimits:
    """What one upload may hold, from the settings (one file is never allowed more than all together)."""
    total = max(1, int(option(OPT_UPLOAD_MAX_MB))) * MIB
    return InputLimits(max_files=max(1, int(option(OPT_UPLOAD_MAX_FILES))),
                       max_file_bytes=min(InputLimits.max_file_bytes, total), max_total_bytes=total)
