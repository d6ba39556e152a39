"""The operator policy: stored by operators only, and applied to every job (enforcement, floors, notes)."""

from __future__ import annotations

import json
import threading

import pytest

from lib_safe_denoiser.generation.args import SafeDenoiserArgs
from lib_safe_denoiser.generation.infotext import (
    KEY_BANK,
    KEY_POLICY,
    KEY_PRESET,
    KEY_PRESET_SCOPE,
    from_infotext,
    policy_infotext,
    to_infotext,
)
from lib_safe_denoiser.policy.builtin_presets import CUSTOM, DEFAULT_PRESET
from lib_safe_denoiser.policy.operator_policy import (
    EnforcementError,
    OperatorPolicy,
    PolicyConflictError,
    PolicyError,
    PolicyStore,
    apply_policy,
    check_enforced_preset,
    locked_settings_in,
    locked_settings_problem,
)
from lib_safe_denoiser.policy.presets_store import (
    SCOPE_BUILTIN,
    SCOPE_GLOBAL,
    SCOPE_USER,
    PresetRef,
    PresetStore,
    ResolvedArgs,
)
from lib_safe_denoiser.policy.users import AccessError

STUDIO = {"banks": ["studio nsfw"], "strength": 0.5, "window_start": 0.0, "window_end": 0.3}


@pytest.fixture
def presets(tmp_path) -> PresetStore:
    store = PresetStore(tmp_path / "presets")
    store.save("studio", STUDIO, scope=SCOPE_GLOBAL, user="op", is_operator=True)
    return store


@pytest.fixture
def policies(tmp_path) -> PolicyStore:
    return PolicyStore(tmp_path / "policy")


def enforcing(**fields) -> OperatorPolicy:
    return OperatorPolicy(enforce=True, preset="studio", **fields)


def user_args(**fields) -> SafeDenoiserArgs:
    return SafeDenoiserArgs(enabled=True, bank="my bank", **fields)


# ------------------------------------------------------------------------------------ applying it
def test_the_default_policy_changes_nothing(presets):
    assert apply_policy(None, OperatorPolicy(), presets.resolve_shared) == (None, [])
    assert apply_policy(SafeDenoiserArgs(), OperatorPolicy(), presets.resolve_shared) == (None, [])
    args = user_args(strength=0.01)
    resolved, notes = apply_policy(args, OperatorPolicy(), presets.resolve_shared)
    assert notes == [] and resolved.args == args.settled() and resolved.banks == ("my bank",)
    assert not resolved.enforced and resolved.fail_closed


def test_a_job_that_did_not_enable_the_extension_gets_the_enforced_preset(presets):
    for not_enabled in (None, SafeDenoiserArgs(), ResolvedArgs(SafeDenoiserArgs(bank="ignored"))):
        resolved, notes = apply_policy(not_enabled, enforcing(), presets.resolve_shared)
        assert notes == ["enforced by the operator with preset 'studio' (global)"]
        assert resolved.banks == ("studio nsfw",) and resolved.preset == PresetRef("studio", SCOPE_GLOBAL)
        assert resolved.args == SafeDenoiserArgs(enabled=True, bank="studio nsfw", preset=CUSTOM, strength=0.5,
                                                 window_end=0.3)
        assert resolved.enforced and resolved.fail_closed


def test_a_builtin_recipe_can_be_enforced_with_the_always_on_banks(presets):
    policy = OperatorPolicy(enforce=True, preset=DEFAULT_PRESET, floor_banks=("nsfw", "celebs"))
    resolved, notes = apply_policy(None, policy, presets.resolve_shared)
    assert resolved.banks == ("nsfw", "celebs") and resolved.args.preset == DEFAULT_PRESET
    assert notes == [f"enforced by the operator with preset '{DEFAULT_PRESET}' (built-in)",
                     "always-on bank 'celebs' added by the operator"]


def test_a_users_own_preset_cannot_shadow_the_enforced_one(presets):
    presets.save("studio", {"banks": ["harmless"], "strength": 0.0}, scope=SCOPE_USER, user="alice")
    resolved, _ = apply_policy(None, enforcing(), presets.resolve_shared)
    assert resolved.banks == ("studio nsfw",) and resolved.args.strength == 0.5
    with pytest.raises(EnforcementError, match="global or built-in"):  # a resolver that looks at users is refused
        apply_policy(None, enforcing(), lambda name: presets.resolve(name, "alice"))


