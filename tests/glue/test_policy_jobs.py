"""Saved presets and the operator's policy applied to real jobs on the stand-in WebUI: enforcement on
jobs that did not ask (API calls without alwayson_scripts, img2img, XYZ axes), each floor, fail closed,
and two users who never see each other's presets."""

from __future__ import annotations

import json

import pytest
import torch
from modules import errors, shared

from lib_safe_denoiser.banks.model_samples import MODEL_SAMPLES_TAG
from lib_safe_denoiser.generation.infotext import (
    KEY_BANK,
    KEY_ERROR,
    KEY_POLICY,
    KEY_PRESET,
    KEY_PRESET_SCOPE,
    KEY_STRENGTH,
    KEY_WINDOW,
)
from lib_safe_denoiser.policy.operator_policy import OperatorPolicy
from lib_safe_denoiser.policy.presets_store import SCOPE_GLOBAL, SCOPE_USER
from safe_denoiser_webui.preset_panel import VALUE_FIELDS
from tests.glue import harness
from tests.glue.conftest import smooth_picture

STEERING = {"mode": "constant", "strength": 1.0, "window_start": 0.0, "window_end": 1.0}
"""A preset that acts on every step (the constant mode has no gate), so its effect is plain to see."""


@pytest.fixture
def policy(glue, banks):
    """Sets the operator's policy for one test (with a global preset 'house' that steers with 'unsafe');
    everything written is removed afterwards."""
    presets, store = glue.PRESET_STORE, glue.POLICY_STORE

    def set_policy(**fields) -> OperatorPolicy:
        current = store.load()
        return store.save(OperatorPolicy(**{"revision": current.revision, **fields}), user="root", is_operator=True,
                          check_preset=presets.resolve_shared)

    presets.save("house", {"banks": ["unsafe"], **STEERING}, scope=SCOPE_GLOBAL, user="root", is_operator=True,
                 overwrite=True)
    yield set_policy
    for path in (store.path, *presets.root.rglob("*.json")):
        path.unlink(missing_ok=True)


@pytest.fixture
def users(monkeypatch):
    """Logins on: alice and bob are users, root is the operator."""
    monkeypatch.setattr(shared.cmd_opts, "gradio_auth", "alice:pw,bob:pw,root:pw")
    monkeypatch.setattr(shared.cmd_opts, "safe_denoiser_operators", "root")


def plain(script, **kwargs) -> harness.JobResult:
    """A job that never mentions the extension (what the WebUI fills in for an API call without
    alwayson_scripts: the UI defaults, extension off)."""
    return harness.run_job(script, [], **kwargs)


def as_user(name: str | None) -> harness.Processing:
    p = harness.Processing(sd_model=shared.sd_model)
    p.user = name
    return p


def moved(a: harness.JobResult, b: harness.JobResult) -> bool:
    return not torch.equal(torch.stack(a.images), torch.stack(b.images))


# ------------------------------------------------------------------------------------ enforcement
def test_enforcement_steers_a_job_that_did_not_ask_and_says_so(script, glue, policy):
    free = plain(script)
    assert KEY_BANK not in free.p.extra_generation_params
    policy(enforce=True, preset="house")
    enforced = plain(script)
    info = enforced.infotexts[-1]
    assert moved(free, enforced) and len(enforced.images) == 2
    assert info[KEY_BANK] == "unsafe" and info[KEY_PRESET] == "house" and info[KEY_PRESET_SCOPE] == SCOPE_GLOBAL
    assert info[KEY_POLICY] == "enforced by the operator with preset 'house' (global)"
    assert info["Safe denoiser acted"] == "10/10"


def test_enforcement_reaches_img2img_and_the_hires_pass_whatever_the_setting(script, glue, policy, monkeypatch):
    init = harness.picture_latent(shared.sd_model, harness.UNSAFE, (8, 8)).expand(2, -1, -1, -1).clone()
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 1  # keep the left half
    free = plain(script, mask=mask, init_latent=init)
    policy(enforce=True, preset="house")
    enforced = plain(script, mask=mask, init_latent=init)
    assert moved(free, enforced) and enforced.infotexts[-1][KEY_BANK] == "unsafe"

    monkeypatch.setitem(shared.opts.data, glue.OPT_STEER_HIRES, False)
    probe = harness.Probe()
    plain(script, hires_hw=(12, 12), probe=probe)
    hires = [call for call in probe.calls if call.x_in.shape[-1] == 12]
    assert hires and all(not torch.equal(c.rows, c.rows_before) for c in hires), "the hires pass is steered"


