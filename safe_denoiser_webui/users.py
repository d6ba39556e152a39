"""The WebUI's users as the extension sees them: its auth flags, who the operators are and the
upload limits from the settings (the rules themselves are in ``lib_safe_denoiser.policy.users``).

Operators are named in one place an ordinary user cannot reach: the ``--safe-denoiser-operators``
flag (``preload.py``) set by whoever starts the WebUI, plus the ``operators`` of the policy file,
which only operators can change. Without any auth configured everyone is one local user and an operator.
"""

from __future__ import annotations

import logging

from modules import shared

from lib_safe_denoiser.banks.inputs import MIB, InputLimits
from lib_safe_denoiser.policy.operator_policy import OperatorPolicy, PolicyError
from lib_safe_denoiser.policy.users import User, make_user, parse_names
from safe_denoiser_webui.options import (
    FOLDER_IMPORT_CHOICES,
    OPT_FOLDER_IMPORT,
    OPT_UPLOAD_MAX_FILES,
    OPT_UPLOAD_MAX_MB,
    option,
)
from safe_denoiser_webui.services import POLICY_STORE

logger = logging.getLogger(__name__)


def api_auth() -> str | None:
    """``--api-auth`` ("user:pass,user2:pass2"), or None."""
    return shared.cmd_opts.api_auth or None


def ui_users_configured() -> bool:
    """Whether the UI has logins (``--gradio-auth`` or ``--gradio-auth-path``)."""
    return bool(shared.cmd_opts.gradio_auth or shared.cmd_opts.gradio_auth_path)


def auth_enabled() -> bool:
    """Whether this WebUI has users at all; without any, everyone is the local user and an operator."""
    return bool(api_auth()) or ui_users_configured()


def operator_names(policy: OperatorPolicy | None = None) -> str:
    """The operators, comma-separated: the command-line flag's, then the policy's (``policy``, else the
    one on disk now; an unreadable policy adds none: it cannot be trusted to name anyone)."""
    names = sorted(parse_names(getattr(shared.cmd_opts, "safe_denoiser_operators", None)))
    try:
        policy = policy if policy is not None else POLICY_STORE.load()
    except PolicyError as e:
        logger.error("safe denoiser: %s", e)
        return ",".join(names)
    return ",".join(names + [n for n in policy.operators if n not in names])


def current_user(name: str | None, policy: OperatorPolicy | None = None) -> User:
    """The user behind a UI event (``gr.Request.username``) or an authenticated API call; ``policy``
    spares a second read of the policy file when the caller already holds it."""
    return make_user(name, operator_names(policy), auth_enabled())


def folder_import_enabled() -> bool:
    """Whether operators may make banks from folders on the server (the setting's first choice)."""
    return option(OPT_FOLDER_IMPORT) == FOLDER_IMPORT_CHOICES[0]


def upload_limits() -> InputLimits:
    """What one upload may hold, from the settings (one file is never allowed more than all together)."""
    total = max(1, int(option(OPT_UPLOAD_MAX_MB))) * MIB
    return InputLimits(max_files=max(1, int(option(OPT_UPLOAD_MAX_FILES))),
                       max_file_bytes=min(InputLimits.max_file_bytes, total), max_total_bytes=total)
