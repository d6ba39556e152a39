"""Curation: CLIP scores of real image files against concepts, thresholds, near-duplicates, bad files."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lib_safe_denoiser.concepts.curation import clip_near_duplicates, score_images
from lib_safe_denoiser.concepts.parsing import ConceptError
from tests.banks.sample_images import encode, scene

CONCEPTS = ("nudity", "violence")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    base = tmp_path_factory.mktemp("candidates")
    for i in range(6):
        scene(i).save(base / f"s{i}.png")
    scene(0).resize((120, 90)).save(base / "s0-small.jpg", quality=95)  # the same picture, re-encoded smaller
    (base / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return base


def sources(folder):
    return [(p.name, p) for p in sorted(folder.iterdir())]


def test_scores_are_the_judges_similarities_and_bad_files_are_reported_by_name(judge, folder):
    report = score_images(judge, sources(folder), "nudity, violence", batch_size=3)
    assert [s.name for s in report.scores] == sorted(p.name for p in folder.iterdir() if p.name != "broken.png")
    assert [s.name for s in report.skipped] == ["broken.png"] and "not an image" in report.skipped[0].reason
    with torch.no_grad():
        expected = judge.similarities(judge.pil_batch([Image.open(folder / "s3.png")]), CONCEPTS)[0]
    got = next(s for s in report.scores if s.name == "s3.png")
    assert got.similarities == pytest.approx(expected.tolist(), abs=1e-5)
    assert got.score == max(got.similarities) and got.closest(report.concepts) in CONCEPTS
    assert report.embeddings.shape == (len(report.scores), 32)


def test_the_threshold_selects_exactly_the_files_scoring_above_it(judge, folder):
    report = score_images(judge, sources(folder), CONCEPTS)
    ranked = sorted(report.scores, key=lambda s: s.score)
    threshold = (ranked[2].score + ranked[3].score) / 2
    chosen = report.above(threshold)
    assert {s.name for s in chosen} == {s.name for s in ranked[3:]}
    assert [s.name for s in chosen] == [s.name for s in report.scores if s.name in {c.name for c in chosen}]
    assert report.above(ranked[-1].score) == []  # strictly above
    assert len(report.above(-1.0)) == len(report.scores)


def test_clip_near_duplicates_flag_the_same_picture_re_encoded(judge, folder):
    report = score_images(judge, sources(folder), CONCEPTS)
    emb = report.embeddings
    names = [s.name for s in report.scores]
    same = float(emb[names.index("s0-small.jpg")] @ emb[names.index("s0.png")])
    others = emb @ emb.T
    others[names.index("s0-small.jpg"), names.index("s0.png")] = -1
    others[names.index("s0.png"), names.index("s0-small.jpg")] = -1
    others.fill_diagonal_(-1)
    assert same > float(others.max())  # the random judge still sees the re-encoded copy as the closest
    pairs = report.near_duplicates((same + float(others.max())) / 2)
    assert pairs == [("s0.png", "s0-small.jpg", pytest.approx(same, abs=1e-5))]


def test_in_memory_images_and_bytes_are_scored_too(judge):
    report = score_images(judge, [scene(1), ("upload.jpg", encode(scene(2), "JPEG")), ("bad", 42)], CONCEPTS)
    assert [s.name for s in report.scores] == ["image #1", "upload.jpg"]
    assert report.skipped[0].name == "bad" and "expected a file path" in report.skipped[0].reason


def test_bad_arguments_are_refused(judge):
    with pytest.raises(ConceptError, match="no concepts"):
        score_images(judge, [scene(1)], "")
    with pytest.raises(ConceptError, match="cosine"):
        clip_near_duplicates(torch.ones(2, 3), ["a", "b"], 1.5)
    assert score_images(judge, [], CONCEPTS).embeddings is None