def test_an_xyz_axis_cannot_switch_enforcement_off_or_go_below_a_floor(script, glue, policy):
    policy(enforce=True, preset="house", min_strength=0.5)
    off = harness.run_job(script, [{"enabled": True, "bank": "unsafe", **STEERING}], xyz={"enabled": False})
    assert off.infotexts[-1][KEY_BANK] == "unsafe" and off.infotexts[-1][KEY_POLICY].startswith("enforced")
    weak = harness.run_job(script, [{"enabled": True, "bank": "unsafe", **STEERING}], xyz={"strength": 0.1})
    assert weak.infotexts[-1][KEY_STRENGTH] == "0.5"
    assert "strength raised from 0.1 to 0.5 (the operator's minimum)" in weak.infotexts[-1][KEY_POLICY]


def test_each_floor_raises_a_request_that_asks_for_less(script, glue, policy, tmp_path):
    smooth_picture(7).save(tmp_path / "x.png")
    glue.STORE.create("floor-extra", [tmp_path / "x.png"], overwrite=True)
    try:
        policy(floor_banks=["floor-extra"], min_strength=0.8, floor_window=[0.1, 0.9])
        asked = {"enabled": True, "bank": "unsafe", **STEERING, "strength": 0.2, "window_start": 0.3,
                 "window_end": 0.5}
        job = harness.run_job(script, [asked])
        info = job.infotexts[-1]
        assert info[KEY_BANK] == "unsafe, floor-extra" and info[KEY_STRENGTH] == "0.8"
        assert info[KEY_WINDOW] == "0.1-0.9"
        assert info[KEY_POLICY] == ("always-on bank 'floor-extra' added by the operator; strength raised from 0.2 "
                                    "to 0.8 (the operator's minimum); window widened from 0.3-0.5 to 0.1-0.9 (the "
                                    "operator requires 0.1-0.9)")
        (built,) = glue.FACTORY._cache.values()
        assert built._negation.size == 6 + 1, "both banks form one negation set"
        untouched = harness.run_job(script, [{**asked, "strength": 1.0, "window_start": 0.0, "window_end": 1.0}])
        assert "strength" not in untouched.infotexts[-1][KEY_POLICY]
    finally:
        glue.STORE.delete("floor-extra")


# ------------------------------------------------------------------------------------ fail closed
def _empty_bank(glue, tmp_path) -> str:
    smooth_picture(8).save(tmp_path / "e.png")
    glue.STORE.create("empty-bank", [tmp_path / "e.png"], overwrite=True)
    path = glue.STORE._manifest_path("empty-bank")
    manifest = json.loads(path.read_text("utf-8"))
    manifest["images"] = []
    path.write_text(json.dumps(manifest), "utf-8")
    return "empty-bank"


def _corrupt_bank(glue, tmp_path) -> str:
    smooth_picture(9).save(tmp_path / "c.png")
    glue.STORE.create("corrupt-bank", [tmp_path / "c.png"], overwrite=True)
    glue.STORE._manifest_path("corrupt-bank").write_bytes(b"{ not json")
    return "corrupt-bank"


@pytest.mark.parametrize("make", [lambda glue, tmp: "missing-bank", _empty_bank, _corrupt_bank],
                         ids=["missing", "empty", "corrupt"])
def test_an_enforced_bank_that_cannot_be_used_refuses_the_job(script, glue, policy, tmp_path, make):
    name = make(glue, tmp_path)
    try:
        glue.PRESET_STORE.save("broken", {"banks": [name], **STEERING}, scope=SCOPE_GLOBAL, user="root",
                               is_operator=True)
        policy(enforce=True, preset="broken")
        job = plain(script)
        assert job.images == [] and shared.state.interrupted, "refused: no image, unsteered or not"
        assert name in job.p.extra_generation_params[KEY_ERROR]
    finally:
        if glue.STORE.exists(name):
            glue.STORE.delete(name)


def test_an_operator_may_let_enforced_jobs_through_unsteered_and_the_image_says_so(script, glue, policy):
    glue.PRESET_STORE.save("gone", {"banks": ["missing-bank"], **STEERING}, scope=SCOPE_GLOBAL, user="root",
                           is_operator=True)
    free = plain(script)
    policy(enforce=True, preset="gone", fail_closed=False)
    job = plain(script)
    assert not moved(free, job) and len(job.images) == 2
    assert "not steered: the bank 'missing-bank' that the operator's policy requires does not exist" in \
        job.infotexts[-1][KEY_POLICY]
    asked = harness.run_job(script, [{"enabled": True, "bank": "missing-bank"}])
    assert asked.images == [], "a user who asked for steering is never handed an unsteered image"


