"""The "Safe Denoiser policy" tab: real gradio Blocks; everyone sees the rules, only operators change them."""

from __future__ import annotations

import sys

import gradio as gr
import pytest
from modules import shared

from lib_safe_denoiser.policy.presets_store import SCOPE_GLOBAL
from safe_denoiser_webui.policy_panel import FORM_FIELDS


@pytest.fixture
def panel(glue, banks, monkeypatch):
    monkeypatch.setattr(shared.cmd_opts, "gradio_auth", "alice:pw,root:pw")
    monkeypatch.setattr(shared.cmd_opts, "safe_denoiser_operators", "root")
    glue.PRESET_STORE.save("house", {"banks": ["unsafe"]}, scope=SCOPE_GLOBAL, user="root", is_operator=True,
                           overwrite=True)
    yield sys.modules["scripts.safe_denoiser_tab"].policy_panel()
    for path in (glue.POLICY_STORE.path, *glue.PRESET_STORE.root.rglob("*.json")):
        path.unlink(missing_ok=True)


def values(form: list) -> dict:
    return {f: u["value"] for f, u in zip(FORM_FIELDS, form, strict=False)}


def test_the_tab_builds_with_every_field_wired(panel):
    blocks = panel.build()
    config = blocks.get_config_file()
    ids = {c["props"].get("elem_id") for c in config["components"]}
    assert {f"safe_denoiser_policy_{f}" for f in FORM_FIELDS if f != "window_floor"} | {
        "safe_denoiser_policy_save", "safe_denoiser_policy_reload", "safe_denoiser_policy_status"} <= ids
    assert any(d["trigger"] == "load" for d in config["dependencies"])


def test_users_see_the_rules_and_only_operators_change_them(panel, glue):
    alice, root = gr.Request(username="alice"), gr.Request(username="root")
    *form, status = panel.form(alice)
    assert status == "Only operators may change it; this is what applies to your generations."
    assert all(u["interactive"] is False for f, u in zip(FORM_FIELDS, form, strict=True) if f != "revision")
    assert form[FORM_FIELDS.index("preset")]["choices"][0] == "house"
    assert "unsafe" in form[FORM_FIELDS.index("floor_banks")]["choices"]

    wanted = {**values(panel.form(root)[:-1]), "enforce": True, "preset": "house", "min_strength": 0.4,
              "window_floor": True, "window_start": 0.0, "window_end": 0.3, "locked_settings": "sd_vae, sd_model"}
    refused = panel.save(alice, *[wanted[f] for f in FORM_FIELDS])
    assert refused[-1] == "Not saved: only operators may change the Safe Denoiser policy"
    assert not glue.POLICY_STORE.path.exists()

    saved = panel.save(root, *[wanted[f] for f in FORM_FIELDS])
    assert saved[-1] == "Saved: revision 1."
    policy = glue.POLICY_STORE.load()
    assert policy.enforce and policy.preset == "house" and policy.min_strength == 0.4
    assert policy.floor_window == (0.0, 0.3) and policy.locked_settings == ("sd_vae", "sd_model")
    assert values(saved[:-1])["revision"] == 1

    stale = panel.save(root, *[wanted[f] for f in FORM_FIELDS])  # still says revision 0
    assert stale[-1].startswith("Not saved: the policy was changed by someone else")
    assert glue.POLICY_STORE.load().revision == 1
