"""Saved presets: named bundles of banks and numbers, per user and global, shared by WebUI processes.

Three scopes, looked up in this order for a user: their own presets, the operators' global ones,
then the built-in recipes (``builtin_presets.py``, read-only). Layout under the presets root
(``<data>/safe_denoiser/presets``)::

    global.json                    the operators' presets, visible to everyone
    users/<slug>-<sha256>.json     one user's presets and "my default" (anonymous.json without auth)
    locks/<file>.lock              one cross-process lock per file

Why this shape:
- One file per scope: every change is a read-modify-write of one small JSON file, done under that
  file's cross-process lock and committed with an atomic replace, so two WebUI processes saving at
  once never lose each other's presets, and a reader sees the old file or the new one, never half.
- Every read reads the file, so another process's change is seen on the very next read; the last
  parse is reused only while the bytes read are identical to the ones it came from (validating
  hundreds of presets costs milliseconds, comparing a few kB of bytes microseconds).
- User files are named by a hash of the exact user name (plus a readable slug), so two names that
  differ only in case stay apart on case-insensitive file systems and no name can reach a path.
- A preset stores every argument field (filled from the defaults on save) and is validated by
  ``SafeDenoiserArgs`` itself, so it can never hold a value a generation would reject, and it
  keeps meaning the same numbers if the defaults change.
- Saved names follow the bank-name rules (ASCII letters, digits, space, ``_-.``): they travel in
  infotext, XYZ axis lists and URLs. The built-in names contain ``(`` or ``/`` and ``custom`` is
  reserved, so a saved preset can never pass for a built-in recipe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lib_safe_denoiser.banks.files import atomic_write_bytes
from lib_safe_denoiser.banks.inputs import MAX_DESCRIPTION_LEN, clean_text, validate_bank_name
from lib_safe_denoiser.banks.locks import LOCK_TIMEOUT_S, InterProcessLock
from lib_safe_denoiser.errors import BankError, SafeDenoiserError
from lib_safe_denoiser.generation.args import FIELD_NAMES, MAX_BANKS, ArgsError, SafeDenoiserArgs
from lib_safe_denoiser.policy.builtin_presets import CUSTOM, PRESETS
from lib_safe_denoiser.policy.users import AccessError

SCOPE_BUILTIN = "builtin"
SCOPE_GLOBAL = "global"
SCOPE_USER = "user"
SCOPES: tuple[str, ...] = (SCOPE_USER, SCOPE_GLOBAL, SCOPE_BUILTIN)
"""Resolution order for a user: their own presets first, then the global ones, then the built-ins."""
SHARED_SCOPES: tuple[str, ...] = (SCOPE_GLOBAL, SCOPE_BUILTIN)
"""Where the operators' enforced preset is looked up: never in a user's scope."""
SCOPE_LABELS = {SCOPE_USER: "personal", SCOPE_GLOBAL: "global", SCOPE_BUILTIN: "built-in"}

PRESET_ARG_FIELDS: tuple[str, ...] = tuple(n for n in FIELD_NAMES if n not in ("enabled", "bank", "preset"))
"""The argument fields a preset holds; the banks are a list of their own."""
PAYLOAD_KEYS: tuple[str, ...] = ("banks", "description", *PRESET_ARG_FIELDS)

MAX_PRESETS_PER_SCOPE = 500
MAX_PRESET_BANKS = MAX_BANKS
MAX_USER_NAME_LEN = 256
FILE_VERSION = 1

GLOBAL_FILE = "global.json"
USERS_DIR = "users"
ANONYMOUS_FILE = "anonymous.json"
LOCKS_DIR = "locks"

_SLUG_UNSAFE = re.compile(r"[^a-z0-9]+")
_SLUG_LEN = 32


# ------------------------------------------------------------------------------------ errors
class PresetError(SafeDenoiserError, ValueError):
    """A bad preset name or payload, or an unreadable presets file; the message says how to fix it."""


class PresetNotFoundError(PresetError, KeyError):
    """No preset of that name in the scopes looked at."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PresetConflictError(PresetError):
    """The name is taken in that scope (saving without ``overwrite``, or renaming onto it)."""