def test_an_enforced_bank_that_fails_to_build_lets_the_job_through_unsteered_when_allowed(script, glue, policy,
                                                                                          tmp_path):
    """The enforced preset's reference bank is the model's samples but too few to clean (3): the denoiser
    cannot be built at the first sampling pass, and an operator who does not fail closed gets the plain
    images with the reason in their infotext."""
    for i in range(3):
        smooth_picture(20 + i).save(tmp_path / f"{i}.png")
    glue.STORE.create("few-samples", sorted(tmp_path.glob("*.png")), tags=[MODEL_SAMPLES_TAG], overwrite=True)
    try:
        glue.PRESET_STORE.save("thin", {"banks": ["unsafe"], **STEERING, "mode": "odds",
                                        "reference_bank": "few-samples"},
                               scope=SCOPE_GLOBAL, user="root", is_operator=True)
        free = plain(script)
        policy(enforce=True, preset="thin", fail_closed=False)
        reported = len(errors.reported)
        job = plain(script)
        assert errors.reported[reported:] == [], "handled by the extension, not swallowed by the WebUI"
        assert not moved(free, job) and len(job.images) == 2 and not shared.state.interrupted
        info = job.infotexts[-1]
        assert KEY_ERROR not in info
        assert "not steered: cannot prepare bank 'unsafe': the reference bank 'few-samples' holds model samples" \
            in info[KEY_POLICY]
    finally:
        glue.STORE.delete("few-samples")


def test_an_enforced_preset_deleted_after_the_policy_was_saved_is_named_in_the_infotext(script, glue, policy):
    glue.PRESET_STORE.save("fleeting", {"banks": ["unsafe"], **STEERING}, scope=SCOPE_GLOBAL, user="root",
                           is_operator=True)
    policy(enforce=True, preset="fleeting", fail_closed=False)
    glue.PRESET_STORE.delete("fleeting", scope=SCOPE_GLOBAL, user="root", is_operator=True)
    free_of_policy = harness.run_job(None, [])
    job = plain(script)
    assert torch.equal(job.samples, free_of_policy.samples) and len(job.images) == 2
    assert "not steered although the operator enforces it" in job.infotexts[-1][KEY_POLICY]
    assert "fleeting" in job.infotexts[-1][KEY_POLICY]


def test_an_unreadable_policy_refuses_every_job(script, glue, policy):
    glue.POLICY_STORE.path.parent.mkdir(parents=True, exist_ok=True)
    glue.POLICY_STORE.path.write_bytes(b"{ broken")
    job = plain(script)
    assert job.images == [] and "policy (policy.json) is corrupt" in job.p.extra_generation_params[KEY_ERROR]


# ------------------------------------------------------------------------------------ users
def test_two_users_never_see_each_others_presets(script, glue, policy, users):
    alice, bob = glue.current_user("alice"), glue.current_user("bob")
    values = [["unsafe"], "constant", 1.0, 0.0, 1.0, "", 0.1, 3.15, True, 1.6, 0.0]
    status, _ = glue.PANEL.save("my faces", False, values, alice)
    assert status == "Saved 'my faces' (personal)."
    assert "my faces" in glue.PANEL.choices(alice) and "my faces" not in glue.PANEL.choices(bob)
    assert glue.PANEL.load("my faces", bob)[0].startswith("Cannot load 'my faces': no preset named 'my faces'")
    assert "house" in glue.PANEL.choices(bob), "global presets are everyone's"

    mine = harness.run_job(script, [True, "", "my faces"], p=as_user("alice"))
    assert mine.infotexts[-1][KEY_PRESET] == "my faces" and mine.infotexts[-1][KEY_PRESET_SCOPE] == SCOPE_USER
    assert mine.infotexts[-1][KEY_BANK] == "unsafe", "the preset's banks"
    theirs = harness.run_job(script, [True, "", "my faces"], p=as_user("bob"))
    assert theirs.images == [] and "no preset named 'my faces'" in theirs.p.extra_generation_params[KEY_ERROR]
    xyz = harness.run_job(script, [True, "unsafe"], p=as_user("bob"), xyz={"preset": "my faces"})
    assert xyz.images == [], "nor through an XYZ axis value"

    assert glue.PANEL.rename("my faces", "ours", bob)[0].startswith("Not renamed")
    assert glue.PANEL.delete("my faces", bob)[0].startswith("Not deleted")
    assert [p.name for p in glue.PRESET_STORE.list(SCOPE_USER, "alice")] == ["my faces"], "nothing changed"


