"""The accordion in real gradio Blocks, infotext paste, XYZ axes, settings and the REST checks."""

from __future__ import annotations

import types

import gradio as gr
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from modules import script_callbacks, scripts, shared

from lib_safe_denoiser.concepts.args import ConceptArgs
from lib_safe_denoiser.generation.api_validation import ArgsValidationMiddleware
from lib_safe_denoiser.generation.args import SafeDenoiserArgs
from lib_safe_denoiser.generation.infotext import to_infotext
from lib_safe_denoiser.generation.script_args import SCRIPT_FIELD_NAMES, SCRIPT_LABELS, ScriptArgs
from lib_safe_denoiser.policy.builtin_presets import preset_fields
from safe_denoiser_webui.preset_panel import VALUE_FIELDS


def build_ui(script, is_img2img=False):
    script.is_img2img = is_img2img
    with gr.Blocks() as demo:
        components = script.ui(is_img2img)
    return demo, components


def test_ui_returns_one_component_per_field_with_defaults_and_labels(script):
    demo, components = build_ui(script)
    assert len(components) == len(SCRIPT_FIELD_NAMES)
    defaults = ScriptArgs.from_positional([c.value for c in components])
    assert defaults == ScriptArgs(SafeDenoiserArgs(bank=""), ConceptArgs())  # what the API fills in
    assert [c.label for c in components[1:]] == [SCRIPT_LABELS[name] for name in SCRIPT_FIELD_NAMES[1:]]
    assert components[0].accordion.label == "Safe Denoiser" and components[0].elem_id.endswith("-checkbox")
    assert "unsafe" in components[1].choices
    config = demo.get_config_file()
    assert any(c.get("props", {}).get("label") == "Safe Denoiser" for c in config["components"])


def test_preset_choice_fills_the_recipe(glue):
    anyone = glue.current_user(None)
    status, updates = glue.PANEL.load("a person / memorised image", anyone)
    by_field = dict(zip(VALUE_FIELDS, updates, strict=True))
    f = preset_fields("a person / memorised image")
    assert {k: by_field[k]["value"] for k in f} == f and status == "Loaded 'a person / memorised image' (built-in)."
    assert by_field["bank"] == gr.update() and by_field["reference_bank"] == gr.update(), "a recipe names no bank"
    assert glue.PANEL.load("custom", anyone) == ("", [gr.update()] * len(VALUE_FIELDS))


def test_pasting_infotext_restores_the_fields(script, glue):
    _, components = build_ui(script)
    args = SafeDenoiserArgs(enabled=True, bank="unsafe", preset="custom", mode="odds", strength=1.5,
                            window_start=0.1, window_end=0.6, reference_bank="reference", prior=0.2)
    pasted = {k: v for k, v in to_infotext(args, "0123456789", None).items()}
    restored = {}
    for component, read in script.infotext_fields:
        value = read(pasted)
        if value is not None:
            restored[SCRIPT_FIELD_NAMES[components.index(component)]] = value
    assert restored.pop("concepts") == "", "made without concepts: pasting switches them off"
    assert SafeDenoiserArgs(**{**SafeDenoiserArgs().as_dict(), **restored}) == args
    # an image made without the extension switches it off
    enabled_reader = next(read for c, read in script.infotext_fields if c is components[0])
    assert enabled_reader({"Steps": "20"}) is False


def test_diagnostics_panel_shows_plot_and_nearest_images(script, glue):
    from tests.glue import harness

    assert glue.diagnostics(True)[0].startswith("No generation")
    harness.run_job(script, [{"enabled": True, "bank": "unsafe", "preset": "custom", "mode": "odds",
                              "reference_bank": "reference", "window_end": 1.0}])
    text, plot, nearest = glue.diagnostics(False)
    assert "acted on" in text and plot.size[0] > 100 and 1 <= len(nearest) <= 4
    assert all(path.endswith(".png") for path in nearest)


