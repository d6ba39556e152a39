"""The infotext as the WebUI writes it into the image and parses it back when pasted: values with
commas (a preset's name, an error message) are quoted by the WebUI and must come back whole."""

from __future__ import annotations

import gradio as gr
from modules import infotext_utils

from lib_safe_denoiser.generation.args import SafeDenoiserArgs
from lib_safe_denoiser.generation.infotext import KEY_ERROR, KEY_PRESET
from lib_safe_denoiser.generation.script_args import SCRIPT_FIELD_NAMES
from tests.glue import harness
from tests.glue.conftest import last_job

PRESET_WITH_COMMA = "inappropriate, broad (I2P)"
WEBUI_PARAMS = {"Steps": 10, "Sampler": "Euler", "CFG scale": 1.0, "Seed": 0, "Size": "64x64"}
"""What processing.create_infotext writes before the extensions' own parameters."""


def image_infotext(p: harness.Processing) -> str:
    """The text stored in the image: the prompt, then the parameter line."""
    return "a photo\n" + infotext_utils.generation_params_text({**WEBUI_PARAMS, **p.extra_generation_params})


def paste(script, text: str) -> dict:
    """The accordion's fields as the WebUI sets them when this infotext is pasted."""
    with gr.Blocks():
        components = script.ui(False)
    params = infotext_utils.parse_generation_parameters(text)
    restored = {}
    for component, read in script.infotext_fields:
        value = read(params)
        if value is not None:
            restored[SCRIPT_FIELD_NAMES[components.index(component)]] = value
    assert restored.pop("concepts") == "", "made without concepts: pasting switches them off"
    return restored


def test_a_preset_name_with_a_comma_survives_the_webuis_infotext(script, glue):
    res = harness.run_job(script, [{"enabled": True, "bank": "unsafe", "preset": PRESET_WITH_COMMA}])
    text = image_infotext(res.p)
    assert f'{KEY_PRESET}: "{PRESET_WITH_COMMA}"' in text, "the WebUI quotes a value with a comma"
    restored = paste(script, text)
    assert restored["preset"] == PRESET_WITH_COMMA
    ran = last_job(glue).args
    assert SafeDenoiserArgs(**{**SafeDenoiserArgs().as_dict(), **restored}) == ran
    assert harness.run_job(script, [restored]).p.extra_generation_params == res.p.extra_generation_params


def test_an_odds_job_pasted_back_is_the_same_job(script, glue):
    args = {"enabled": True, "bank": "unsafe", "preset": "custom", "mode": "odds", "strength": 1.25,
            "reference_bank": "reference", "prior": 0.05, "window_start": 0.1, "window_end": 0.8}
    res = harness.run_job(script, [args])
    restored = paste(script, image_infotext(res.p))
    assert SafeDenoiserArgs(**{**SafeDenoiserArgs().as_dict(), **restored}) == SafeDenoiserArgs(**args)


def test_an_error_message_is_kept_whole(script, glue):
    res = harness.run_job(script, [{"enabled": True, "bank": "no-such-bank"}])
    error = res.p.extra_generation_params[KEY_ERROR]
    assert "," in error or ":" in error
    params = infotext_utils.parse_generation_parameters(image_infotext(res.p))
    assert params[KEY_ERROR] == error and params["Steps"] == "10"
