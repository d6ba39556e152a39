"""The accordion as the WebUI renders it: element ids (what page automation and the e2e tests find),
slider ranges, translatable strings, and what each of its events does."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest

from lib_safe_denoiser.concepts.args import ConceptArgs
from lib_safe_denoiser.generation.args import FIELD_NAMES, SafeDenoiserArgs
from lib_safe_denoiser.generation.script_args import SCRIPT_FIELD_NAMES
from lib_safe_denoiser.policy.builtin_presets import PRESETS, preset_fields, preset_names
from tests.glue import harness

LOCALIZATION = Path(__file__).resolve().parents[2] / "localizations" / "en.json"
HELPERS = ("refresh", "show_diagnostics", "plot", "nearest")
"""Elements that are not arguments: the bank refresh button and the diagnostics panel."""
SLIDERS = {
    "strength": (0.0, 3.0, 0.01),
    "window_start": (0.0, 1.0, 0.01),
    "window_end": (0.0, 1.0, 0.01),
    "prior": (0.001, 0.999, 0.001),
    "bandwidth": (0.05, 30.0, 0.05),
    "gate_margin": (0.0, 10.0, 0.05),
    "smoothing": (0.0, 3.0, 0.05),
}
"""(minimum, maximum, step): the windows span the whole timeline and the prior its open interval in
steps of 0.001; the others start at their smallest valid value and reach past every preset."""
CONCEPT_SLIDERS = {
    "concept_eta": (0.0, 0.5, 0.005),
    "concept_gamma": (0.0, 300.0, 1.0),
    "concept_window_start": (0.0, 1.0, 0.01),
    "concept_window_end": (0.0, 1.0, 0.01),
}
"""(minimum, maximum, step) of the concept sliders: eta over the CLIP similarities a prompt and its image
reach in practice (the argument model takes up to 1), gamma up to the SAFREE-style steps that
saturate, the window over the whole timeline."""
RECIPE = ("mode", "strength", "bandwidth", "gate", "window_start", "window_end")
"""What choosing a preset sets, in the order of the preset event's outputs."""
NEAREST_SHOWN = 4
"""How many nearest bank images the diagnostics panel shows: one gallery row."""


def build(script, is_img2img: bool):
    script.is_img2img = is_img2img
    with gr.Blocks() as demo:
        components = script.ui(is_img2img)
    config = demo.get_config_file()
    by_id = {c["id"]: c for c in config["components"]}
    elements = {c["props"].get("elem_id"): c for c in config["components"] if c["props"].get("elem_id")}
    return demo, components, config, by_id, elements


@pytest.mark.parametrize("is_img2img", [False, True])
def test_every_element_has_its_documented_id(script, is_img2img):
    _, components, _, _, elements = build(script, is_img2img)
    prefix = f"script_{'img2img' if is_img2img else 'txt2img'}_safe_denoiser_"
    ids = [c.elem_id for c in components]
    assert ids[0] == f"{prefix}enabled-checkbox" and components[0].accordion_id == f"{prefix}enabled"
    assert ids[1:] == [prefix + name for name in SCRIPT_FIELD_NAMES[1:]]
    assert elements[f"{prefix}enabled"]["type"] == "accordion"
    for helper in HELPERS:
        assert prefix + helper in elements


def checked_sliders(script, table: dict[str, tuple[float, float, float]]):
    """The accordion's elements by field, after checking each slider of ``table`` spans its (minimum,
    maximum, step)."""
    _, components, _, _, _ = build(script, False)
    by_field = dict(zip(SCRIPT_FIELD_NAMES, components, strict=True))
    for name, span in table.items():
        slider = by_field[name]
        assert isinstance(slider, gr.Slider) and (slider.minimum, slider.maximum, slider.step) == span, name
    return by_field


def test_sliders_span_their_ranges_and_hold_every_preset(script):
    checked_sliders(script, SLIDERS)
    defaults = SafeDenoiserArgs()
    for name, (low, high, _) in SLIDERS.items():
        values = [getattr(defaults, name)] + [preset_fields(p).get(name) for p in PRESETS]
        assert all(low <= v <= high for v in values if v is not None), name
        SafeDenoiserArgs(**{name: low if name != "window_end" else high})  # the ends are valid arguments


def test_concept_fields_start_at_the_argument_models_defaults_within_its_bounds(script):
    by_field = checked_sliders(script, CONCEPT_SLIDERS)
    defaults = ConceptArgs()
    for name, (low, high, _) in CONCEPT_SLIDERS.items():
        assert by_field[name].value == getattr(defaults, name), name
        ConceptArgs(**{name: low})  # both ends are valid arguments
        ConceptArgs(**{name: high})
    concepts = by_field["concepts"]
    assert isinstance(concepts, gr.Textbox) and concepts.value == defaults.concepts == ""
    assert concepts.placeholder == "nudity, violence", "the hint shows the comma-separated form"


