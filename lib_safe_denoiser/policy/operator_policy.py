"""The operator's policy for a shared WebUI: enforcement, floors, operators and locked settings.

Stored server-side as one JSON file in the data directory (``<data>/safe_denoiser/policy/``), so
every WebUI process sharing it applies the same rules from the next job on: nothing is cached,
each job reads the file (well under a millisecond). Only operators may change it; every change
is a read-modify-write under a cross-process lock with an atomic replace, and carries a
``revision`` so that an operator saving a form loaded before someone else's change is told to
reload instead of silently undoing it.

``apply_policy`` is the pure rule a job goes through: a job that did not enable the extension
gets the operator's preset when enforcement is on, and any steered job is raised to the floors
(always-on banks added to its own, a minimum strength, a window it must cover). It says in plain
words what it changed, for the image's infotext.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lib_safe_denoiser.banks.files import atomic_write_bytes
from lib_safe_denoiser.banks.inputs import validate_bank_name
from lib_safe_denoiser.banks.locks import LOCK_TIMEOUT_S, InterProcessLock
from lib_safe_denoiser.errors import BankError, SafeDenoiserError
from lib_safe_denoiser.generation.args import ArgsError, SafeDenoiserArgs
from lib_safe_denoiser.policy.builtin_presets import PRESETS
from lib_safe_denoiser.policy.presets_store import (
    MAX_PRESET_BANKS,
    SCOPE_USER,
    PresetError,
    PresetNotFoundError,
    ResolvedArgs,
    SavedPreset,
    validate_preset_name,
    validate_user,
)
from lib_safe_denoiser.policy.users import AccessError

POLICY_FILE = "policy.json"
POLICY_LOCK = "policy.lock"
FILE_VERSION = 1

PROTECTED_SETTING_PREFIX = "safe_denoiser_"
"""The extension's own settings (hires steering, the CLIP model...) are changeable through the API or
``override_settings`` by operators only, locked or not: a user changing them could undo the policy."""
MAX_LOCKED_SETTINGS = 200
MAX_OPERATORS = 200
_SETTING_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")

_STORE_KEYS = ("revision", "updated", "updated_by")
"""Fields the store sets on save; a change may not set them."""

ResolvePreset = Callable[[str], SavedPreset]


class PolicyError(SafeDenoiserError, ValueError):
    """A bad policy value or an unreadable policy file; the message names the field."""


class PolicyConflictError(PolicyError):
    """The policy changed since the caller loaded it: reload and apply the change again."""


class EnforcementError(SafeDenoiserError):
    """The policy requires this job to be steered and it cannot be: the job must be refused."""


# ------------------------------------------------------------------------------------ the policy
def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"policy field {name!r} must be true or false, got {value!r}")
    return value


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PolicyError(f"policy field {name!r} must be a finite number, got {value!r}")
    return float(value)


def _names(name: str, values: Any, check: Callable[[Any], Any], limit: int) -> tuple[str, ...]:
    """A list of distinct names (case-insensitively for banks and keys, exactly for users)."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise PolicyError(f"policy field {name!r} must be a list, got {values!r}")
    if len(values) > limit:
        raise PolicyError(f"policy field {name!r} lists {len(values)} entries; at most {limit} are accepted")
    out: list[str] = []
    for i, value in enumerate(values):
        try:
            check(value)
        except (BankError, PresetError, PolicyError) as e:
            raise PolicyError(f"policy field {name!r}[{i}]: {e}") from None
        if value in out:
            raise PolicyError(f"policy field {name!r}: {value!r} is listed twice")
        out.append(value)
    return tuple(out)


def _setting_key(key: Any) -> str:
    if not isinstance(key, str) or not _SETTING_KEY.match(key):
        raise PolicyError(f"{key!r} is not a settings key (letters, digits and _ . - only, as in "
                          "'sd_model_checkpoint')")
    return key


def _operator_name(user: Any) -> str:
    if validate_user(user) is None:
        raise PolicyError("an operator needs a user name")
    return user


