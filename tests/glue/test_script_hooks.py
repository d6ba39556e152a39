"""The script's hooks in situations the other glue tests do not set up: a settings file that never
named the WebUI's uncond-skipping options, a user's own private reference bank, a job that
negates two banks, and an unreadable operator policy when a job overrides settings."""

from __future__ import annotations

import pytest
from modules import shared

from lib_safe_denoiser.generation.infotext import KEY_ACTED, KEY_ERROR, KEY_REFERENCE
from tests.glue import harness, oracle
from tests.glue.conftest import last_job, smooth_picture
from tests.glue.test_policy_jobs import policy  # noqa: F401  (fixture: the operator's policy, removed after)
from tests.glue.test_private_banks import with_users  # noqa: F401  (fixture: auth on for alice and bob)
from tests.glue.test_samplers import AND_PROMPTS, constant

UNCOND_OPTIONS = {"skip_early_cond": 0.0, "s_min_uncond_all": False}
"""The WebUI's options that skip uncond passes, with their defaults (modules/shared_options.py, v1.10.1)."""
CFG = 5.0
"""A scale at which the combination depends on it (image 0's AND weights sum to 1.2, not 1)."""
NGMS = {"euler": 1.0, "ddim": 501.0}
"""Negative-guidance minimum sigma per sampler: where it skips on some steps of a 10-step job (DDIM
compares its DDPM timestep, as the WebUI does)."""


def _webui_getattr(self, item: str):
    """modules/options.py Options.__getattr__: a value the settings file holds, else the option's default."""
    if item in self.data:
        return self.data[item]
    if item in self.data_labels:
        return self.data_labels[item].default
    raise AttributeError(item)


@pytest.fixture
def settings_without_uncond_options(monkeypatch):
    """config.json holds only the settings a user changed (Options.load replaces ``opts.data`` with it):
    on most installs it never names these options, and the WebUI reads their defaults."""
    monkeypatch.setattr(type(shared.opts), "__getattr__", _webui_getattr)
    for key, default in UNCOND_OPTIONS.items():
        monkeypatch.delitem(shared.opts.data, key)
        monkeypatch.setitem(shared.opts.data_labels, key, shared.OptionInfo(default))


@pytest.mark.parametrize("sampler", sorted(NGMS))
@pytest.mark.parametrize("ngms", [False, True], ids=["cfg-every-step", "ngms-odd-steps"])
def test_settings_without_the_uncond_options_combine_as_the_webui_does(script, glue, settings_without_uncond_options,
                                                                       sampler, ngms):
    """Without the options the WebUI never skips early steps and, with NGMS, skips only odd steps:
    every call must still be the correction of the prediction it made (CFG 5 with AND weights, where
    the scale matters)."""
    p = harness.Processing(sd_model=shared.sd_model, cfg_scale=CFG, s_min_uncond=NGMS[sampler] if ngms else 0.0)
    probe = harness.Probe()
    res = harness.run_job(script, constant(), sampler=sampler, prompts=AND_PROMPTS, p=p, probe=probe)
    info = res.p.extra_generation_params
    assert KEY_ERROR not in info and len(res.images) == 2
    assert "Skip Early CFG" not in info and "NGMS all steps" not in info
    assert ("NGMS" in info) == ngms, "with NGMS the WebUI skipped the uncond pass on some steps"
    changed = oracle.assert_every_call_corrected(probe.calls, oracle.job_denoiser(glue))
    assert changed == len(probe.calls), "the constant mode changes every prediction in its window"


@pytest.fixture
def alice_reference(glue, with_users, tmp_path):  # noqa: F811
    """alice's own safe reference bank (two of the safe pictures)."""
    paths = []
    for i, prompt in enumerate(harness.SAFE[:2]):
        paths.append(tmp_path / f"safe{i}.png")
        smooth_picture(prompt).save(paths[-1])
    glue.STORE.create("alice-reference", paths, owner="alice", overwrite=True)
    yield "alice-reference"
    glue.STORE.delete("alice-reference")


def odds_with(reference: str) -> list:
    return [{"enabled": True, "bank": "unsafe", "preset": "custom", "mode": "odds", "strength": 1.0,
             "reference_bank": reference, "window_start": 0.0, "window_end": 1.0}]


def test_a_private_reference_bank_serves_its_owner_in_the_odds_mode(script, alice_reference):
    p = harness.Processing(sd_model=shared.sd_model)
    p.user = "alice"
    res = harness.run_job(script, odds_with(alice_reference), p=p)
    info = res.p.extra_generation_params
    assert KEY_ERROR not in info and len(res.images) == 2
    assert info[KEY_REFERENCE] == alice_reference and KEY_ACTED in info, "the job ran steered"

    p = harness.Processing(sd_model=shared.sd_model)
    p.user = "bob"
    res = harness.run_job(script, odds_with(alice_reference), p=p)
    assert res.images == [] and f"no bank named {alice_reference!r}" in res.p.extra_generation_params[KEY_ERROR]


def test_the_diagnostics_of_a_job_with_two_banks_name_both(script, glue):
    """Several banks are one negation set, its images counted in the order the banks were given."""
    names = ["reference", "unsafe"]
    harness.run_job(script, [{"enabled": True, "bank": names, "preset": "custom", "mode": "constant",
                              "window_start": 0.0, "window_end": 1.0}], prompts=[[(harness.UNSAFE, 1.0)],
                                                                                  [(harness.SAFE[0], 1.0)]])
    text, _, nearest = glue.diagnostics(False)
    hashes = ", ".join(glue.STORE.get(name).short_hash for name in names)
    assert text.startswith(f"Bank **reference, unsafe** ({hashes}), mode constant: acted on "), text
    by_bank = [[str(path) for path in glue.STORE.image_paths(name)] for name in names]
    assert nearest == [(by_bank[0] + by_bank[1])[i] for i in last_job(glue).trace.nearest_indices(4)]
    assert all(set(nearest) & set(images) for images in by_bank), "each image lands near its own bank"


def test_an_unreadable_policy_refuses_a_job_that_overrides_settings(script, glue, policy):  # noqa: F811
    """Which settings are locked cannot be known: the job is refused, whatever it asked to override."""
    glue.POLICY_STORE.path.parent.mkdir(parents=True, exist_ok=True)
    glue.POLICY_STORE.path.write_bytes(b"{ broken")
    p = harness.Processing(sd_model=shared.sd_model)
    p.override_settings = {"sd_vae": "other.vae"}
    res = harness.run_job(script, [], p=p)
    error = res.p.extra_generation_params[KEY_ERROR]
    assert res.images == [] and "policy (policy.json) is corrupt" in error
    assert f"Safe denoiser: {error} The images were withheld." in res.p.comments
    assert p.override_settings == {"sd_vae": "other.vae"}, "nothing is dropped on a guess"
