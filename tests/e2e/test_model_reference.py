"""``bank sample`` against the live WebUI: a reference bank of the model's own samples made through its
REST API, then used (and cleaned against the job's bank) by an odds-mode job."""

from __future__ import annotations

import uuid

from lib_safe_denoiser.banks.model_samples import MODEL_SAMPLES_TAG
from lib_safe_denoiser.cli import main
from tests.e2e.conftest import CREDENTIALS, URL
from tests.e2e.test_webui_api import same, steer, txt2img


def test_a_reference_of_model_samples_steers_an_odds_job(webui, banks, capsys):
    name = f"e2e-samples-{uuid.uuid4().hex[:8]}"  # a fresh name: the test passes again without a restart
    login = ["--login", ":".join(CREDENTIALS)] if CREDENTIALS else []
    code = main(["bank", "sample", name, "--url", URL, "--count", "8", "--batch-size", "4", "--width", "64",
                 "--height", "64", "--steps", "4", "--sampler", "Euler", *login])
    assert code == 0, capsys.readouterr().err
    assert f"{name}: 8 samples stored" in capsys.readouterr().out
    info = webui.get(f"/safe-denoiser/v1/banks/{name}").json()["bank"]
    assert info["n_images"] == 8 and info["tags"] == [MODEL_SAMPLES_TAG]

    plain, _ = txt2img(webui)
    steered, meta = txt2img(webui, [steer(banks, mode="odds", strength=1.0, reference_bank=name)])
    params = meta["extra_generation_params"]
    assert "Safe denoiser error" not in params, params
    assert params["Safe denoiser mode"] == "odds" and params["Safe denoiser reference"] == name
    assert not same(plain, steered)
    assert webui.delete(f"/safe-denoiser/v1/banks/{name}").status_code == 200