def test_operator_only_actions_are_refused_to_users_and_change_nothing(glue, policy, users):
    bob, root = glue.current_user("bob"), glue.current_user("root")
    values = [[], "constant", 1.0, 0.0, 1.0, "", 0.1, 3.15, True, 1.6, 0.0]
    status, _ = glue.PANEL.save("everyone", True, values, bob)
    assert status.startswith("Not saved: only operators may change global presets")
    assert glue.PANEL.delete("house", bob)[0].startswith("Not deleted: only operators")
    assert [p.name for p in glue.PRESET_STORE.list(SCOPE_GLOBAL)] == ["house"]
    assert glue.PANEL.save("everyone", True, values, root)[0] == "Saved 'everyone' (global)."


def test_the_default_preset_and_the_hidden_accordion_follow_the_user(script, glue, policy, users):
    alice = glue.current_user("alice")
    glue.PANEL.save("mine", False, [["unsafe"], "odds", 0.7, 0.1, 0.6, "reference", 0.2, 3.15, True, 1.6, 0.0], alice)
    assert glue.PANEL.set_default("mine", alice) == "Your default is now 'mine' (personal)."
    status, updates = glue.PANEL.load(glue.PANEL.default(alice).name, alice)
    loaded = {f: u["value"] for f, u in zip(VALUE_FIELDS, updates, strict=True)}
    assert loaded["bank"] == ["unsafe"] and loaded["mode"] == "odds" and loaded["reference_bank"] == "reference"
    assert glue.PANEL.default(glue.current_user("bob")) is None

    assert not glue.accordion_hidden(alice)
    policy(enforce=True, preset="house", hide_accordion=True)
    assert glue.accordion_hidden(alice) and not glue.accordion_hidden(glue.current_user("root"))
    own = harness.run_job(script, [{"enabled": True, "bank": "unsafe", **STEERING, "strength": 0.0}],
                          p=as_user("alice"))
    assert own.infotexts[-1][KEY_PRESET] == "house", "hidden: the operator's preset, not the user's values"
    assert "your own settings were replaced by the operator's preset" in own.infotexts[-1][KEY_POLICY]


def test_locked_settings_are_dropped_from_override_settings(script, glue, policy, users):
    policy(locked_settings=["sd_vae"])
    wanted = {"sd_vae": "other.vae", "CLIP_stop_at_last_layers": 2, "safe_denoiser_steer_hires": False}
    p = as_user("alice")
    p.override_settings = dict(wanted)
    harness.run_job(script, [], p=p)
    assert p.override_settings == {"CLIP_stop_at_last_layers": 2}
    assert ("Safe denoiser: the operator locked safe_denoiser_steer_hires, sd_vae; the override was ignored."
            in p.comments)
    p = as_user("root")
    p.override_settings = dict(wanted)
    harness.run_job(script, [], p=p)
    assert p.override_settings == {"CLIP_stop_at_last_layers": 2, "safe_denoiser_steer_hires": False}, \
        "operators may change the extension's own settings, not the locked ones"


def test_the_page_load_event_loads_the_default_and_hides_the_accordion(script, glue, policy, users):
    import gradio as gr

    script.is_img2img = False
    with gr.Blocks() as demo:
        script.ui(False)
    config = demo.get_config_file()
    ident = {c["props"].get("elem_id"): c["id"] for c in config["components"]}
    button = ident["script_txt2img_safe_denoiser_load_default"]
    (index,) = [i for i, d in enumerate(config["dependencies"]) if d["targets"] == [button]]
    load = demo.fns[index].fn
    alice = glue.current_user("alice")
    glue.PANEL.save("mine", False, [["unsafe"], "constant", 0.7, 0.1, 0.6, "", 0.2, 3.15, True, 1.6, 0.0], alice)
    glue.PANEL.set_default("mine", alice)

    visible, dropdown, status, *values = load(gr.Request(username="alice"))
    assert visible == gr.update(visible=True) and dropdown["value"] == "mine" and "mine" in dropdown["choices"]
    assert status == "Loaded 'mine' (personal)." and values[VALUE_FIELDS.index("strength")]["value"] == 0.7
    visible, dropdown, status, *values = load(gr.Request(username="bob"))
    assert "value" not in dropdown and "mine" not in dropdown["choices"]
    assert values == [gr.update()] * len(VALUE_FIELDS)
    assert status == "Your presets are yours alone; signed in as 'bob'."

    policy(enforce=True, preset="house", hide_accordion=True)
    assert load(gr.Request(username="alice"))[0] == gr.update(visible=False)
    assert load(gr.Request(username="root"))[0] == gr.update(visible=True), "operators keep it"
