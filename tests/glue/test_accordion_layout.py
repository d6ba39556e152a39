"""The accordion's argument elements against the argument model: each says what its field is called
(FIELDS' labels), an untouched accordion hands the script the default arguments, and the bank
element takes several banks, also when an image's infotext is pasted."""

from __future__ import annotations

import gradio as gr
import pytest
from modules import infotext_utils

from lib_safe_denoiser.concepts.args import ConceptArgs
from lib_safe_denoiser.generation.args import FIELDS, SafeDenoiserArgs
from lib_safe_denoiser.generation.script_args import SCRIPT_FIELD_NAMES, SCRIPT_LABELS, ScriptArgs
from tests.glue import harness
from tests.glue.test_accordion import build


def initial_values(script, is_img2img: bool) -> tuple[list, list[dict]]:
    """(the argument components, their config as the page receives it)."""
    _, components, _, by_id, _ = build(script, is_img2img)
    return components, [by_id[c._id]["props"] for c in components]


@pytest.mark.parametrize("is_img2img", [False, True])
def test_each_element_is_labelled_as_its_field(script, is_img2img):
    components, props = initial_values(script, is_img2img)
    assert len(components) == len(SCRIPT_FIELD_NAMES)
    for name, component, prop in zip(SCRIPT_FIELD_NAMES, components, props, strict=True):
        label = "Safe Denoiser" if name == "enabled" else SCRIPT_LABELS[name]  # the accordion is the switch
        assert component.label == label and prop["label"] == label, name


@pytest.mark.parametrize("is_img2img", [False, True])
def test_an_untouched_accordion_sends_the_default_arguments(script, is_img2img):
    """What the WebUI passes to the script (and fills in for API calls that omit the extension) when
    nobody touched the accordion: the argument model's defaults, the extension off."""
    _, props = initial_values(script, is_img2img)
    sent = ScriptArgs.from_script_args([prop.get("value") for prop in props])  # gradio leaves out None
    assert sent == ScriptArgs(SafeDenoiserArgs(), ConceptArgs()) and not sent.enabled


def test_the_bank_element_takes_several_banks_and_starts_with_none(script):
    """Several banks are one negation set. gradio 3.41's multiselect adds a choice with
    ``value.push(choice)``, so its empty value must be a list: null would throw on the first click."""
    components, props = initial_values(script, False)
    bank = props[[f.name for f in FIELDS].index("bank")]
    assert bank["multiselect"] is True and bank.get("value") == []


def test_pasting_an_image_made_with_two_banks_selects_both(script, glue):
    """The WebUI sets each pasted value on its element: the bank multiselect needs the list of names."""
    res = harness.run_job(script, [{"enabled": True, "bank": ["unsafe", "reference"], "preset": "custom",
                                    "mode": "constant", "window_start": 0.0, "window_end": 1.0}], steps=2)
    text = infotext_utils.generation_params_text({"Steps": 2, **res.p.extra_generation_params})
    params = infotext_utils.parse_generation_parameters("a photo\n" + text)
    with gr.Blocks():
        components = script.ui(False)
    pasted = {SCRIPT_FIELD_NAMES[components.index(c)]: read(params) for c, read in script.infotext_fields}
    assert pasted["bank"] == ["unsafe", "reference"] and pasted["enabled"] is True
    assert pasted["mode"] == "constant" and pasted["reference_bank"] is None, "the constant mode has no reference"
