"""Saved presets on disk: scopes, isolation between users, validation, and writes from two processes."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from lib_safe_denoiser.generation.args import ArgsError, SafeDenoiserArgs
from lib_safe_denoiser.policy.builtin_presets import CUSTOM, DEFAULT_PRESET, PRESETS, preset_fields
from lib_safe_denoiser.policy.presets_store import (
    MAX_PRESET_BANKS,
    SCOPE_BUILTIN,
    SCOPE_GLOBAL,
    SCOPE_USER,
    PresetConflictError,
    PresetError,
    PresetNotFoundError,
    PresetRef,
    PresetStore,
    ResolvedArgs,
    validate_preset_name,
)
from lib_safe_denoiser.policy.users import AccessError

FACES = {"banks": ["celebrity faces"], "strength": 0.8, "mode": "paper", "window_end": 0.3,
         "description": "my celebrity-faces bank with the paper recipe"}


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "safe_denoiser" / "presets"


@pytest.fixture
def store(root) -> PresetStore:
    return PresetStore(root)


def files_under(path: Path) -> dict[str, bytes]:
    """Every preset file's bytes (lock files excluded: taking a lock may create one)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*.json")} if path.exists() else {}


# ------------------------------------------------------------------------------------ users
def test_a_users_presets_are_invisible_to_another_user(store):
    store.save("faces", FACES, scope=SCOPE_USER, user="alice")
    assert [p.name for p in store.list(SCOPE_USER, "alice")] == ["faces"]
    assert store.list(SCOPE_USER, "bob") == []
    assert "faces" not in [p.name for p in store.visible("bob")]
    with pytest.raises(PresetNotFoundError):
        store.get("faces", scope=SCOPE_USER, user="bob")
    with pytest.raises(PresetNotFoundError) as e:
        store.resolve("faces", "bob")
    assert "alice" not in str(e.value)  # the refusal does not tell whose it is
    with pytest.raises(PresetNotFoundError):
        store.resolve_fields({"preset": "faces", "enabled": True}, "bob")

    # bob's own "faces" is a different preset; each resolves their own
    store.save("faces", {"banks": ["bob bank"], "strength": 0.1}, scope=SCOPE_USER, user="bob")
    assert store.resolve("faces", "alice").numbers.strength == 0.8
    assert store.resolve("faces", "bob").numbers.strength == 0.1
    assert store.resolve("faces", "bob").banks == ("bob bank",)


def test_users_differing_only_in_case_or_with_path_like_names_stay_apart(store, root):
    for user in ("Alice", "alice", "../../etc", "a/b", "ünïcode user", None):
        store.save("mine", {"strength": 0.5}, scope=SCOPE_USER, user=user)
    files = sorted(p for p in files_under(root))
    assert len(files) == 6 and all(f.startswith("users/") and f.count("/") == 1 for f in files)
    assert "users/anonymous.json" in files  # None: the one anonymous user of a WebUI without auth
    assert all(p.resolve().is_relative_to(root.resolve()) for p in root.rglob("*"))
    store.delete("mine", scope=SCOPE_USER, user="Alice")
    assert [p.name for p in store.list(SCOPE_USER, "alice")] == ["mine"]


@pytest.mark.parametrize("user", ["", "   ", "a\x00b", "x" * 300, 7])
def test_a_bad_user_name_is_refused(store, root, user):
    with pytest.raises(PresetError):
        store.save("mine", {}, scope=SCOPE_USER, user=user)
    assert files_under(root) == {}


# ------------------------------------------------------------------------------------ scopes
def test_resolution_order_is_user_then_global_then_builtin(store):
    store.save("studio", {"banks": ["global bank"], "strength": 0.5}, scope=SCOPE_GLOBAL, user="op",
               is_operator=True)
    assert store.resolve("studio", "alice").ref == PresetRef("studio", SCOPE_GLOBAL)
    store.save("studio", {"banks": ["alice bank"], "strength": 0.2}, scope=SCOPE_USER, user="alice")
    assert store.resolve("studio", "alice").ref == PresetRef("studio", SCOPE_USER)
    assert store.resolve("studio", "bob").ref == PresetRef("studio", SCOPE_GLOBAL)
    assert store.resolve_shared("studio").ref == PresetRef("studio", SCOPE_GLOBAL)  # users cannot shadow it
    builtin = store.resolve(DEFAULT_PRESET, "alice")
    assert builtin.scope == SCOPE_BUILTIN and builtin.read_only
    assert [p.scope for p in store.visible("alice")] == [SCOPE_USER, SCOPE_GLOBAL] + [SCOPE_BUILTIN] * len(PRESETS)