def test_floor_banks_are_added_to_the_users_own(presets):
    resolved, notes = apply_policy(user_args(), OperatorPolicy(floor_banks=("NSFW", "celebs")), presets.resolve_shared)
    assert resolved.banks == ("my bank", "NSFW", "celebs") and resolved.args.bank == "my bank"
    assert notes == ["always-on banks 'NSFW', 'celebs' added by the operator"]
    already = ResolvedArgs(user_args(), ("my bank", "nsfw"))
    resolved, notes = apply_policy(already, OperatorPolicy(floor_banks=("NSFW",)), presets.resolve_shared)
    assert resolved.banks == ("my bank", "nsfw") and notes == []  # names ignore case


def test_a_strength_below_the_minimum_is_raised(presets):
    policy = OperatorPolicy(min_strength=0.3)
    resolved, notes = apply_policy(user_args(strength=0.05), policy, presets.resolve_shared)
    assert resolved.args.strength == 0.3
    assert notes == ["strength raised from 0.05 to 0.3 (the operator's minimum)"]
    resolved, notes = apply_policy(user_args(strength=0.9), policy, presets.resolve_shared)
    assert resolved.args.strength == 0.9 and notes == []


def test_a_window_that_does_not_cover_the_floor_is_widened(presets):
    policy = OperatorPolicy(floor_window=(0.0, 0.22))
    resolved, notes = apply_policy(user_args(window_start=0.1, window_end=0.15), policy, presets.resolve_shared)
    assert (resolved.args.window_start, resolved.args.window_end) == (0.0, 0.22)
    assert notes == ["window widened from 0.1-0.15 to 0-0.22 (the operator requires 0-0.22)"]
    resolved, notes = apply_policy(user_args(window_start=0.0, window_end=0.5), policy, presets.resolve_shared)
    assert (resolved.args.window_start, resolved.args.window_end) == (0.0, 0.5) and notes == []


def test_raising_a_builtin_recipe_marks_it_custom_and_keeps_the_reference(presets):
    args = user_args().with_preset(DEFAULT_PRESET)
    resolved, notes = apply_policy(args, OperatorPolicy(min_strength=0.5), presets.resolve_shared)
    assert resolved.args.preset == CUSTOM and resolved.preset == PresetRef(DEFAULT_PRESET, SCOPE_BUILTIN)
    assert len(notes) == 1


def test_all_floors_at_once_on_an_enforced_job(presets):
    policy = enforcing(floor_banks=("celebs",), min_strength=0.6, floor_window=(0.0, 0.4))
    resolved, notes = apply_policy(SafeDenoiserArgs(enabled=False), policy, presets.resolve_shared)
    assert resolved.banks == ("studio nsfw", "celebs") and resolved.args.strength == 0.6
    assert resolved.args.window_end == 0.4
    assert notes == ["enforced by the operator with preset 'studio' (global)",
                     "always-on bank 'celebs' added by the operator",
                     "strength raised from 0.5 to 0.6 (the operator's minimum)",
                     "window widened from 0-0.3 to 0-0.4 (the operator requires 0-0.4)"]


def test_a_hidden_accordion_replaces_a_non_operators_own_settings(presets):
    policy = enforcing(hide_accordion=True)
    resolved, notes = apply_policy(user_args(strength=2.0), policy, presets.resolve_shared)
    assert resolved.banks == ("studio nsfw",) and resolved.args.strength == 0.5
    assert notes == ["your own settings were replaced by the operator's preset",
                     "enforced by the operator with preset 'studio' (global)"]
    resolved, notes = apply_policy(user_args(strength=2.0), policy, presets.resolve_shared, is_operator=True)
    assert resolved.args.strength == 2.0 and notes == []
    assert policy.hides_from(False) and not policy.hides_from(True)
    assert not OperatorPolicy(hide_accordion=True).hides_from(False)  # only while enforcing


def test_an_enforced_preset_that_cannot_run_refuses_the_job_or_is_noted(presets):
    missing = OperatorPolicy(enforce=True, preset="deleted")
    with pytest.raises(EnforcementError, match="'deleted' no longer exists"):
        apply_policy(None, missing, presets.resolve_shared)
    no_bank = OperatorPolicy(enforce=True, preset=DEFAULT_PRESET)
    with pytest.raises(EnforcementError, match="names no bank"):
        apply_policy(None, no_bank, presets.resolve_shared)
    open_policy = OperatorPolicy(enforce=True, preset="deleted", fail_closed=False)
    resolved, notes = apply_policy(None, open_policy, presets.resolve_shared)
    assert resolved is None
    assert notes == ["not steered although the operator enforces it: the enforced preset 'deleted' no longer "
                     "exists; an operator must choose another in the Safe Denoiser policy"]
    resolved, _ = apply_policy(SafeDenoiserArgs(), enforcing(fail_closed=False), presets.resolve_shared)
    assert not resolved.fail_closed  # a failure later on generates it unsteered, as the operator chose
    resolved, _ = apply_policy(user_args(), enforcing(fail_closed=False), presets.resolve_shared)
    assert resolved.fail_closed  # the user asked for steering: never an unsteered image instead