@dataclass(frozen=True)
class OperatorPolicy:
    """What the operator requires of every generation. The defaults change nothing.

    enforce: steer every generation; a job that did not enable the extension gets ``preset``
        (a global or built-in preset).
    floor_banks: always-on banks, added to whatever banks a steered job uses.
    min_strength: a steered job's strength is raised to at least this (compared as is, whatever the
        mode: the built-in recipes all use the paper mode, where strength is the correction scale).
    floor_window: (start, end) the job's window must cover; None: no floor.
    fail_closed: when enforcing, refuse a job that cannot be steered (missing or bad bank, an
        error while steering) instead of generating it unsteered.
    operators: user names allowed to change global presets, shared banks and this policy.
    locked_settings: WebUI settings keys nobody may change through /sdapi/v1/options or
        ``override_settings`` (on top of the extension's own, which are always protected).
    hide_accordion: while enforcing, hide the accordion from non-operators and ignore their own
        arguments: the operator's preset applies to them as is.
    """

    enforce: bool = False
    preset: str = ""
    floor_banks: tuple[str, ...] = ()
    min_strength: float = 0.0
    floor_window: tuple[float, float] | None = None
    fail_closed: bool = True
    operators: tuple[str, ...] = ()
    locked_settings: tuple[str, ...] = ()
    hide_accordion: bool = False
    revision: int = 0
    updated: str = ""
    updated_by: str | None = None

    def __post_init__(self) -> None:
        for name in ("enforce", "fail_closed", "hide_accordion"):
            _bool(name, getattr(self, name))
        if not isinstance(self.preset, str):
            raise PolicyError(f"policy field 'preset' must be a preset name, got {self.preset!r}")
        if self.preset and self.preset not in PRESETS:
            try:
                validate_preset_name(self.preset)
            except PresetError as e:
                raise PolicyError(f"policy field 'preset': {e}") from None
        if self.enforce and not self.preset:
            raise PolicyError("policy field 'preset' is required when enforcing: choose the preset every "
                              "generation gets")
        set_ = object.__setattr__
        set_(self, "floor_banks", _names("floor_banks", self.floor_banks, validate_bank_name, MAX_PRESET_BANKS))
        set_(self, "operators", _names("operators", self.operators, _operator_name, MAX_OPERATORS))
        set_(self, "locked_settings", _names("locked_settings", self.locked_settings, _setting_key,
                                             MAX_LOCKED_SETTINGS))
        if len({b.casefold() for b in self.floor_banks}) != len(self.floor_banks):
            raise PolicyError("policy field 'floor_banks' lists a bank twice (names ignore case)")
        strength = _fraction("min_strength", self.min_strength)
        if strength < 0:
            raise PolicyError(f"policy field 'min_strength' must be >= 0, got {strength}")
        set_(self, "min_strength", strength)
        if self.floor_window is not None:
            window = self.floor_window
            if isinstance(window, str) or not isinstance(window, (list, tuple)) or len(window) != 2:
                raise PolicyError(f"policy field 'floor_window' must be [start, end] or null, got {window!r}")
            start, end = (_fraction("floor_window", v) for v in window)
            if not 0.0 <= start <= end <= 1.0:
                raise PolicyError(f"policy field 'floor_window' must satisfy 0 <= start <= end <= 1, "
                                  f"got {start} and {end}")
            set_(self, "floor_window", (start, end))
        if isinstance(self.revision, bool) or not isinstance(self.revision, int) or self.revision < 0:
            raise PolicyError(f"policy field 'revision' must be a whole number >= 0, got {self.revision!r}")
        if not isinstance(self.updated, str):
            raise PolicyError(f"policy field 'updated' must be text, got {self.updated!r}")
        if self.updated_by is not None:
            try:
                validate_user(self.updated_by)
            except PresetError as e:
                raise PolicyError(f"policy field 'updated_by': {e}") from None

    @classmethod
    def from_dict(cls, data: Any) -> OperatorPolicy:
        """From JSON (the file, a REST body); unknown fields are an error naming the accepted ones."""
        if not isinstance(data, Mapping):
            raise PolicyError(f"a policy must be an object of named fields, got {type(data).__name__}")
        accepted = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(accepted))
        if unknown:
            raise PolicyError(f"unknown policy field(s) {', '.join(map(repr, unknown))}; accepted: "
                              f"{', '.join(accepted)}")
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; ``from_dict(as_dict())`` gives the same policy."""
        out = dataclasses.asdict(self)
        for name in ("floor_banks", "operators", "locked_settings"):
            out[name] = list(out[name])
        out["floor_window"] = list(self.floor_window) if self.floor_window is not None else None
        return out

    def public_dict(self) -> dict[str, Any]:
        """What every user may see: the rules their generations follow, not who the operators are."""
        return {k: v for k, v in self.as_dict().items() if k in ("enforce", "preset", "floor_banks", "min_strength",
                                                                  "floor_window", "fail_closed", "hide_accordion")}

    def is_operator(self, user: str | None) -> bool:
        """Whether ``user`` is named an operator here (front-ends add their own rules, e.g. no auth)."""
        return user is not None and user in self.operators

    def hides_from(self, is_operator: bool) -> bool:
        """Whether a user's own arguments are hidden and ignored (enforcing with the accordion hidden)."""
        return self.enforce and self.hide_accordion and not is_operator