# ------------------------------------------------------------------------------------ values
def validate_preset_name(name: Any) -> str:
    """Return ``name`` if it can be a saved preset's name; ``PresetError`` naming the problem otherwise."""
    try:
        validate_bank_name(name)
    except BankError as e:
        raise PresetError(str(e).replace("bank name", "preset name")) from None
    if name.casefold() == CUSTOM:
        raise PresetError(f"the preset name {name!r} is reserved (it means \"my own numbers\"); pick another")
    return name


def validate_user(user: Any) -> str | None:
    """A user name as the front-ends identify it; None is the one anonymous user of a WebUI without auth."""
    if user is None:
        return None
    if not isinstance(user, str):
        raise PresetError(f"a user name must be text, got {type(user).__name__}")
    if not user.strip():
        raise PresetError("the user name is empty")
    if len(user) > MAX_USER_NAME_LEN:
        raise PresetError(f"the user name is {len(user)} characters long; at most {MAX_USER_NAME_LEN} are accepted")
    if any(ord(c) < 32 or ord(c) == 127 for c in user):
        raise PresetError("the user name contains control characters")
    return user


def _check_scope(scope: Any) -> str:
    if scope not in SCOPES:
        raise PresetError(f"unknown preset scope {scope!r}; choose one of {', '.join(SCOPES)}")
    return scope


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class PresetRef:
    """Which preset supplied a job's numbers: recorded in infotext beside the numbers themselves."""

    name: str
    scope: str

    def label(self) -> str:
        return f"{self.name!r} ({SCOPE_LABELS[self.scope]})"


@dataclass(frozen=True)
class ResolvedArgs:
    """A generation's arguments with every bank it negates and the preset they came from.

    ``args.banks`` come first in ``banks``; the operator's always-on banks may follow them.
    ``enforced``: the operator's policy switched this job on or raised
    it. ``fail_closed``: a failure while preparing or steering must refuse the job rather than
    let it generate unsteered.
    """

    args: SafeDenoiserArgs
    banks: tuple[str, ...] = ()
    preset: PresetRef | None = None
    enforced: bool = False
    fail_closed: bool = True

    def __post_init__(self) -> None:
        banks = tuple(self.banks) or self.args.banks
        if banks[:len(self.args.banks)] != self.args.banks:
            raise ValueError(f"args.banks {list(self.args.banks)} must come first in banks {list(banks)}")
        object.__setattr__(self, "banks", banks)

    @classmethod
    def from_args(cls, args: SafeDenoiserArgs) -> ResolvedArgs:
        """Arguments that named no saved preset: a built-in recipe is recorded only while its numbers hold."""
        settled = args.settled()
        ref = PresetRef(settled.preset, SCOPE_BUILTIN) if settled.preset in PRESETS else None
        return cls(settled, preset=ref)


