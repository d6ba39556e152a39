"""Presets and the operator's policy over HTTP, beside the bank routes under ``/safe-denoiser/v1``.

The routes share the bank router's ``Route`` (``--api-auth`` checked before the body is read, JSON
errors), so a caller is the same user here as there. A user's presets are only ever their own:
no route takes a user name, every one acts for the authenticated caller. Bodies are plain JSON
objects validated by the stores themselves, so the REST API refuses exactly what the UI refuses,
with the same messages (422 bad payload, 403 not allowed, 404 no such preset, 409 name taken or a
policy changed since it was loaded).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Body, Query

from lib_safe_denoiser.banks.routes import CALLER, ApiProblem, Caller
from lib_safe_denoiser.policy.operator_policy import OperatorPolicy, PolicyStore
from lib_safe_denoiser.policy.presets_store import SCOPE_GLOBAL, SCOPE_USER, PresetRef, PresetStore
from lib_safe_denoiser.policy.users import require_operator

TAG = "Safe Denoiser presets and policy"
SAVE_KEYS = ("name", "scope", "overwrite")
"""Keys of a save request beside the preset's own fields."""
WRITABLE_SCOPES = (SCOPE_USER, SCOPE_GLOBAL)

PRESET_BODY = Body(..., description="name, scope ('user' or 'global'), overwrite, banks, description and the "
                                    "argument fields (mode, strength, window_start, ...)")
RENAME_BODY = Body(..., description='{"new_name": "..."}')
DEFAULT_BODY = Body(..., description='{"name": "..."} or {"name": null} to clear it')
POLICY_BODY = Body(..., description="policy fields; PUT: the whole policy with the revision you loaded")
SCOPE_QUERY = Query(SCOPE_USER, description="'user' (yours) or 'global' (operators)")


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiProblem(422, f"{what} must be a JSON object, got {type(body).__name__}")
    return body


def _scope(scope: Any) -> str:
    if scope not in WRITABLE_SCOPES:
        raise ApiProblem(422, f"'scope' must be one of {', '.join(WRITABLE_SCOPES)}, got {scope!r} "
                              "(built-in presets are read-only)")
    return scope


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise ApiProblem(422, f"{key!r} must be true or false, got {value!r}")
    return value


def _ref(ref: PresetRef | None) -> dict[str, str] | None:
    return dataclasses.asdict(ref) if ref is not None else None


def add_routes(router: APIRouter, presets: PresetStore, policy: PolicyStore) -> None:
    """Add the preset and policy routes to the bank ``router`` (``banks.routes.build_router``)."""

    # ------------------------------------------------------------------ presets
    @router.get("/presets", summary="Presets the caller may use: theirs, the global ones, the built-ins", tags=[TAG])
    def list_presets(caller: Caller = CALLER) -> dict[str, Any]:
        default = presets.default(caller.user.name)
        return {"presets": [p.as_dict() for p in presets.visible(caller.user.name)],
                "default": _ref(default.ref if default else None)}

    @router.get("/presets/{name}", summary="One preset as the caller resolves it (theirs, global, built-in)",
                tags=[TAG])
    def get_preset(name: str, caller: Caller = CALLER) -> dict[str, Any]:
        return presets.resolve(name, caller.user.name).as_dict()

    @router.post("/presets", summary="Save a preset (yours, or global for operators)", status_code=201, tags=[TAG])
    def save_preset(body: Any = PRESET_BODY, caller: Caller = CALLER) -> dict[str, Any]:
        body = _object(body, "a preset")
        scope = _scope(body.get("scope", SCOPE_USER))
        payload = {k: v for k, v in body.items() if k not in SAVE_KEYS}
        return presets.save(body.get("name"), payload, scope=scope, user=caller.user.name,
                            is_operator=caller.user.operator, overwrite=_flag(body, "overwrite")).as_dict()

    @router.patch("/presets/{name}", summary="Rename a preset", tags=[TAG])
    def rename_preset(name: str, body: Any = RENAME_BODY, scope: str = SCOPE_QUERY,
                      caller: Caller = CALLER) -> dict[str, Any]:
        body = _object(body, "a rename")
        unknown = sorted(set(body) - {"new_name"})
        if unknown:
            raise ApiProblem(422, f"unknown field(s) {', '.join(map(repr, unknown))}; a rename takes 'new_name'")
        return presets.rename(name, body.get("new_name"), scope=_scope(scope), user=caller.user.name,
                              is_operator=caller.user.operator).as_dict()

    @router.delete("/presets/{name}", summary="Delete a preset", tags=[TAG])
    def delete_preset(name: str, scope: str = SCOPE_QUERY, caller: Caller = CALLER) -> dict[str, Any]:
        presets.delete(name, scope=_scope(scope), user=caller.user.name, is_operator=caller.user.operator)
        return {"deleted": name, "scope": scope}

    @router.put("/default-preset", summary="Set (or clear) the caller's default preset", tags=[TAG])
    def set_default(body: Any = DEFAULT_BODY, caller: Caller = CALLER) -> dict[str, Any]:
        body = _object(body, "the default")
        if set(body) != {"name"}:
            raise ApiProblem(422, "send exactly {\"name\": \"<preset>\"} or {\"name\": null}")
        chosen = presets.set_default(body["name"], caller.user.name)
        return {"default": _ref(chosen.ref if chosen else None)}

    # ------------------------------------------------------------------ policy
    @router.get("/policy", summary="The operator's policy (operators see all of it, users what applies to them)",
                tags=[TAG])
    def get_policy(caller: Caller = CALLER) -> dict[str, Any]:
        current = policy.load()
        return current.as_dict() if caller.user.operator else current.public_dict()

    @router.put("/policy", summary="Replace the policy (operators; send the revision you loaded)", tags=[TAG])
    def put_policy(body: Any = POLICY_BODY, caller: Caller = CALLER) -> dict[str, Any]:
        require_operator(caller.user, "change the Safe Denoiser policy")  # before judging the body
        new = OperatorPolicy.from_dict(_object(body, "a policy"))
        return policy.save(new, user=caller.user.name, is_operator=caller.user.operator,
                           check_preset=presets.resolve_shared).as_dict()

    @router.patch("/policy", summary="Change some fields of the policy (operators)", tags=[TAG])
    def patch_policy(body: Any = POLICY_BODY, caller: Caller = CALLER) -> dict[str, Any]:
        require_operator(caller.user, "change the Safe Denoiser policy")
        return policy.update(_object(body, "policy changes"), user=caller.user.name,
                             is_operator=caller.user.operator, check_preset=presets.resolve_shared).as_dict()