def check_enforced_preset(policy: OperatorPolicy, resolve_preset: ResolvePreset) -> None:
    """``PolicyError`` unless the enforced preset exists and is global or built-in."""
    if not policy.preset:
        return
    try:
        preset = resolve_preset(policy.preset)
    except PresetNotFoundError:
        raise PolicyError(f"policy field 'preset': no global or built-in preset named {policy.preset!r}") from None
    except PresetError as e:
        raise PolicyError(f"policy field 'preset': {e}") from None
    if preset.scope == SCOPE_USER:
        raise PolicyError(f"policy field 'preset': {policy.preset!r} is a user's preset; enforce a global or "
                          "built-in one")


# ------------------------------------------------------------------------------------ storage
class PolicyStore:
    """The policy file under ``root``. Anyone may load it (every job must); only operators save."""

    def __init__(self, root: str | Path, *, lock_timeout: float = LOCK_TIMEOUT_S) -> None:
        self.root = Path(root)
        self.path = self.root / POLICY_FILE
        self.lock_timeout = lock_timeout
        self._lock = InterProcessLock(self.root / POLICY_LOCK, "the Safe Denoiser policy")

    def load(self) -> OperatorPolicy:
        """The policy as it is on disk now; the defaults when no operator has saved one.

        ``PolicyError`` if the file cannot be read: the front-ends then refuse generations (an
        unreadable policy may be one that enforces) until an operator repairs or saves it.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return OperatorPolicy()
        except OSError as e:
            raise PolicyError(f"the Safe Denoiser policy cannot be read ({e.strerror}); generations are refused "
                              "until an operator fixes the data directory") from None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != FILE_VERSION:
                raise ValueError(f"unknown file version {data.get('version') if isinstance(data, dict) else data!r}")
            return OperatorPolicy.from_dict(data.get("policy"))
        except (ValueError, TypeError) as e:
            raise PolicyError(f"the Safe Denoiser policy ({self.path.name}) is corrupt: {e}; generations are "
                              "refused until an operator saves the policy again") from None

    def save(self, policy: OperatorPolicy, *, user: str | None, is_operator: bool,
             check_preset: ResolvePreset | None = None) -> OperatorPolicy:
        """Replace the policy. ``policy.revision`` must be the one on disk (the policy the operator
        loaded); a corrupt file may be overwritten (that is how it is repaired)."""
        return self._write(user, is_operator, check_preset, lambda current: policy, policy.revision)

    def update(self, changes: Mapping[str, Any], *, user: str | None, is_operator: bool,
               check_preset: ResolvePreset | None = None) -> OperatorPolicy:
        """Change some fields of the policy on disk now (the others stay as they are)."""
        if not isinstance(changes, Mapping):
            raise PolicyError(f"policy changes must be an object of named fields, got {type(changes).__name__}")
        set_by_store = sorted(set(changes) & set(_STORE_KEYS))
        if set_by_store:
            raise PolicyError(f"policy field(s) {', '.join(map(repr, set_by_store))} are set by the store")
        return self._write(user, is_operator, check_preset,
                           lambda current: OperatorPolicy.from_dict({**current.as_dict(), **changes}), None)

    def _write(self, user: str | None, is_operator: bool, check_preset: ResolvePreset | None,
               build: Callable[[OperatorPolicy], OperatorPolicy], expected_revision: int | None) -> OperatorPolicy:
        if not is_operator:
            raise AccessError("only operators may change the Safe Denoiser policy")
        user = validate_user(user)
        with self._lock.hold(self.lock_timeout):
            try:
                current: OperatorPolicy | None = self.load()
            except PolicyError:
                if expected_revision is None:
                    raise  # a partial change needs the fields on disk
                current = None
            if current is not None and expected_revision is not None and expected_revision != current.revision:
                raise PolicyConflictError("the policy was changed by someone else since you loaded it; reload it and "
                                          "make your change again")
            new = build(current or OperatorPolicy())
            if check_preset is not None:
                check_enforced_preset(new, check_preset)
            if current is not None and current.is_operator(user) and not new.is_operator(user):
                raise PolicyError(f"this change removes you ({user!r}) from the operators and would lock you out; "
                                  "let another operator remove you")
            new = dataclasses.replace(new, revision=(current.revision if current else new.revision) + 1,
                                      updated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                      updated_by=user)
            data = {"version": FILE_VERSION, "policy": new.as_dict()}
            atomic_write_bytes(self.path, json.dumps(data, indent=1, ensure_ascii=False).encode("utf-8"))
        return new


# ------------------------------------------------------------------------------------ applying it
def _num(value: float) -> str:
    return f"{value:.4g}"


def _window(start: float, end: float) -> str:
    return f"{_num(start)}-{_num(end)}"


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _enforced_request(policy: OperatorPolicy, resolve_preset: ResolvePreset) -> tuple[ResolvedArgs, str]:
    """The job the operator's preset makes, and the note saying so."""
    try:
        preset = resolve_preset(policy.preset)
    except PresetNotFoundError:
        raise EnforcementError(f"the enforced preset {policy.preset!r} no longer exists; an operator must choose "
                               "another in the Safe Denoiser policy") from None
    except PresetError as e:
        raise EnforcementError(f"the enforced preset {policy.preset!r} cannot be used: {e}") from None
    if preset.scope == SCOPE_USER:
        raise EnforcementError(f"the enforced preset {policy.preset!r} must be a global or built-in preset")
    if not preset.banks and not policy.floor_banks:
        raise EnforcementError(f"the enforced preset {policy.preset!r} names no bank and the policy has no "
                               "always-on bank; an operator must add one")
    fields: dict[str, Any] = {"enabled": True}
    if not preset.banks:
        fields["bank"] = policy.floor_banks[0]
    try:
        return preset.to_request(fields), f"enforced by the operator with preset {preset.ref.label()}"
    except ArgsError as e:
        raise EnforcementError(f"the enforced preset {policy.preset!r} cannot run: {e}") from None


