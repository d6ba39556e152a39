"""A job's text concepts: which passes they steer, and what its infotext says of them."""

from __future__ import annotations

import pytest
import torch

from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig
from lib_safe_denoiser.concepts.args import KEY_CONCEPTS, KEY_TRIGGERED, ConceptArgs
from lib_safe_denoiser.concepts.steering import ConceptSteering
from lib_safe_denoiser.generation.args import SafeDenoiserArgs
from lib_safe_denoiser.generation.infotext import KEY_ERROR
from lib_safe_denoiser.generation.job import Job
from tests.concepts.tiny_models import tiny_decoder, tiny_judge

CONCEPTS = ConceptArgs(concepts="nudity, violence")


@pytest.fixture(scope="module")
def judge():
    return tiny_judge()


@pytest.fixture(scope="module")
def decoder():
    return tiny_decoder()


def concept_job(judge, decoder, **fields) -> Job:
    steering = ConceptSteering(judge, ("nudity", "violence"), decoder, chunk_size=8)
    return Job(SafeDenoiserArgs(), (), None, concepts=CONCEPTS, concept_steering=steering, **fields)


def test_a_pass_without_concepts_does_not_get_the_jobs_concept_steering(judge, decoder):
    """Hires fix with the bank correction off: the glue starts that pass with concepts=False."""
    job = concept_job(judge, decoder)
    job.start_pass(None, new_image=True)
    assert job.steering is not None and job.steering.concepts is job.concept_steering
    job.start_pass(None, new_image=False, concepts=False)
    assert job.steering is None, "no bank and no concepts: the pass runs unsteered"
    safe = SafeDenoiser(torch.zeros(1, 4, 2, 2), None, SafeDenoiserConfig(mode="constant"))
    job.start_pass(safe, new_image=False, concepts=False)
    assert job.steering.safe is safe and job.steering.concepts is None


def test_infotext_names_the_concepts_but_no_judged_steps_before_any(judge, decoder):
    info = concept_job(judge, decoder).infotext()
    assert info[KEY_CONCEPTS] == "nudity, violence"
    assert KEY_TRIGGERED not in info, "nothing was judged yet: no count to report"


def test_a_job_whose_concept_steering_could_not_be_built_reports_its_error_alone():
    job = Job(SafeDenoiserArgs(), (), None, concepts=CONCEPTS, concept_steering=None, error="CLIP failed to load")
    assert job.infotext() == {KEY_ERROR: "CLIP failed to load"}