# ------------------------------------------------------------------------------------ infotext
def test_infotext_names_a_saved_preset_and_the_notes_and_a_paste_never_resolves_it(presets):
    presets.save("faces", {"banks": ["celebs"], "strength": 0.8}, scope=SCOPE_USER, user="alice")
    request = presets.resolve_fields({"enabled": True, "preset": "faces"}, "alice")
    resolved, notes = apply_policy(request, OperatorPolicy(min_strength=0.9), presets.resolve_shared)
    pairs = {**to_infotext(resolved.args, "0123456789", None), **policy_infotext(resolved.preset, notes)}
    assert pairs[KEY_PRESET] == "faces" and pairs[KEY_PRESET_SCOPE] == SCOPE_USER
    assert pairs[KEY_POLICY] == "strength raised from 0.8 to 0.9 (the operator's minimum)"
    assert pairs[KEY_BANK] == "celebs"
    pasted = from_infotext(pairs)
    assert pasted["preset"] == CUSTOM and pasted["strength"] == 0.9
    assert SafeDenoiserArgs(**{**SafeDenoiserArgs().as_dict(), **pasted}) == resolved.args


def test_infotext_adds_nothing_for_a_builtin_recipe_without_notes():
    assert policy_infotext(PresetRef(DEFAULT_PRESET, SCOPE_BUILTIN), []) == {}
    assert policy_infotext(None, ["a", "b"]) == {KEY_POLICY: "a; b"}


# ------------------------------------------------------------------------------------ the policy value
@pytest.mark.parametrize("data, message", [
    ([], "object of named fields"),
    ({"enforced": True}, "unknown policy field"),
    ({"enforce": True}, "'preset' is required"),
    ({"enforce": "yes", "preset": "studio"}, "'enforce' must be true or false"),
    ({"preset": "../x"}, "looks like a path"),
    ({"floor_banks": "nsfw"}, "must be a list"),
    ({"floor_banks": ["a", "A"]}, "twice"),
    ({"floor_banks": ["a\x00"]}, "control characters"),
    ({"min_strength": -0.1}, ">= 0"),
    ({"min_strength": "high"}, "finite number"),
    ({"floor_window": [0.5, 0.1]}, "0 <= start <= end <= 1"),
    ({"floor_window": [0.1]}, r"\[start, end\]"),
    ({"operators": [""]}, "empty"),
    ({"operators": ["a", "a"]}, "twice"),
    ({"locked_settings": ["sd model"]}, "not a settings key"),
    ({"revision": -1}, "revision"),
])
def test_bad_policy_values_are_refused_naming_the_field(data, message):
    with pytest.raises(PolicyError, match=message):
        OperatorPolicy.from_dict(data)


def test_a_policy_round_trips_through_json():
    policy = OperatorPolicy(enforce=True, preset=DEFAULT_PRESET, floor_banks=("a",), min_strength=0.2,
                            floor_window=(0.0, 0.3), operators=("op",), locked_settings=("sd_vae",))
    assert OperatorPolicy.from_dict(json.loads(json.dumps(policy.as_dict()))) == policy
    assert "operators" not in policy.public_dict() and policy.public_dict()["floor_window"] == [0.0, 0.3]
    assert policy.is_operator("op") and not policy.is_operator("alice") and not policy.is_operator(None)


def test_the_enforced_preset_must_exist_and_be_shared(presets):
    check_enforced_preset(enforcing(), presets.resolve_shared)
    with pytest.raises(PolicyError, match="no global or built-in preset"):
        check_enforced_preset(OperatorPolicy(preset="gone"), presets.resolve_shared)
    presets.save("mine", {}, scope=SCOPE_USER, user="alice")
    with pytest.raises(PolicyError, match="a user's preset"):
        check_enforced_preset(OperatorPolicy(preset="mine"), lambda n: presets.resolve(n, "alice"))