def apply_policy(user_args: SafeDenoiserArgs | ResolvedArgs | None, policy: OperatorPolicy,
                 resolve_preset: ResolvePreset, *, is_operator: bool = False) -> tuple[ResolvedArgs | None, list[str]]:
    """The arguments a job really runs with, and notes saying what the policy changed.

    ``user_args``: what the user asked for (None or not enabled: they did not ask for steering).
    ``resolve_preset``: looks up the enforced preset (``PresetStore.resolve_shared``). Returns
    (None, notes) when the job runs without the safe denoiser. Raises ``EnforcementError`` when the
    policy requires steering that cannot be set up and the policy fails closed; when it does not,
    the job runs unsteered and the notes say why.
    """
    request = ResolvedArgs.from_args(user_args) if isinstance(user_args, SafeDenoiserArgs) else user_args
    notes: list[str] = []
    if request is not None and policy.hides_from(is_operator):
        if request.args.enabled:
            notes.append("your own settings were replaced by the operator's preset")
        request = None
    if request is None or not request.args.enabled:
        if not policy.enforce:
            return None, []
        try:
            request, note = _enforced_request(policy, resolve_preset)
        except EnforcementError as e:
            if policy.fail_closed:
                raise
            return None, [*notes, f"not steered although the operator enforces it: {e}"]
        notes.append(note)
        fail_closed = policy.fail_closed
    else:
        fail_closed = True  # the user asked for steering: never hand back an unsteered image instead

    args = request.args
    added = [b for b in policy.floor_banks if b.casefold() not in {x.casefold() for x in request.banks}]
    if added:
        notes.append(f"always-on bank{'s' if len(added) > 1 else ''} {_quoted(added)} added by the operator")
    if args.strength < policy.min_strength:
        notes.append(f"strength raised from {_num(args.strength)} to {_num(policy.min_strength)} "
                     "(the operator's minimum)")
        args = args.replace(strength=policy.min_strength)
    if policy.floor_window is not None:
        lo, hi = policy.floor_window
        if args.window_start > lo or args.window_end < hi:
            start, end = min(args.window_start, lo), max(args.window_end, hi)
            notes.append(f"window widened from {_window(args.window_start, args.window_end)} to {_window(start, end)} "
                         f"(the operator requires {_window(lo, hi)})")
            args = args.replace(window_start=start, window_end=end)
    return ResolvedArgs(args.settled(), (*request.banks, *added), request.preset, enforced=policy.enforce,
                        fail_closed=fail_closed), notes


# ------------------------------------------------------------------------------------ settings
def locked_settings_in(keys: Iterable[str], policy: OperatorPolicy, *, operator: bool = False) -> list[str]:
    """The keys among ``keys`` that must not be changed through the API or ``override_settings``:
    the policy's locked settings for everyone, the extension's own for all but operators."""
    locked = set(policy.locked_settings)
    return sorted({k for k in keys if k in locked or (k.startswith(PROTECTED_SETTING_PREFIX) and not operator)})


def locked_settings_problem(keys: Iterable[str], policy: OperatorPolicy, *, operator: bool = False) -> str | None:
    """The message refusing a request that changes locked settings, or None if it changes none."""
    locked = locked_settings_in(keys, policy, operator=operator)
    if not locked:
        return None
    return (f"safe denoiser: the setting{'s' if len(locked) > 1 else ''} {_quoted(locked)} "
            f"{'are' if len(locked) > 1 else 'is'} locked by the operator of this WebUI and cannot be changed "
            "through the API or override_settings")