def test_strings_are_translatable_and_the_panels_start_closed(script):
    """Every label, title and button text has an entry in the localization file."""
    _, components, config, by_id, elements = build(script, False)
    keys = set(json.loads(LOCALIZATION.read_text("utf-8")))
    texts = [c["props"].get("label") for c in config["components"] if c["type"] not in ("form", "row")]
    texts += [c["props"]["value"] for c in config["components"] if c["type"] == "button"]
    shown = [t for t in texts if t and t != "\U0001f504"]
    assert shown and set(shown) <= keys, set(shown) - keys
    unlabelled = [i for i, c in elements.items() if c["type"] != "button" and not c["props"].get("label")]
    assert unlabelled == [], "every element but a button says what it is"
    accordions = [c for c in config["components"] if c["type"] == "accordion"]
    titles = ["Safe Denoiser", "Advanced", "Concepts (CLIP)", "Presets", "Diagnostics of the last generation"]
    assert [a["props"]["label"] for a in accordions] == titles
    assert not any(a["props"]["open"] for a in accordions)
    prefix = "script_txt2img_safe_denoiser_"
    refresh = elements[prefix + "refresh"]["props"]
    assert refresh["value"] == "\U0001f504" and refresh["elem_classes"] == ["tool"], "a WebUI tool button"
    assert elements[prefix + "plot"]["props"]["interactive"] is False, "the plot is output only"
    assert elements[prefix + "nearest"]["props"]["grid_cols"] == NEAREST_SHOWN
    assert elements[prefix + "show_diagnostics"]["props"]["value"] == "Show"
    summary = [c for c in config["components"] if c["type"] == "markdown"]
    assert [s["props"]["value"] for s in summary] == [""]
    assert set(by_id[components[3]._id]["props"]["choices"]) == {("odds", "odds"), ("paper", "paper"),
                                                                  ("constant", "constant")}
    assert by_id[components[2]._id]["props"]["choices"] == preset_names()


@pytest.mark.parametrize("is_img2img", [False, True])
def test_events_do_what_their_elements_say(script, glue, is_img2img):
    demo, components, config, by_id, elements = build(script, is_img2img)
    tab = "img2img" if is_img2img else "txt2img"
    ident = {c["props"].get("elem_id"): c["id"] for c in config["components"]}
    field = {name: components[i]._id for i, name in enumerate(SCRIPT_FIELD_NAMES)}
    summary = next(c["id"] for c in config["components"] if c["type"] == "markdown")
    events = {(tuple(d["targets"]), d["trigger"]): (d, demo.fns[i]) for i, d in enumerate(config["dependencies"])}

    dep, fn = events[((field["preset"],), "input")]
    status = ident[f"script_{tab}_safe_denoiser_preset_status"]
    values = [field[name] for name in FIELD_NAMES if name not in ("enabled", "preset")]
    assert dep["inputs"] == [field["preset"]] and dep["outputs"] == [status, *values]
    assert dep["show_progress"] == "hidden"
    chosen = preset_fields("a person / memorised image")
    loaded = dict(zip(FIELD_NAMES[1:2] + FIELD_NAMES[3:], fn.fn("a person / memorised image", None)[1:], strict=True))
    assert {k: loaded[k]["value"] for k in RECIPE} == {k: chosen[k] for k in RECIPE}
    assert fn.fn("custom", None)[1:] == [gr.update()] * len(values), "custom keeps the user's numbers"

    dep, fn = events[((ident[f"script_{tab}_safe_denoiser_refresh"],), "click")]
    assert dep["inputs"] == [] and dep["outputs"] == [field["bank"], field["reference_bank"]]
    assert dep["show_progress"] == "hidden"
    assert fn.fn(None) == [glue.bank_choices(None)] * 2 and "unsafe" in glue.bank_choices(None)["choices"]

    for name in ("bank", "reference_bank"):
        dep, fn = events[((field[name],), "focus")]
        assert dep["inputs"] == [] and dep["outputs"] == [field[name]] and dep["show_progress"] == "hidden"
        assert fn.fn(None) == glue.bank_choices(None)

    dep, fn = events[((ident[f"script_{tab}_safe_denoiser_show_diagnostics"],), "click")]
    assert dep["inputs"] == []
    assert dep["outputs"] == [summary, ident[f"script_{tab}_safe_denoiser_plot"],
                              ident[f"script_{tab}_safe_denoiser_nearest"]]
    assert fn.fn(None) == ("No generation with the safe denoiser yet.", None, [])
    harness.run_job(script, [{"enabled": True, "bank": "unsafe", "mode": "constant", "preset": "custom"}], steps=2)
    text = fn.fn(None)[0]
    assert text == glue.diagnostics(is_img2img)[0], "the panel of its own tab"
    assert text.startswith("Bank **unsafe**"), "the job ran on this tab's script"
    assert glue.diagnostics(not is_img2img)[0] == "No generation with the safe denoiser yet.", "not on the other tab"