def test_builtin_presets_are_the_official_recipes_and_read_only(store, root):
    listed = store.list(SCOPE_BUILTIN)
    assert [p.name for p in listed] == list(PRESETS)
    for p in listed:
        assert {k: p.values()[k] for k in preset_fields(p.name)} == preset_fields(p.name)
        assert p.as_dict()["read_only"] is True
    for attempt in (lambda: store.save("x", {}, scope=SCOPE_BUILTIN, user="op", is_operator=True),
                    lambda: store.rename(DEFAULT_PRESET, "x", scope=SCOPE_BUILTIN, user="op", is_operator=True),
                    lambda: store.delete(DEFAULT_PRESET, scope=SCOPE_BUILTIN, user="op", is_operator=True)):
        with pytest.raises(AccessError, match="read-only"):
            attempt()
    assert files_under(root) == {}
    with pytest.raises(PresetError, match="unknown preset scope"):
        store.list("everyone")


def test_global_writes_need_an_operator_and_a_refusal_changes_nothing(store, root):
    store.save("studio", FACES, scope=SCOPE_GLOBAL, user="op", is_operator=True)
    before = files_under(root)
    for attempt in (lambda: store.save("other", FACES, scope=SCOPE_GLOBAL, user="alice"),
                    lambda: store.save("studio", {}, scope=SCOPE_GLOBAL, user="alice", overwrite=True),
                    lambda: store.rename("studio", "mine", scope=SCOPE_GLOBAL, user="alice"),
                    lambda: store.delete("studio", scope=SCOPE_GLOBAL, user="alice")):
        with pytest.raises(AccessError, match="only operators"):
            attempt()
    assert files_under(root) == before
    assert [p.name for p in store.list(SCOPE_GLOBAL)] == ["studio"]
    assert [p.name for p in store.list(SCOPE_GLOBAL, "bob")] == ["studio"]  # visible to everyone


# ------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("name, message", [
    ("../x", "looks like a path"),
    ("a\x00b", "control characters"),
    ("x" * 10_000, "10000 characters long"),
    ("", "empty"),
    (".hidden", "must not start with '.'"),
    ("custom", "reserved"),
    ("Custom", "reserved"),
    ("nudity (SD 1.x)", "may only contain"),  # a built-in's name cannot be taken
    (None, "must be text"),
])
def test_bad_preset_names_are_refused_and_nothing_is_written(store, root, name, message):
    for scope, operator in ((SCOPE_USER, False), (SCOPE_GLOBAL, True)):
        with pytest.raises(PresetError, match=message) as e:
            store.save(name, FACES, scope=scope, user="alice", is_operator=operator)
        assert "preset name" in str(e.value) or "reserved" in str(e.value) or "text" in str(e.value)
    store.save("ok", FACES, scope=SCOPE_USER, user="alice")
    before = files_under(root)
    with pytest.raises(PresetError, match=message):
        store.rename("ok", name, scope=SCOPE_USER, user="alice")
    assert files_under(root) == before


@pytest.mark.parametrize("payload, message", [
    (["banks"], "expected an object"),
    ({"bank": "faces"}, "use 'banks'"),
    ({"colour": "red"}, "unknown field"),
    ({"banks": "faces"}, "must be a list"),
    ({"banks": ["../etc"]}, r"banks\[0\].*looks like a path"),
    ({"banks": ["a", "A"]}, "listed twice"),
    ({"banks": [f"b{i}" for i in range(MAX_PRESET_BANKS + 1)]}, "at most"),
    ({"strength": "high"}, "'strength' must be a finite number"),
    ({"strength": -1}, "'strength' must be >= 0"),
    ({"strength": float("nan")}, "finite"),
    ({"window_start": 0.5, "window_end": 0.1}, "window_start"),
    ({"mode": "loud"}, "'mode' must be one of"),
    ({"banks": ["faces"], "mode": "odds"}, "'reference_bank' is required"),
    ({"reference_bank": "a/b"}, "reference_bank"),
    ({"gate": "yes"}, "'gate' must be true or false"),
    ({"description": 5}, "description must be text"),
    ({"description": "x" * 5000}, "description is 5000"),
])
def test_bad_payloads_are_refused_naming_the_field_and_nothing_is_written(store, root, payload, message):
    with pytest.raises(PresetError, match=message):
        store.save("faces", payload, scope=SCOPE_USER, user="alice")
    assert files_under(root) == {}