@dataclass(frozen=True)
class SavedPreset:
    """A preset of any scope. ``numbers`` holds its argument fields (``enabled`` False, no bank;
    ``preset`` is the recipe's name for a built-in, "custom" otherwise)."""

    name: str
    scope: str
    numbers: SafeDenoiserArgs
    banks: tuple[str, ...] = ()
    description: str = ""
    created: str = ""
    updated: str = ""

    @property
    def ref(self) -> PresetRef:
        return PresetRef(self.name, self.scope)

    @property
    def read_only(self) -> bool:
        return self.scope == SCOPE_BUILTIN

    def values(self) -> dict[str, Any]:
        """The argument fields the preset sets."""
        return {k: getattr(self.numbers, k) for k in PRESET_ARG_FIELDS}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the REST API and the UI."""
        return {"name": self.name, "scope": self.scope, "banks": list(self.banks), "description": self.description,
                "created": self.created, "updated": self.updated, "read_only": self.read_only, **self.values()}

    def to_request(self, overrides: Mapping[str, Any] | None = None) -> ResolvedArgs:
        """The arguments of a job that names this preset; ``overrides`` are the request's own fields.

        A request's own ``bank`` replaces the preset's banks; every other field it names replaces
        the preset's value. ``ArgsError`` names a bad or unknown field.
        """
        fields = dict(overrides or {})
        if "preset" in fields:
            raise ArgsError("'preset' cannot be overridden: name the preset once")
        own = fields.get("bank")
        own_bank = not (own is None or (isinstance(own, str) and not own.strip()))
        values = {**self.values(), "preset": self.numbers.preset, **fields}
        if not own_bank:
            values["bank"] = list(self.banks)
        args = SafeDenoiserArgs.from_dict(values)
        return ResolvedArgs(args, args.banks, self.ref)

    # -------------------------------------------------------------- (de)serialisation
    @classmethod
    def from_payload(cls, name: Any, payload: Any, *, scope: str, created: str = "", updated: str = "") -> SavedPreset:
        """A saved preset from user input (REST body, UI values) or its file entry; ``PresetError`` names the field."""
        name = validate_preset_name(name)
        if not isinstance(payload, Mapping):
            raise PresetError(f"preset {name!r}: expected an object of named fields ({', '.join(PAYLOAD_KEYS)}), "
                              f"got {type(payload).__name__}")
        unknown = sorted(set(payload) - set(PAYLOAD_KEYS))
        if unknown:
            hint = " (a preset lists its banks: use 'banks': [...])" if "bank" in unknown else ""
            raise PresetError(f"preset {name!r}: unknown field(s) {', '.join(map(repr, unknown))}{hint}; "
                              f"accepted: {', '.join(PAYLOAD_KEYS)}")
        banks = _validate_banks(name, payload.get("banks", ()))
        try:
            description = clean_text(payload.get("description", ""), MAX_DESCRIPTION_LEN, "description")
        except BankError as e:
            raise PresetError(f"preset {name!r}: {e}") from None
        values = {k: payload[k] for k in PRESET_ARG_FIELDS if k in payload}
        try:  # validated as a job that uses it would be, so a saved preset always runs
            SafeDenoiserArgs(**values, enabled=bool(banks), bank=list(banks), preset=CUSTOM)
            numbers = SafeDenoiserArgs(**values, preset=CUSTOM)
        except ArgsError as e:
            raise PresetError(f"preset {name!r}: {e}") from None
        return cls(name, scope, numbers, banks, description, created, updated)

    def file_entry(self) -> dict[str, Any]:
        return {"name": self.name, "banks": list(self.banks), "description": self.description,
                "created": self.created, "updated": self.updated, **self.values()}


def _validate_banks(name: str, banks: Any) -> tuple[str, ...]:
    if isinstance(banks, str) or not isinstance(banks, (list, tuple)):
        raise PresetError(f"preset {name!r}: 'banks' must be a list of bank names, got {banks!r}")
    if len(banks) > MAX_PRESET_BANKS:
        raise PresetError(f"preset {name!r}: {len(banks)} banks listed; at most {MAX_PRESET_BANKS} are accepted")
    seen: set[str] = set()
    for i, bank in enumerate(banks):
        try:
            validate_bank_name(bank)
        except BankError as e:
            raise PresetError(f"preset {name!r}: banks[{i}]: {e}") from None
        if bank.casefold() in seen:
            raise PresetError(f"preset {name!r}: bank {bank!r} is listed twice")
        seen.add(bank.casefold())
    return tuple(banks)


def builtin_preset(name: str) -> SavedPreset:
    recipe = PRESETS[name]
    return SavedPreset(name, SCOPE_BUILTIN, SafeDenoiserArgs().with_preset(name), description=recipe.description)


# ------------------------------------------------------------------------------------ the store
@dataclass
class _ScopeFile:
    """One scope's file as read: its presets by name (file order) and the user's default."""

    presets: dict[str, SavedPreset]
    default: dict[str, str] | None = None

    def copy(self) -> _ScopeFile:
        return _ScopeFile(dict(self.presets), dict(self.default) if self.default else None)

    def find(self, name: str) -> SavedPreset | None:
        return self.presets.get(name)

    def clash(self, name: str, but: str | None = None) -> str | None:
        """An existing name equal to ``name`` up to case (other than ``but``)."""
        key = name.casefold()
        return next((n for n in self.presets if n.casefold() == key and n != but), None)


class PresetStore:
    """Presets on disk under ``root``. Writes to the global scope need ``is_operator``; a user's
    scope is only ever the caller's own (front-ends pass the identified user, never a chosen one)."""

    def __init__(self, root: str | Path, *, lock_timeout: float = LOCK_TIMEOUT_S) -> None:
        self.root = Path(root)
        self.lock_timeout = lock_timeout
        self._locks: dict[str, InterProcessLock] = {}
        self._parsed: dict[Path, tuple[bytes, _ScopeFile]] = {}
        """The last parse of each file, reused only while the file's bytes are exactly the same."""
        self._locks_guard = threading.Lock()

    # -------------------------------------------------------------- reading
    def list(self, scope: str, user: str | None = None) -> list[SavedPreset]:
        """The presets of one scope (``user``'s own for the user scope), sorted by name."""
        if _check_scope(scope) == SCOPE_BUILTIN:
            return [builtin_preset(n) for n in PRESETS]
        doc = self._read(scope, validate_user(user))
        return sorted(doc.presets.values(), key=lambda p: p.name.casefold())

    def visible(self, user: str | None) -> list[SavedPreset]:
        """Everything ``user`` may use, in resolution order: theirs, the global ones, the built-ins."""
        return [p for scope in SCOPES for p in self.list(scope, user)]

    def get(self, name: str, *, scope: str, user: str | None = None) -> SavedPreset:
        """One preset of one scope; ``PresetNotFoundError`` if it is not there."""
        found = self._find(name, _check_scope(scope), validate_user(user))
        if found is None:
            raise PresetNotFoundError(f"no {SCOPE_LABELS[scope]} preset named {name!r}")
        return found

    def resolve(self, name: str, user: str | None) -> SavedPreset:
        """The preset ``name`` as ``user`` sees it: their own, else a global one, else a built-in recipe."""
        return self._resolve(name, validate_user(user), SCOPES)

    def resolve_shared(self, name: str) -> SavedPreset:
        """A global or built-in preset: what the operator's policy may enforce (no user can shadow it)."""
        return self._resolve(name, None, SHARED_SCOPES)

    def resolve_fields(self, fields: Mapping[str, Any], user: str | None) -> ResolvedArgs:
        """A job's named argument fields (an API dict, the UI's values) with their preset resolved
        in ``user``'s scopes. ``PresetNotFoundError`` for an unknown preset, ``ArgsError`` for a bad field."""
        name = fields.get("preset")
        if isinstance(name, str) and name and name != CUSTOM and name not in PRESETS:
            rest = {k: v for k, v in fields.items() if k != "preset"}
            return self.resolve(name, user).to_request(rest)
        return ResolvedArgs.from_args(SafeDenoiserArgs.from_dict(fields))

    def default(self, user: str | None) -> SavedPreset | None:
        """The user's "my default" preset; None when unset or when that preset no longer exists."""
        user = validate_user(user)
        chosen = self._read(SCOPE_USER, user).default
        if not chosen:
            return None
        return self._find(chosen["name"], chosen["scope"], user)

    # -------------------------------------------------------------- writing
    def save(self, name: str, payload: Mapping[str, Any], *, scope: str, user: str | None,
             is_operator: bool = False, overwrite: bool = False) -> SavedPreset:
        """Create (or with ``overwrite`` replace) a preset; ``created`` survives a replacement."""
        user = self._check_write(scope, user, is_operator)
        preset = SavedPreset.from_payload(name, payload, scope=scope)

        def change(doc: _ScopeFile) -> SavedPreset:
            old = doc.find(preset.name)
            clash = doc.clash(preset.name, but=preset.name)
            if clash is not None:
                raise PresetConflictError(f"a {SCOPE_LABELS[scope]} preset named {clash!r} already exists "
                                          "(names ignore case); pick another name or rename that one")
            if old is not None and not overwrite:
                raise PresetConflictError(f"a {SCOPE_LABELS[scope]} preset named {preset.name!r} already exists; "
                                          "overwrite it or pick another name")
            if old is None and len(doc.presets) >= MAX_PRESETS_PER_SCOPE:
                raise PresetError(f"{_owner_phrase(scope)} {MAX_PRESETS_PER_SCOPE} presets already; "
                                  "delete some before saving more")
            now = _now()
            saved = dataclasses.replace(preset, created=old.created if old else now, updated=now)
            doc.presets[saved.name] = saved
            return saved

        return self._mutate(scope, user, change)

    def rename(self, name: str, new_name: str, *, scope: str, user: str | None,
               is_operator: bool = False) -> SavedPreset:
        """Rename within a scope (a change of case only is fine); "my default" follows a renamed preset."""
        user = self._check_write(scope, user, is_operator)
        new_name = validate_preset_name(new_name)

        def change(doc: _ScopeFile) -> SavedPreset:
            old = doc.find(name)
            if old is None:
                raise PresetNotFoundError(f"no {SCOPE_LABELS[scope]} preset named {name!r}")
            clash = doc.clash(new_name, but=name)
            if clash is not None:
                raise PresetConflictError(f"a {SCOPE_LABELS[scope]} preset named {clash!r} already exists; "
                                          "pick another name")
            renamed = dataclasses.replace(old, name=new_name, updated=_now())
            doc.presets = {(new_name if n == name else n): (renamed if n == name else p)
                           for n, p in doc.presets.items()}
            if doc.default == {"name": name, "scope": scope}:
                doc.default = {"name": new_name, "scope": scope}
            return renamed

        return self._mutate(scope, user, change)

    def delete(self, name: str, *, scope: str, user: str | None, is_operator: bool = False) -> None:
        """Delete a preset; a user's default that named it is cleared."""
        user = self._check_write(scope, user, is_operator)

        def change(doc: _ScopeFile) -> None:
            if doc.presets.pop(name, None) is None:
                raise PresetNotFoundError(f"no {SCOPE_LABELS[scope]} preset named {name!r}")
            if doc.default == {"name": name, "scope": scope}:
                doc.default = None

        self._mutate(scope, user, change)

    def set_default(self, name: str | None, user: str | None) -> SavedPreset | None:
        """Make ``name`` (resolved as ``user`` sees it now) the user's default; None clears it."""
        user = validate_user(user)

        def change(doc: _ScopeFile) -> SavedPreset | None:
            if name is None:
                doc.default = None
                return None
            own = doc.find(name)  # read under the lock: a preset deleted meanwhile is not chosen
            preset = own if own is not None else self._resolve(name, None, SHARED_SCOPES)
            doc.default = {"name": preset.name, "scope": preset.scope}
            return preset

        return self._mutate(SCOPE_USER, user, change)

    # -------------------------------------------------------------- internals
    def _check_write(self, scope: str, user: Any, is_operator: bool) -> str | None:
        """Permission first: a refused write reads and writes nothing."""
        user = validate_user(user)
        if _check_scope(scope) == SCOPE_BUILTIN:
            raise AccessError("built-in presets are read-only; save a copy under another name")
        if scope == SCOPE_GLOBAL and not is_operator:
            raise AccessError("only operators may change global presets; save it as your own preset instead")
        return user

    def _resolve(self, name: str, user: str | None, scopes: tuple[str, ...]) -> SavedPreset:
        if not isinstance(name, str) or not name.strip():
            raise PresetError("no preset named: give a preset name")
        if SCOPE_BUILTIN in scopes and name in PRESETS:
            return builtin_preset(name)  # no saved name can be a built-in's: no file needs reading
        for scope in scopes:
            found = self._find(name, scope, user)
            if found is not None:
                return found
        where = ", ".join({SCOPE_USER: "your presets", SCOPE_GLOBAL: "the global presets",
                           SCOPE_BUILTIN: "the built-in recipes"}[s] for s in scopes)
        raise PresetNotFoundError(f"no preset named {name!r} (looked in {where})")

    def _find(self, name: Any, scope: str, user: str | None) -> SavedPreset | None:
        if not isinstance(name, str):
            return None
        if scope == SCOPE_BUILTIN:
            return builtin_preset(name) if name in PRESETS else None
        return self._read(scope, user).find(name)

    def _path(self, scope: str, user: str | None) -> Path:
        if scope == SCOPE_GLOBAL:
            return self.root / GLOBAL_FILE
        if user is None:
            return self.root / USERS_DIR / ANONYMOUS_FILE
        slug = _SLUG_UNSAFE.sub("_", user.casefold()).strip("_")[:_SLUG_LEN] or "user"
        return self.root / USERS_DIR / f"{slug}-{hashlib.sha256(user.encode('utf-8')).hexdigest()[:16]}.json"

    def _lock(self, path: Path) -> InterProcessLock:
        name = path.stem if path.parent == self.root else f"{USERS_DIR}-{path.stem}"
        lock_path = self.root / LOCKS_DIR / f"{name}.lock"
        with self._locks_guard:
            lock = self._locks.get(str(lock_path))
            if lock is None:
                lock = self._locks[str(lock_path)] = InterProcessLock(lock_path, f"the presets file {path.name}")
            return lock

    def _read(self, scope: str, user: str | None) -> _ScopeFile:
        user = user if scope == SCOPE_USER else None  # the global file belongs to nobody
        path = self._path(scope, user)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return _ScopeFile({})
        except OSError as e:
            raise PresetError(f"{_file_phrase(scope)} cannot be read ({e.strerror}); ask the operator to check "
                              "the data directory") from None
        cached = self._parsed.get(path)
        if cached is None or cached[0] != raw:
            try:
                cached = (raw, _parse(json.loads(raw), scope, user))
            except (ValueError, TypeError, KeyError) as e:
                raise PresetError(f"{_file_phrase(scope)} ({path.name}) is corrupt: {e}; an operator must repair "
                                  "or remove it") from None
            self._parsed[path] = cached
        return cached[1].copy()

    def _mutate(self, scope: str, user: str | None, change: Callable[[_ScopeFile], Any]) -> Any:
        user = user if scope == SCOPE_USER else None
        path = self._path(scope, user)
        with self._hold(path):
            doc = self._read(scope, user)
            result = change(doc)
            atomic_write_bytes(path, _dump(doc, scope, user))
        return result

    @contextlib.contextmanager
    def _hold(self, path: Path) -> Iterator[None]:
        with self._lock(path).hold(self.lock_timeout):
            yield