def test_xyz_axes_registered_and_applied(glue):
    class AxisOption:
        def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None,
                     prepare=None):
            self.label, self.type, self.apply, self.choices = label, type, apply, choices

    xyz = types.SimpleNamespace(AxisOption=AxisOption, axis_options=[])
    data = scripts.ScriptClassData(type("Script", (), {"__module__": "xyz_grid.py"}), "xyz_grid.py", "", xyz)
    scripts.scripts_data.append(data)
    try:
        script_callbacks.before_ui_callback()
        script_callbacks.before_ui_callback()  # a UI reload registers nothing twice
    finally:
        scripts.scripts_data.remove(data)
    labels = [a.label for a in xyz.axis_options]
    assert labels == ["[Safe Denoiser] Enabled", "[Safe Denoiser] Strength", "[Safe Denoiser] Bank",
                      "[Safe Denoiser] Mode", "[Safe Denoiser] Window start", "[Safe Denoiser] Window end",
                      "[Safe Denoiser] Bandwidth floor", "[Safe Denoiser] Concepts", "[Safe Denoiser] Concept eta",
                      "[Safe Denoiser] Concept gamma"]
    p = types.SimpleNamespace()
    by_label = {a.label: a for a in xyz.axis_options}
    by_label["[Safe Denoiser] Strength"].apply(p, 0.7, [])
    by_label["[Safe Denoiser] Mode"].apply(p, "odds", [])
    by_label["[Safe Denoiser] Enabled"].apply(p, "True", [])
    by_label["[Safe Denoiser] Concept gamma"].apply(p, 40.0, [])
    by_label["[Safe Denoiser] Bandwidth floor"].apply(p, "0.5", [])
    assert getattr(p, glue.XYZ_ATTR) == {"strength": 0.7, "mode": "odds", "enabled": True, "concept_gamma": 40.0,
                                         "smoothing": 0.5}
    assert "unsafe" in by_label["[Safe Denoiser] Bank"].choices()


def test_settings_are_registered_in_their_section(glue):
    script_callbacks.ui_settings_callback()
    info = shared.opts.data_labels[glue.OPT_STEER_HIRES]
    assert info.section == ("safe_denoiser", "Safe Denoiser") and shared.opts.data[glue.OPT_STEER_HIRES] is True
    assert shared.opts.data[glue.OPT_ENCODE_BATCH] == 4


@pytest.fixture
def api(glue):
    """A FastAPI app with the WebUI's generation routes (echoing what reaches them) and our middleware."""
    app = FastAPI()

    @app.post("/sdapi/v1/txt2img")
    @app.post("/sdapi/v1/img2img")
    async def generate(body: dict):
        return {"received": body}

    @app.post("/sdapi/v1/options")
    async def options(request: Request):
        return {"ok": True}

    script_callbacks.app_started_callback(None, app)
    script_callbacks.app_started_callback(None, app)  # added once
    assert sum(m.cls is ArgsValidationMiddleware for m in app.user_middleware) == 1
    return TestClient(app)


def payload(args):
    return {"prompt": "a cat", "alwayson_scripts": {"Safe Denoiser": {"args": args}}}


@pytest.mark.parametrize("args", [
    [True, "unsafe", "nudity (SD 1.x)", "paper", 0.5],
    [{"enabled": True, "bank": "unsafe", "strength": 0.5}],
    [],
])
def test_api_accepts_good_args_unchanged(api, args):
    for route in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img"):
        r = api.post(route, json=payload(args))
        assert r.status_code == 200 and r.json()["received"] == payload(args)


@pytest.mark.parametrize("args, message", [
    ([{"enabled": True, "bank": "unsafe", "strenght": 0.5}], "unknown field(s) 'strenght'"),
    ([{"strength": "high"}], "field 'strength' must be a finite number, got 'high'"),
    ([True, "unsafe", "nudity (SD 1.x)", "magic"], "field 'mode' must be one of"),
    ([True, "../x"], "field 'bank'"),
    ([{"enabled": True}, 0.5], "not both"),
    ("yes", "must be a list"),
])
def test_api_rejects_bad_args_naming_the_field(api, args, message):
    r = api.post("/sdapi/v1/txt2img", json=payload(args))
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail.startswith("safe denoiser: ") and message in detail


def test_api_passes_other_requests_and_malformed_json_through(api):
    assert api.post("/sdapi/v1/options", json={"x": 1}).json() == {"ok": True}
    r = api.post("/sdapi/v1/txt2img", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and isinstance(r.json()["detail"], list)  # FastAPI's own answer, not ours