def test_a_saved_preset_holds_every_field_and_round_trips(store, root):
    saved = store.save("faces", FACES, scope=SCOPE_USER, user="alice")
    assert saved.numbers == SafeDenoiserArgs(preset=CUSTOM, strength=0.8, window_end=0.3)
    again = store.get("faces", scope=SCOPE_USER, user="alice")
    assert again == saved and again.created and again.updated
    entry = json.loads(next(iter(files_under(root).values())))["presets"][0]
    assert set(entry) >= {"name", "banks", "description", "mode", "strength", "window_start", "window_end",
                          "reference_bank", "prior", "bandwidth", "gate", "gate_margin"}
    assert saved.as_dict()["banks"] == ["celebrity faces"] and saved.as_dict()["scope"] == SCOPE_USER


def test_overwrite_keeps_created_and_names_are_unique_ignoring_case(store):
    first = store.save("faces", FACES, scope=SCOPE_USER, user="alice")
    with pytest.raises(PresetConflictError, match="already exists"):
        store.save("faces", FACES, scope=SCOPE_USER, user="alice")
    with pytest.raises(PresetConflictError, match="ignore case"):
        store.save("FACES", FACES, scope=SCOPE_USER, user="alice")
    second = store.save("faces", {**FACES, "strength": 0.9}, scope=SCOPE_USER, user="alice", overwrite=True)
    assert second.created == first.created and second.numbers.strength == 0.9


def test_rename_and_delete_carry_my_default_along(store):
    store.save("faces", FACES, scope=SCOPE_USER, user="alice")
    store.save("other", {}, scope=SCOPE_USER, user="alice")
    store.set_default("faces", "alice")
    renamed = store.rename("faces", "Faces v2", scope=SCOPE_USER, user="alice")
    assert renamed.numbers == store.get("Faces v2", scope=SCOPE_USER, user="alice").numbers
    assert store.default("alice").name == "Faces v2"
    with pytest.raises(PresetConflictError):
        store.rename("other", "faces V2", scope=SCOPE_USER, user="alice")
    assert store.rename("Faces v2", "faces v2", scope=SCOPE_USER, user="alice").name == "faces v2"  # case only
    with pytest.raises(PresetNotFoundError):
        store.rename("gone", "x", scope=SCOPE_USER, user="alice")
    store.delete("faces v2", scope=SCOPE_USER, user="alice")
    assert store.default("alice") is None
    with pytest.raises(PresetNotFoundError):
        store.delete("faces v2", scope=SCOPE_USER, user="alice")
    assert [p.name for p in store.list(SCOPE_USER, "alice")] == ["other"]


def test_my_default_is_per_user_and_can_name_any_visible_preset(store):
    store.save("studio", FACES, scope=SCOPE_GLOBAL, user="op", is_operator=True)
    store.save("mine", FACES, scope=SCOPE_USER, user="alice")
    assert store.set_default("studio", "alice").ref == PresetRef("studio", SCOPE_GLOBAL)
    assert store.set_default(DEFAULT_PRESET, "bob").scope == SCOPE_BUILTIN
    assert store.default("alice").name == "studio" and store.default("bob").name == DEFAULT_PRESET
    with pytest.raises(PresetNotFoundError):
        store.set_default("mine", "bob")  # alice's preset does not exist for bob
    store.delete("studio", scope=SCOPE_GLOBAL, user="op", is_operator=True)
    assert store.default("alice") is None  # its preset is gone
    store.set_default("mine", "alice")
    store.set_default(None, "alice")
    assert store.default("alice") is None and store.default("carol") is None


# ------------------------------------------------------------------------------------ jobs
def test_a_request_naming_a_saved_preset_resolves_in_the_callers_scope(store):
    store.save("faces", FACES, scope=SCOPE_USER, user="alice")
    r = store.resolve_fields({"enabled": True, "preset": "faces", "strength": 0.6}, "alice")
    assert r.preset == PresetRef("faces", SCOPE_USER) and r.banks == ("celebrity faces",)
    assert r.args == SafeDenoiserArgs(enabled=True, bank="celebrity faces", preset=CUSTOM, strength=0.6,
                                      window_end=0.3)
    own = store.resolve_fields({"enabled": True, "preset": "faces", "bank": "other"}, "alice")
    assert own.banks == ("other",) and own.args.bank == "other" and own.args.strength == 0.8
    blank = store.resolve_fields({"enabled": True, "preset": "faces", "bank": "  "}, "alice")
    assert blank.banks == ("celebrity faces",)
    with pytest.raises(ArgsError, match="unknown field"):
        store.resolve_fields({"preset": "faces", "loudness": 3}, "alice")


