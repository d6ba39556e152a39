"""Infotext pairs: written for an enabled job, parsed back to the same arguments."""

from __future__ import annotations

from lib_safe_denoiser.generation.args import SafeDenoiserArgs
from lib_safe_denoiser.generation.infotext import INFOTEXT_FIELDS, TraceSummary, from_infotext, to_infotext


def test_round_trip_paper_and_odds():
    for args in (
        SafeDenoiserArgs(enabled=True, bank="nudity", strength=0.25, window_end=0.3, gate_margin=2.0),
        SafeDenoiserArgs(enabled=True, bank="nudity", preset="custom", mode="odds", reference_bank="generic",
                         strength=3.0, prior=0.05, window_start=0.1, window_end=0.9, smoothing=0.5),
        SafeDenoiserArgs(enabled=True, bank="anna").with_preset("a person / memorised image"),
    ):
        pairs = to_infotext(args, "0123456789", TraceSummary(acted_steps=5, total_steps=20, max_beta=0.33))
        assert pairs["Safe denoiser"] == args.bank and pairs["Safe denoiser acted"] == "5/20"
        restored = SafeDenoiserArgs(**{**SafeDenoiserArgs().as_dict(), **from_infotext(pairs)})
        if args.mode == "odds":
            assert restored == args
            assert pairs["Safe denoiser floor"] == "0.5"
        else:  # the odds-only fields are not written for the paper mode
            assert "Safe denoiser floor" not in pairs
            assert restored.replace(prior=args.prior, reference_bank=args.reference_bank) == args


def test_an_odds_image_from_before_the_floor_pastes_without_one():
    """Its infotext has no floor key, and it ran without one: pasting must not keep the slider's value."""
    pairs = {"Safe denoiser": "b", "Safe denoiser mode": "odds", "Safe denoiser reference": "generic"}
    assert from_infotext(pairs)["smoothing"] == 0.0
    assert "smoothing" not in from_infotext({"Safe denoiser": "b", "Safe denoiser mode": "paper"})


def test_pasting_an_image_without_the_extension_disables_it():
    assert from_infotext({"Steps": "20", "Sampler": "Euler a"}) == {"enabled": False}


def test_unreadable_values_are_skipped_not_raised():
    params = {"Safe denoiser": "b", "Safe denoiser strength": "lots", "Safe denoiser window": "a-b"}
    assert from_infotext(params) == {"enabled": True, "bank": "b"}


def test_every_field_has_a_paste_key():
    assert {field for field, _ in INFOTEXT_FIELDS} == set(SafeDenoiserArgs().as_dict())
