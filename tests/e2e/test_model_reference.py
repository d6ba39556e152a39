"""``bank sample`` and ``bank vary`` against the live WebUI: a reference bank of the model's own samples,
and a bank of img2img variations of a negation bank, made through its REST API, then used by odds-mode
jobs (the reference cleaned against the job's banks; the variations selected beside their source)."""

from __future__ import annotations

import uuid

from lib_safe_denoiser.banks.model_samples import MODEL_SAMPLES_TAG
from lib_safe_denoiser.banks.variations import VARIATIONS_TAG
from lib_safe_denoiser.cli import main
from tests.e2e.conftest import CREDENTIALS, URL
from tests.e2e.test_webui_api import same, steer, txt2img

LOGIN = ["--login", ":".join(CREDENTIALS)] if CREDENTIALS else []


def test_a_reference_of_model_samples_steers_an_odds_job(webui, banks, capsys):
    name = f"e2e-samples-{uuid.uuid4().hex[:8]}"  # a fresh name: the test passes again without a restart
    code = main(["bank", "sample", name, "--url", URL, "--count", "8", "--batch-size", "4", "--width", "64",
                 "--height", "64", "--steps", "4", "--sampler", "Euler", *LOGIN])
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


def test_variations_of_a_bank_are_made_by_img2img_and_steer_beside_it(webui, banks, capsys):
    name = f"e2e-variations-{uuid.uuid4().hex[:8]}"
    code = main(["bank", "vary", banks["bank"], name, "--url", URL, "--per-image", "2", "--denoising", "0.5",
                 "--width", "64", "--height", "64", "--steps", "4", "--sampler", "Euler", *LOGIN])
    assert code == 0, capsys.readouterr().err
    source = webui.get(f"/safe-denoiser/v1/banks/{banks['bank']}").json()
    made = webui.get(f"/safe-denoiser/v1/banks/{name}").json()
    assert made["bank"]["n_images"] == 2 * source["bank"]["n_images"] and made["bank"]["tags"] == [VARIATIONS_TAG]
    assert not {e["sha256"] for e in made["images"]} & {e["sha256"] for e in source["images"]}, \
        "img2img made new images"

    odds = {"mode": "odds", "strength": 1.0, "reference_bank": banks["reference"]}
    alone, _ = txt2img(webui, [steer(banks, **odds)])
    beside, meta = txt2img(webui, [steer(banks, **odds, bank=[banks["bank"], name])])
    params = meta["extra_generation_params"]
    assert "Safe denoiser error" not in params, params
    assert params["Safe denoiser"] == f"{banks['bank']}, {name}"
    assert not same(alone, beside)
    assert webui.delete(f"/safe-denoiser/v1/banks/{name}").status_code == 200
