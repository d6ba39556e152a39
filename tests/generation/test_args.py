"""The validated argument unit: positional and dict forms, presets, the window mapping."""

from __future__ import annotations

import math

import pytest
import torch

from lib_safe_denoiser.concepts.args import ConceptArgs
from lib_safe_denoiser.generation.args import FIELD_NAMES, ArgsError, SafeDenoiserArgs
from lib_safe_denoiser.generation.script_args import ScriptArgs
from lib_safe_denoiser.policy.builtin_presets import CUSTOM, PRESETS, preset_fields, preset_names

SD15_ALPHAS = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)


def test_defaults_are_the_papers_nudity_recipe():
    args = SafeDenoiserArgs()
    assert not args.enabled and args.mode == "paper" and args.strength == 0.33
    cfg = args.replace(enabled=True, bank="nudity").to_config(SD15_ALPHAS)
    assert cfg.mode == "paper" and cfg.scale == 0.33 and cfg.bandwidth == 3.15 and cfg.gate_margin == 1.6
    # 0..22% of denoising is DDPM t 779..999: sigma >= 4.67 on SD 1.x, no upper bound
    assert cfg.sigma_min == pytest.approx(4.66, abs=0.02) and cfg.sigma_max == math.inf


def test_positional_round_trip_and_missing_trailing_defaults():
    args = SafeDenoiserArgs(enabled=True, bank="b", mode="odds", strength=2.0, reference_bank="generic")
    script = ScriptArgs(args, ConceptArgs())
    assert ScriptArgs.from_positional(script.as_positional()) == script
    short = ScriptArgs.from_script_args([True, "b"]).bank
    assert short == SafeDenoiserArgs(enabled=True, bank="b")
    with pytest.raises(ArgsError, match="at most 18"):
        ScriptArgs.from_positional([False] * 19)


def test_the_floor_is_appended_so_older_positional_calls_keep_their_meaning():
    older = [True, "b", "custom", "odds", 2.0, 0.0, 0.95, "generic", 0.1, 3.15, True, 1.6,
             "nudity", 0.05, 100.0, 0.0, 0.3]  # the 17 values a positional call sent before the floor existed
    a = ScriptArgs.from_positional(older)
    assert a.bank.reference_bank == "generic" and a.concepts.concepts == "nudity" and a.bank.smoothing == 0.0
    assert a.concepts.concept_eta == 0.05 and a.concepts.concept_window_end == 0.3
    floored = ScriptArgs.from_positional([*older, 0.5])
    assert floored.bank.smoothing == 0.5 and floored.concepts == a.concepts
    assert ScriptArgs.from_positional(floored.as_positional()) == floored
    cfg = floored.bank.to_config(SD15_ALPHAS)
    assert cfg.mode == "odds" and cfg.smoothing == 0.5
    paper = SafeDenoiserArgs(enabled=True, bank="b", smoothing=0.5).to_config(SD15_ALPHAS)
    assert paper.mode == "paper" and paper.smoothing == 0.0  # the floor is the odds and constant modes' own
    with pytest.raises(ArgsError, match="'smoothing' must be >= 0, got -0.1"):
        SafeDenoiserArgs(smoothing=-0.1)


def test_dict_form_fills_from_preset_and_names_bad_fields():
    person = "a person / memorised image"
    args = ScriptArgs.from_script_args([{"enabled": True, "bank": "anna", "preset": person}]).bank
    assert args.strength == 0.69 and args.bandwidth == 13.15 and not args.gate and args.window_end == 0.24
    explicit = SafeDenoiserArgs.from_dict({"enabled": True, "bank": "anna", "preset": person, "strength": 0.5})
    assert explicit.strength == 0.5
    with pytest.raises(ArgsError, match="unknown field.*'strenght'"):
        SafeDenoiserArgs.from_dict({"strenght": 1.0})
    with pytest.raises(ArgsError, match="'strength' must be a finite number, got 'high'"):
        SafeDenoiserArgs.from_dict({"strength": "high"})
    with pytest.raises(ArgsError, match="'enabled' must be true or false"):
        SafeDenoiserArgs.from_dict({"enabled": "yes"})
    with pytest.raises(ArgsError, match="either one dict"):
        ScriptArgs.check_api_args([{"enabled": True}, 1.0])
    with pytest.raises(ArgsError, match="must be a list"):
        ScriptArgs.check_api_args({"enabled": True})
    # in a Script, the slots after the dict hold the UI defaults the WebUI filled in
    filled = ScriptArgs.from_script_args([{"strength": 0.5}, False, "", "custom", "odds"]).bank
    assert filled.strength == 0.5 and filled.mode == "paper"