def _owner_phrase(scope: str) -> str:
    return "you have" if scope == SCOPE_USER else "there are"


def _file_phrase(scope: str) -> str:
    return "your presets file" if scope == SCOPE_USER else "the global presets file"


def _parse(data: Any, scope: str, user: str | None) -> _ScopeFile:
    if not isinstance(data, dict) or not isinstance(data.get("presets"), list):
        raise ValueError("not a presets file")
    if not isinstance(data.get("version"), int) or data["version"] > FILE_VERSION:
        raise ValueError(f"file version {data.get('version')!r} is not one this extension reads "
                         f"(written by a newer version?)")
    if data.get("scope") != scope or data.get("user") != user:
        raise ValueError(f"the file belongs to scope {data.get('scope')!r} of user {data.get('user')!r}")
    presets: dict[str, SavedPreset] = {}
    for entry in data["presets"]:
        if not isinstance(entry, dict):
            raise ValueError("a preset entry is not an object")
        payload = {k: v for k, v in entry.items() if k in PAYLOAD_KEYS}
        preset = SavedPreset.from_payload(entry.get("name"), payload, scope=scope,
                                          created=str(entry.get("created", "")), updated=str(entry.get("updated", "")))
        presets[preset.name] = preset
    default = data.get("default")
    if default is not None and not (isinstance(default, dict) and set(default) == {"name", "scope"}
                                    and default["scope"] in SCOPES and isinstance(default["name"], str)):
        raise ValueError(f"bad default {default!r}")
    return _ScopeFile(presets, default)


def _dump(doc: _ScopeFile, scope: str, user: str | None) -> bytes:
    data: dict[str, Any] = {"version": FILE_VERSION, "scope": scope, "user": user,
                            "presets": [p.file_entry() for p in doc.presets.values()]}
    if scope == SCOPE_USER:
        data["default"] = doc.default
    return json.dumps(data, indent=1, ensure_ascii=False).encode("utf-8")