# ------------------------------------------------------------------------------------ storage
def test_only_operators_change_the_policy_and_a_refusal_changes_nothing(policies, presets):
    assert policies.load() == OperatorPolicy()
    with pytest.raises(AccessError, match="only operators"):
        policies.update({"enforce": True, "preset": "studio"}, user="alice", is_operator=False)
    with pytest.raises(AccessError):
        policies.save(enforcing(), user="alice", is_operator=False)
    assert not policies.path.exists()
    saved = policies.update({"enforce": True, "preset": "studio", "operators": ["op"]}, user="op", is_operator=True,
                            check_preset=presets.resolve_shared)
    assert saved.revision == 1 and saved.updated_by == "op" and saved.updated
    before = policies.path.read_bytes()
    with pytest.raises(AccessError):
        policies.update({"enforce": False}, user="alice", is_operator=False)
    assert policies.path.read_bytes() == before
    assert PolicyStore(policies.root).load() == saved  # another process reads the same


def test_a_bad_change_is_refused_and_nothing_is_written(policies, presets):
    policies.update({"operators": ["op"]}, user="op", is_operator=True)
    before = policies.path.read_bytes()
    for changes, error, message in (
        ({"enforce": True}, PolicyError, "'preset' is required"),
        ({"enforce": True, "preset": "gone"}, PolicyError, "no global or built-in preset"),
        ({"revision": 7}, PolicyError, "set by the store"),
        ({"floor_banks": ["../x"]}, PolicyError, "looks like a path"),
        ({"operators": ["someone else"]}, PolicyError, "lock you out"),
    ):
        with pytest.raises(error, match=message):
            policies.update(changes, user="op", is_operator=True, check_preset=presets.resolve_shared)
    assert policies.path.read_bytes() == before


def test_saving_a_policy_loaded_before_someone_elses_change_is_a_conflict(policies):
    loaded = policies.load()
    policies.update({"min_strength": 0.2}, user="op1", is_operator=True)
    with pytest.raises(PolicyConflictError, match="reload"):
        policies.save(OperatorPolicy(min_strength=0.5), user="op2", is_operator=True)
    assert policies.load().min_strength == 0.2
    fresh = policies.load()
    saved = policies.save(OperatorPolicy.from_dict({**fresh.as_dict(), "min_strength": 0.5}), user="op2",
                          is_operator=True)
    assert saved.min_strength == 0.5 and saved.revision == fresh.revision + 1 == loaded.revision + 2


@pytest.mark.parametrize("content", [b"{oops", b'{"version": 1, "policy": {"enforce": "maybe"}}', b"[1]"])
def test_a_corrupt_policy_fails_loudly_and_an_operator_repairs_it_by_saving(policies, content):
    policies.root.mkdir(parents=True)
    policies.path.write_bytes(content)
    with pytest.raises(PolicyError, match="corrupt.*refused"):
        policies.load()
    with pytest.raises(PolicyError, match="corrupt"):
        policies.update({"min_strength": 0.1}, user="op", is_operator=True)
    assert policies.path.read_bytes() == content
    repaired = policies.save(OperatorPolicy(min_strength=0.1), user="op", is_operator=True)
    assert policies.load() == repaired and repaired.revision == 1


def test_concurrent_saves_through_separate_stores_lose_nothing(policies):
    """Each writer loads, adds its key and saves, reloading when told of a conflict (as the policy form
    does). Separate stores hold separate lock-file handles, so the OS file lock is what serialises them."""
    rounds = 12

    def add_keys(tag: str) -> None:
        store = PolicyStore(policies.root)
        for i in range(rounds):
            while True:
                current = store.load()
                changed = OperatorPolicy.from_dict({**current.as_dict(),
                                                    "locked_settings": [*current.locked_settings, f"{tag}_{i}"]})
                try:
                    store.save(changed, user="op", is_operator=True)
                    break
                except PolicyConflictError:
                    continue

    threads = [threading.Thread(target=add_keys, args=(tag,)) for tag in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    final = policies.load()
    assert set(final.locked_settings) == {f"{t}_{i}" for t in "ab" for i in range(rounds)}
    assert final.revision == 2 * rounds


# ------------------------------------------------------------------------------------ settings
def test_locked_and_protected_settings_are_named_in_the_refusal():
    policy = OperatorPolicy(locked_settings=("sd_model_checkpoint", "sd_vae"))
    keys = ["sd_vae", "CLIP_stop_at_last_layers", "safe_denoiser_operators"]
    assert locked_settings_in(keys, policy) == ["safe_denoiser_operators", "sd_vae"]
    assert locked_settings_problem(["CLIP_stop_at_last_layers"], policy) is None
    assert locked_settings_problem(["sd_model_checkpoint"], policy) == (
        "safe denoiser: the setting 'sd_model_checkpoint' is locked by the operator of this WebUI and cannot be "
        "changed through the API or override_settings")
    assert "settings 'safe_denoiser_operators', 'sd_vae' are locked" in locked_settings_problem(keys, policy)