def test_several_banks_travel_as_one_canonical_text():
    """The UI's multiselect (a list), the REST list form and "a, b" text all give the same arguments."""
    from_list = SafeDenoiserArgs(bank=["faces", " logos "])
    from_text = SafeDenoiserArgs(bank="faces,logos,  ")
    assert from_list == from_text
    assert from_list.bank == "faces, logos" and from_list.banks == ("faces", "logos")
    assert SafeDenoiserArgs(bank="").banks == () and SafeDenoiserArgs(bank=None).banks == ()


def test_a_saved_presets_name_is_accepted_and_left_for_the_front_end():
    a = SafeDenoiserArgs(preset="my faces", strength=0.9)
    assert a.saved_preset and a.settled().preset == "my faces"
    assert not SafeDenoiserArgs().saved_preset and not SafeDenoiserArgs(preset="custom").saved_preset
    named = SafeDenoiserArgs.from_dict({"enabled": True, "preset": "my faces", "mode": "odds"})
    assert named.banks == () and named.reference_bank == "", "the saved preset may supply the banks"


@pytest.mark.parametrize("fields, message", [
    ({"enabled": True}, "'bank' is required"),
    ({"enabled": True, "bank": "x", "mode": "odds"}, "'reference_bank' is required"),
    ({"mode": "turbo"}, "'mode' must be one of"),
    ({"preset": "../mine"}, "'preset' must be one of .* or the name of a saved preset"),
    ({"bank": ["a", 3]}, "'bank' must be a bank name or a list"),
    ({"bank": "a, b, A"}, "names a bank twice"),
    ({"bank": [f"b{i}" for i in range(17)]}, "at most 16"),
    ({"strength": -0.1}, "'strength' must be >= 0"),
    ({"window_start": 0.5, "window_end": 0.2}, "window_start"),
    ({"prior": 1.0}, "'prior'"),
    ({"bandwidth": 0.0}, "'bandwidth'"),
    ({"bank": "../etc"}, "field 'bank'"),
    ({"strength": math.nan}, "'strength' must be a finite number"),
])
def test_validation_names_the_field(fields, message):
    with pytest.raises(ArgsError, match=message):
        SafeDenoiserArgs(**fields)


def test_presets_are_the_official_recipes_and_read_only():
    assert preset_names()[-1] == CUSTOM and len(PRESETS) == 4
    assert preset_fields(CUSTOM) == {}
    with pytest.raises(TypeError):
        PRESETS["mine"] = PRESETS["nudity (SD 1.x)"]  # type: ignore[index]
    broad = SafeDenoiserArgs().with_preset("inappropriate, broad (I2P)")
    assert (broad.strength, broad.bandwidth, broad.gate, broad.window_end) == (0.03, 1.0, False, 0.2)
    cfg = broad.replace(enabled=True, bank="i2p").to_config(SD15_ALPHAS)
    assert cfg.gate_margin == math.inf
    with pytest.raises(KeyError, match="unknown preset"):
        SafeDenoiserArgs().with_preset("nope")


def test_window_maps_timeline_fractions_to_sigmas():
    args = SafeDenoiserArgs(window_start=0.5, window_end=1.0)
    lo, hi = args.sigma_window(SD15_ALPHAS)
    expected = float(((1 - SD15_ALPHAS[499]) / SD15_ALPHAS[499]).sqrt())
    assert lo == 0.0 and hi == pytest.approx(expected, rel=2e-2)
    odds = SafeDenoiserArgs(enabled=True, bank="b", mode="odds", reference_bank="r", strength=3, prior=0.2)
    cfg = odds.to_config(SD15_ALPHAS)
    assert (cfg.mode, cfg.strength, cfg.prior) == ("odds", 3.0, 0.2)


def test_field_names_are_in_ui_order():
    assert FIELD_NAMES[:5] == ("enabled", "bank", "preset", "mode", "strength")


def test_settled_names_changed_numbers_custom():
    args = SafeDenoiserArgs(enabled=True, bank="b")
    assert args.settled() is args
    changed = args.replace(strength=0.5).settled()
    assert changed.preset == "custom" and changed.strength == 0.5