def test_a_request_naming_a_builtin_or_no_preset_keeps_the_argument_models_rules(store):
    r = store.resolve_fields({"enabled": True, "bank": "nudity", "preset": DEFAULT_PRESET}, "alice")
    assert r.preset == PresetRef(DEFAULT_PRESET, SCOPE_BUILTIN) and r.banks == ("nudity",)
    tweaked = store.resolve_fields({"enabled": True, "bank": "nudity", "strength": 2.0}, "alice")
    assert tweaked.preset is None and tweaked.args.preset == CUSTOM  # no longer the recipe's numbers
    with pytest.raises(ArgsError, match="'bank' is required"):
        store.resolve_fields({"enabled": True}, "alice")
    with pytest.raises(ValueError, match="must come first in banks"):
        ResolvedArgs(SafeDenoiserArgs(enabled=True, bank="a"), ("b",))


def test_another_store_on_the_same_directory_sees_every_change_at_once(root):
    mine, theirs = PresetStore(root), PresetStore(root)
    mine.save("faces", FACES, scope=SCOPE_USER, user="alice")
    assert theirs.resolve("faces", "alice").numbers.strength == 0.8
    mine.save("faces", {**FACES, "strength": 0.1}, scope=SCOPE_USER, user="alice", overwrite=True)
    assert theirs.resolve("faces", "alice").numbers.strength == 0.1
    mine.delete("faces", scope=SCOPE_USER, user="alice")
    with pytest.raises(PresetNotFoundError):
        theirs.resolve("faces", "alice")


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"version": 99, "presets": []}',
                                     b'{"version": 1, "scope": "global", "user": null, "presets": [{"name": "../x"}]}'])
def test_a_corrupt_file_is_reported_and_never_overwritten(store, root, content):
    root.mkdir(parents=True)
    (root / "global.json").write_bytes(content)
    with pytest.raises(PresetError, match="global presets file .* corrupt"):
        store.list(SCOPE_GLOBAL)
    with pytest.raises(PresetError, match="corrupt"):
        store.resolve("anything", "alice")
    with pytest.raises(PresetError, match="corrupt"):
        store.save("new", {}, scope=SCOPE_GLOBAL, user="op", is_operator=True)
    assert (root / "global.json").read_bytes() == content
    assert store.resolve(DEFAULT_PRESET, "alice").scope == SCOPE_BUILTIN  # the recipes need no file


def test_validate_preset_name_accepts_what_bank_names_accept():
    for name in ("faces", "Faces v2", "a.b_c-d", "x" * 64):
        assert validate_preset_name(name) == name


# ------------------------------------------------------------------------------------ processes
ROUNDS = 20


def _save_many(root: str, tag: str, rounds: int, start) -> None:
    """One process's share of the concurrent test: its own names into one shared user and the global scope."""
    store = PresetStore(root)
    start.wait()
    for i in range(rounds):
        store.save(f"{tag}-{i}", {"strength": i / 100}, scope=SCOPE_USER, user="shared user")
        store.save(f"{tag}-g{i}", {"strength": i / 100}, scope=SCOPE_GLOBAL, user="op", is_operator=True)
        if i % 5 == 4:
            store.rename(f"{tag}-{i}", f"{tag}-r{i}", scope=SCOPE_USER, user="shared user")


def test_two_processes_saving_at_once_lose_nothing(root):
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_save_many, args=(str(root), tag, ROUNDS, start)) for tag in ("p1", "p2")]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    store = PresetStore(root)
    expected_user = {f"{t}-{'r' if i % 5 == 4 else ''}{i}" for t in ("p1", "p2") for i in range(ROUNDS)}
    assert {p.name for p in store.list(SCOPE_USER, "shared user")} == expected_user
    assert {p.name for p in store.list(SCOPE_GLOBAL)} == {f"{t}-g{i}" for t in ("p1", "p2") for i in range(ROUNDS)}
    assert store.get("p2-g7", scope=SCOPE_GLOBAL).numbers.strength == 0.07
