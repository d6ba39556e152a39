"""The tab's "Curate with CLIP" section in real gradio Blocks, with a real (tiny, random-weight)
open_clip judge: score uploads or a folder against concepts, re-mark on a slider, add the images
above the threshold to a bank, and flag CLIP near-duplicates."""

from __future__ import annotations

import dataclasses
import zipfile

import pytest

from lib_safe_denoiser.banks import manage
from lib_safe_denoiser.banks.store import BankStore
from tests.banks.sample_images import encode, scene
from tests.browser.app import StandInEncoder, stand_in_services
from tests.concepts.tiny_models import tiny_judge
from tests.glue.test_bank_tab import Driver, build, picture_file, uploaded

SCORE, CLOSEST, ABOVE, ALIKE = (manage.CURATION_COLUMNS.index(c) for c in manage.CURATION_COLUMNS[1:])


@pytest.fixture(scope="module")
def judge():
    return tiny_judge()


@pytest.fixture
def setup(tmp_path, judge):
    store = BankStore(tmp_path / "store")
    loads = []

    def load_judge():
        loads.append(1)
        return judge

    services = dataclasses.replace(stand_in_services(store, StandInEncoder(store), tmp_path / "exports"),
                                   clip_judge=load_judge)
    return build(services), store, loads, tmp_path


def rows(d: Driver) -> list[list]:
    table = d.value("curate_table")
    return table["data"] if isinstance(table, dict) else table.values.tolist()


def candidates(folder) -> list[str]:
    paths = []
    for i in range(4):
        path = folder / f"c{i}.png"
        scene(i).save(path)
        paths.append(str(path))
    copy = folder / "c0-copy.jpg"
    copy.write_bytes(encode(scene(0).resize((150, 112)), "JPEG", quality=95))
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return [*paths, str(copy), str(broken)]


def test_score_mark_and_add_the_images_above_the_threshold(setup):
    d, store, loads, tmp = setup
    d.run(d.tab.create, "click", new_name="unsafe", new_files=uploaded([picture_file(tmp, "seed.png", 99)]))
    d.run(d.tab.curate, "click", curate_files=uploaded(candidates(tmp)), curate_concepts="nudity, violence",
          curate_threshold=-1.0, curate_duplicates=1.0)
    status = d.status()
    assert "Scored 5 image(s) against 'nudity, violence' with tiny_clip/random: 5 above -1" in status
    assert "Skipped broken.png:" in status
    table = rows(d)
    scores = [r[SCORE] for r in table]
    assert scores == sorted(scores, reverse=True) and all(r[ABOVE] == "yes" for r in table)
    assert {r[CLOSEST] for r in table} <= {"nudity", "violence"}

    threshold = (scores[1] + scores[2]) / 2  # the two best images are above it
    d.run(d.tab.curate_threshold, "release", curate_threshold=threshold)
    assert [r[ABOVE] for r in rows(d)] == ["yes", "yes", "", "", ""]
    assert loads == [1]  # re-marking does not score again

    d.run(d.tab.curate_add, "click", bank="unsafe")
    assert "Added 2 image(s) to bank 'unsafe' (now 3)" in d.status()
    added = [e["source_name"] for e in store.image_entries("unsafe")][1:]
    assert sorted(added) == sorted(r[0] for r in table[:2])


def test_near_duplicates_are_flagged_and_a_zip_is_scored(setup, judge):
    d, _, _, tmp = setup
    archive = tmp / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"in/z{i}.png", encode(scene(i), "PNG"))
        zf.writestr("in/z9-copy.png", encode(scene(0), "PNG", compress_level=1))  # other bytes, same picture
    d.run(d.tab.curate, "click", curate_files=uploaded([str(archive)]), curate_concepts="gore",
          curate_threshold=0.9, curate_duplicates=0.5)
    report = d.state[d.tab.curate_report._id]
    cosines = {frozenset((a, b)): c for a, b, c in report.near_duplicates(0.5)}
    same = cosines.pop(frozenset(("set.zip/in/z0.png", "set.zip/in/z9-copy.png")))
    others = max(cosines.values())
    assert same == pytest.approx(1.0, abs=1e-5) and others < same
    d.run(d.tab.curate_duplicates, "release", curate_duplicates=(same + others) / 2)
    alike = {r[0]: r[ALIKE] for r in rows(d)}
    assert alike == {"set.zip/in/z0.png": "", "set.zip/in/z1.png": "", "set.zip/in/z2.png": "",
                     "set.zip/in/z9-copy.png": "set.zip/in/z0.png"}


def test_a_server_folder_is_scored_for_operators(setup):
    d, _, _, tmp = setup
    folder = tmp / "folder"
    folder.mkdir()
    for i in range(2):
        scene(i).save(folder / f"f{i}.png")
    (folder / "notes.txt").write_text("x")
    assert d.run(d.blocks, "load")[d.tab.curate_folder_row]["visible"] is True
    d.run(d.tab.curate_folder, "click", curate_folder_path=str(folder), curate_concepts="nudity",
          curate_threshold=0.5, curate_duplicates=0.95)
    assert "Scored 2 image(s)" in d.status() and "Skipped notes.txt" in d.status()
    assert sorted(r[0] for r in rows(d)) == ["f0.png", "f1.png"]


def test_mistakes_are_answered_in_the_status_and_the_tab_stays_usable(setup):
    d, store, _, tmp = setup
    files = uploaded(candidates(tmp)[:2])
    d.run(d.tab.curate, "click", curate_files=files, curate_concepts=" , ")
    assert "No concepts given" in d.status()
    d.run(d.tab.curate, "click", curate_files=[], curate_concepts="nudity")
    assert "Choose some images" in d.status()
    d.run(d.tab.curate_add, "click", bank=None)
    assert "Choose a bank first" in d.status()
    d.run(d.tab.create, "click", new_name="b", new_files=uploaded([picture_file(tmp, "s.png", 5)]))
    d.run(d.tab.curate_add, "click", bank="b")
    assert "Score some images first" in d.status()
    d.run(d.tab.curate, "click", curate_files=files, curate_concepts="nudity", curate_threshold=0.99)
    d.run(d.tab.curate_add, "click", bank="b")
    assert "no scored image is above the threshold 0.99" in d.status().lower()
    assert store.get("b").n_images == 1


def test_without_a_judge_there_is_no_curation_tab(tmp_path):
    store = BankStore(tmp_path / "store")
    d = build(stand_in_services(store, StandInEncoder(store), tmp_path / "exports"))
    assert not hasattr(d.tab, "curate")
    with pytest.raises(KeyError):
        d.c("curate_table")
