"""Which banks a user may use in a generation, applied the same way by the accordion, XYZ axes,
infotext paste and REST generation: another user's private bank behaves exactly like a bank
that does not exist, so its name can neither be used nor probed."""

from __future__ import annotations

from lib_safe_denoiser.banks.store import BankInfo, BankStore
from lib_safe_denoiser.errors import BankNotFoundError
from lib_safe_denoiser.policy.users import User, can_see


def visible_names(store: BankStore, user: User) -> list[str]:
    """Names of the banks ``user`` may use: shared ones and their own (operators: all)."""
    return [info.name for info in store.list() if can_see(info, user)]


def visible_bank(store: BankStore, name: str, user: User) -> BankInfo:
    """The bank ``name`` if ``user`` may use it; ``BankNotFoundError`` listing only their banks otherwise."""
    try:
        info = store.get(name)
    except BankNotFoundError:
        info = None
    if info is None or not can_see(info, user):
        known = ", ".join(repr(n) for n in visible_names(store, user)) or "none"
        raise BankNotFoundError(f"no bank named {name!r} (banks you can use: {known})")
    return info
