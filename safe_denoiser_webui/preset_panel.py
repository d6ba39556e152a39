"""The accordion's presets: choices, load, save, rename, delete and "my default", for one user.

Each action takes the signed-in user (the glue reads it from ``gr.Request``) and the accordion's
current values in ``VALUE_FIELDS`` order, and returns what the page shows next: a status line,
the preset dropdown and, on load, every value. Nothing here reads another user's presets: the
store is only ever asked for the caller's own scope, the global one and the built-ins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from lib_safe_denoiser.errors import SafeDenoiserError
from lib_safe_denoiser.generation.args import FIELD_NAMES, SafeDenoiserArgs
from lib_safe_denoiser.policy.builtin_presets import CUSTOM
from lib_safe_denoiser.policy.presets_store import SCOPE_BUILTIN, SCOPE_GLOBAL, SCOPE_USER, PresetStore, SavedPreset
from lib_safe_denoiser.policy.users import User

VALUE_FIELDS: tuple[str, ...] = tuple(n for n in FIELD_NAMES if n not in ("enabled", "preset"))
"""The accordion values a preset holds (``bank`` is its list of banks), in the order the actions take them."""


@dataclass(frozen=True)
class PresetPanel:
    store: PresetStore

    def choices(self, user: User) -> list[str]:
        """What the dropdown offers ``user``: their presets, the global ones they do not shadow, the
        built-in recipes, then "custom"."""
        names: list[str] = []
        for preset in self.store.visible(user.name):
            if preset.name not in names:
                names.append(preset.name)
        return [*names, CUSTOM]

    def dropdown(self, user: User, value: str | None = None) -> dict[str, Any]:
        return gr.update(choices=self.choices(user), **({} if value is None else {"value": value}))

    def load(self, name: str, user: User) -> tuple[str, list[Any]]:
        """(status, value updates in ``VALUE_FIELDS`` order) for a chosen preset; "custom" changes nothing."""
        if not name or name == CUSTOM:
            return "", [gr.update()] * len(VALUE_FIELDS)
        try:
            preset = self.store.resolve(name, user.name)
        except SafeDenoiserError as e:
            return f"Cannot load {name!r}: {e}", [gr.update()] * len(VALUE_FIELDS)
        values = preset.values()
        updates = []
        for field in VALUE_FIELDS:
            if field == "bank":  # a built-in recipe names no bank: the user's choice stays
                updates.append(gr.update(value=list(preset.banks)) if preset.scope != SCOPE_BUILTIN else gr.update())
            elif field == "reference_bank" and preset.scope == SCOPE_BUILTIN:
                updates.append(gr.update())
            else:
                updates.append(gr.update(value=values[field]))
        return f"Loaded {preset.ref.label()}.", updates

    def save(self, name: str, shared: bool, values: Sequence[Any], user: User) -> tuple[str, dict[str, Any]]:
        """Save the accordion's values as ``name`` (replacing the user's own preset of that name);
        ``shared`` saves a global preset, which only operators may do."""
        name = (name or "").strip()
        fields = dict(zip(VALUE_FIELDS, values, strict=True))
        scope = SCOPE_GLOBAL if shared else SCOPE_USER
        try:
            banks = SafeDenoiserArgs(bank=fields.pop("bank")).banks
            saved = self.store.save(name, {"banks": list(banks), **fields}, scope=scope, user=user.name,
                                    is_operator=user.operator, overwrite=True)
        except SafeDenoiserError as e:
            return f"Not saved: {e}", gr.update()
        return f"Saved {saved.ref.label()}.", self.dropdown(user, saved.name)

    def rename(self, name: str, new_name: str, user: User) -> tuple[str, dict[str, Any]]:
        try:
            preset = self.store.resolve(name or CUSTOM, user.name)  # built-ins refuse to change
            renamed = self.store.rename(preset.name, (new_name or "").strip(), scope=preset.scope, user=user.name,
                                        is_operator=user.operator)
        except SafeDenoiserError as e:
            return f"Not renamed: {e}", gr.update()
        return f"Renamed {preset.ref.label()} to {renamed.name!r}.", self.dropdown(user, renamed.name)

    def delete(self, name: str, user: User) -> tuple[str, dict[str, Any]]:
        try:
            preset = self.store.resolve(name or CUSTOM, user.name)  # built-ins refuse to change
            self.store.delete(preset.name, scope=preset.scope, user=user.name, is_operator=user.operator)
        except SafeDenoiserError as e:
            return f"Not deleted: {e}", gr.update()
        return f"Deleted {preset.ref.label()}.", self.dropdown(user, CUSTOM)

    def set_default(self, name: str, user: User) -> str:
        """Make the chosen preset "my default" ("custom" clears it): the page loads it on every visit."""
        try:
            chosen = self.store.set_default(None if not name or name == CUSTOM else name, user.name)
        except SafeDenoiserError as e:
            return f"Default not set: {e}"
        return "Your default preset is cleared." if chosen is None else f"Your default is now {chosen.ref.label()}."

    def default(self, user: User) -> SavedPreset | None:
        try:
            return self.store.default(user.name)
        except SafeDenoiserError:
            return None
