"""Who the caller is and what they may do with banks.

The WebUI knows its users only as names in ``--api-auth`` / ``--gradio-auth`` ("user:pass,user2:pass2").
Without either, everyone is the one anonymous local user, who may do everything. With users, a bank is
either shared (no owner; everyone sees it, operators manage it) or private to the user who made it
(nobody else sees it, operators included may not change it). Operators are the user names given by the
--safe-denoiser-operators flag and the policy file. These rules are pure functions here so the REST
routes and the bank tab apply the same ones.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from secrets import compare_digest
from typing import Protocol

from lib_safe_denoiser.errors import SafeDenoiserError


class AccessError(SafeDenoiserError, PermissionError):
    """The caller may see this but not do that; the message says who may."""


class OwnedBank(Protocol):
    """What access decisions read from a bank (``BankInfo`` has both)."""

    name: str
    owner: str | None


@dataclass(frozen=True)
class User:
    """A caller: ``name`` None is the anonymous user (no credentials configured or none needed)."""

    name: str | None
    operator: bool

    @property
    def label(self) -> str:
        return repr(self.name) if self.name is not None else "the anonymous user"


def parse_auth(spec: str | None) -> dict[str, str]:
    """``"user:pass,user2:pass2"`` -> ``{user: pass}``, as the WebUI reads ``--api-auth``.

    The password is everything after the first ``:``. Entries without one are ignored; the caller
    still treats a non-empty spec as "auth is on", so a malformed one locks everyone out rather than
    opening the door.
    """
    credentials: dict[str, str] = {}
    for entry in (spec or "").split(","):
        user, sep, password = entry.partition(":")
        if sep and user:
            credentials[user] = password
    return credentials


def parse_names(csv: str | None) -> frozenset[str]:
    """A comma-separated list of user names (the operators flag), blanks dropped."""
    return frozenset(name.strip() for name in (csv or "").split(",") if name.strip())


def authenticate(header: str | None, credentials: Mapping[str, str]) -> str | None:
    """The user name an ``Authorization: Basic ...`` header proves, or None.

    Passwords are compared with ``secrets.compare_digest`` (as the WebUI does), also for unknown
    user names, so the time taken does not tell which names exist. The pair is read as UTF-8.
    """
    scheme, _, param = (header or "").strip().partition(" ")
    if scheme.lower() != "basic" or not param.strip():
        return None
    try:
        decoded = base64.b64decode(param.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    expected = credentials.get(user)
    matches = compare_digest(password.encode("utf-8"), (expected if expected is not None else password).encode("utf-8"))
    return user if matches and expected is not None else None


def is_operator(user: str | None, operators_csv: str | None, auth_enabled: bool) -> bool:
    """Without any auth configured everyone is the local user and an operator; with it, only listed names."""
    if not auth_enabled:
        return True
    return user is not None and user in parse_names(operators_csv)


def make_user(name: str | None, operators_csv: str | None, auth_enabled: bool) -> User:
    return User(name, is_operator(name, operators_csv, auth_enabled))


def can_see(bank: OwnedBank, user: User) -> bool:
    """Shared banks and the user's own; operators see every bank."""
    return bank.owner is None or bank.owner == user.name or user.operator


def can_edit(bank: OwnedBank, user: User) -> bool:
    """The user's own bank, or a shared one for operators."""
    if bank.owner is None:
        return user.operator
    return bank.owner == user.name


def require_edit(bank: OwnedBank, user: User) -> None:
    """``AccessError`` unless ``user`` may change ``bank`` (call ``can_see`` first)."""
    if can_edit(bank, user):
        return
    if bank.owner is None:
        raise AccessError(f"only operators may change the shared bank {bank.name!r}; {user.label} is not one")
    raise AccessError(f"the bank {bank.name!r} belongs to {bank.owner!r}; only its owner may change it")


def require_operator(user: User, action: str) -> None:
    """``AccessError`` unless ``user`` is an operator; ``action`` says what was refused."""
    if not user.operator:
        raise AccessError(f"only operators may {action}; {user.label} is not one "
                          "(operators are named by --safe-denoiser-operators and in the Safe Denoiser policy)")


def owner_for_new_bank(user: User, shared: bool) -> str | None:
    """Who owns a bank ``user`` creates: nobody (shared) if asked and allowed, else the user.

    The anonymous user's banks are always shared (there is nobody to own them), which needs an
    operator: with users configured, an anonymous caller cannot create banks.
    """
    if shared or user.name is None:
        require_operator(user, "create shared banks")
        return None
    return user.name
