"""Inputs before they reach the store: staging batches, limits, folders, zip uploads, tags."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest
from PIL import Image

from lib_safe_denoiser.banks.images import load_image, perceptual_hash
from lib_safe_denoiser.banks.inputs import (
    IMAGE_EXTENSIONS,
    MAX_TAG_LEN,
    MAX_TAGS,
    MIB,
    InputLimits,
    SkippedFile,
    StagedImage,
    find_images,
    images_from_zip,
    stage_image,
    stage_many,
    validate_tags,
)
from lib_safe_denoiser.errors import BankError
from tests.banks.sample_images import (
    animated,
    encode,
    exif_rotated_jpeg,
    make_zip,
    mark_encrypted,
    noise,
    png,
    scene,
)


def reasons(skipped: list[SkippedFile]) -> dict[str, str]:
    return {s.name: s.reason for s in skipped}


# ---- staging ----------------------------------------------------------------------------------
def test_stage_image_hashes_bytes_and_keeps_paths_unread(tmp_path):
    data = encode(scene(1), "JPEG")
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    staged, n_bytes = stage_image(path)
    assert n_bytes == len(data)
    assert staged == StagedImage(
        hashlib.sha256(data).hexdigest(), "jpg", "photo.jpg", perceptual_hash(load_image(data)), path=path
    )
    named = stage_image(("set/a.jpg", data))[0]
    assert named.source_name == "set/a.jpg" and named.data == data and named.path is None
    anonymous = stage_image(data)[0]
    assert anonymous.source_name == f"{anonymous.sha256[:10]}.jpg"


def test_stage_image_formats_get_their_extension():
    cases = {
        "gif": animated("GIF"),
        "tif": encode(Image.new("RGB", (8, 8)), "TIFF"),
        "webp": encode(scene(2), "WEBP"),
        "bmp": encode(Image.new("RGB", (8, 8)), "BMP"),
        "png": png(),
        "jpg": encode(scene(3), "MPO", save_all=True, append_images=[scene(4)]),  # a phone's multi-picture JPEG
    }
    for ext, data in cases.items():
        assert stage_image(data)[0].ext == ext


def test_in_memory_images_are_stored_as_png():
    img = Image.new("RGBA", (6, 6), (0, 0, 0, 0))
    staged, n_bytes = stage_image(("cutout", img))
    assert n_bytes == len(staged.data)
    assert staged.ext == "png" and staged.source_name == "cutout"
    assert Image.open(io.BytesIO(staged.data)).getpixel((0, 0)) == (128, 128, 128)


def test_source_names_are_cleaned_and_bounded():
    assert stage_image(("a\x00b\tc.png ", png()))[0].source_name == "abc.png"
    long = stage_image(("x" * 300 + "-end.png", png()))[0].source_name
    assert len(long) == 255 and long.endswith("-end.png") and long.startswith("...")


def test_stage_many_reports_bad_files_by_name_and_keeps_the_good(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(encode(scene(1), "PNG"))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "x.png"
    text.write_text("hello")
    full = encode(noise(3, (64, 64)), "PNG")
    result = stage_many(
        [
            good,
            ("rotated.jpg", exif_rotated_jpeg()),
            empty,
            ("again.png", good.read_bytes()),  # same bytes as good.png
            text,
            ("cut.png", full[: len(full) // 3]),
            tmp_path / "missing.png",
            42,
        ]
    )
    assert [s.source_name for s in result.staged] == ["good.png", "rotated.jpg"]
    assert result.duplicates == ["again.png"]
    got = reasons(result.skipped)
    assert list(got) == [str(empty), str(text), "cut.png", str(tmp_path / "missing.png"), "image #8"]
    assert "empty file" in got[str(empty)]
    assert "not an image" in got[str(text)]
    assert "truncated or corrupt" in got["cut.png"]
    assert "file not found" in got[str(tmp_path / "missing.png")]
    assert "expected a file path" in got["image #8"]
    assert result.skipped[0].as_dict() == {"name": str(empty), "reason": got[str(empty)]}


def test_stage_many_accepts_one_source_and_empty_input():
    assert len(stage_many(png()).staged) == 1
    empty = stage_many([])
    assert empty.staged == [] and empty.duplicates == [] and empty.skipped == []


def test_limit_on_the_number_of_files():
    result = stage_many([(f"{i}.png", png(color=(i, 0, 0))) for i in range(5)], InputLimits(max_files=3))
    assert [s.source_name for s in result.staged] == ["0.png", "1.png", "2.png"]
    assert reasons(result.skipped) == {
        "3.png": "over the limit of 3 files per upload",
        "4.png": "over the limit of 3 files per upload",
    }


def test_limit_on_file_bytes_before_reading(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(encode(noise(1, (64, 64)), "PNG"))
    small = png()
    limits = InputLimits(max_file_bytes=len(small) + 1)
    result = stage_many([big, ("small.png", small), ("big-bytes.png", big.read_bytes())], limits)
    assert [s.source_name for s in result.staged] == ["small.png"]
    got = reasons(result.skipped)
    assert set(got) == {str(big), "big-bytes.png"}
    assert all("the limit is 0.0 MiB per file" in r and "file is" in r for r in got.values())


def test_limit_on_total_bytes_counts_staged_images_only():
    images = [(f"{i}.png", encode(noise(i, (32, 32)), "PNG")) for i in range(3)]
    size = max(len(d) for _, d in images)
    limits = InputLimits(max_total_bytes=2 * size + 10)
    result = stage_many([images[0], ("dup.png", images[0][1]), images[1], images[2]], limits)
    assert [s.source_name for s in result.staged] == ["0.png", "1.png"]
    assert result.duplicates == ["dup.png"]
    assert reasons(result.skipped) == {"2.png": "over the limit of 0.0 MiB per upload in total"}


def test_limit_on_pixels():
    sources = [("wide.png", png(size=(100, 100))), ("ok.png", png(size=(10, 10)))]
    result = stage_many(sources, InputLimits(max_pixels=500))
    assert [s.source_name for s in result.staged] == ["ok.png"]
    assert "image too large (100x100" in reasons(result.skipped)["wide.png"]


def test_limits_must_be_positive():
    with pytest.raises(BankError, match="max_files"):
        InputLimits(max_files=0)
    with pytest.raises(BankError, match="max_pixels"):
        InputLimits(max_pixels=0)
    assert InputLimits(max_pixels=None).max_pixels is None
    defaults = InputLimits()
    assert (defaults.max_files, defaults.max_file_bytes, defaults.max_total_bytes) == (1000, 50 * MIB, 1024 * MIB)


# ---- folders ----------------------------------------------------------------------------------
def test_find_images_reports_non_images_and_ignores_clutter(tmp_path):
    (tmp_path / "b.png").write_bytes(png())
    (tmp_path / "A.GIF").write_bytes(animated("GIF"))
    (tmp_path / "c.tiff").write_bytes(encode(Image.new("RGB", (4, 4)), "TIFF"))
    (tmp_path / "d.TIF").write_bytes(encode(Image.new("RGB", (4, 4)), "TIFF"))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "README").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(png())
    (tmp_path / "Thumbs.db").write_bytes(b"x")
    (tmp_path / "__MACOSX").mkdir()
    (tmp_path / "__MACOSX" / "b.png").write_bytes(b"resource fork")
    sub = tmp_path / "sub" / "deeper"
    sub.mkdir(parents=True)
    (sub / "e.jpg").write_bytes(encode(scene(1), "JPEG"))
    (sub / "f.pdf").write_bytes(b"%PDF")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "g.png").write_bytes(png())

    files, skipped = find_images(tmp_path)
    assert [p.name for p in files] == ["A.GIF", "b.png", "c.tiff", "d.TIF"]
    assert reasons(skipped) == {
        "README": f"not an image file type (no extension); images are {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}",
        "notes.txt": f"not an image file type (.txt); images are {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}",
    }
    files, skipped = find_images(tmp_path, recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == [
        "A.GIF",
        "b.png",
        "c.tiff",
        "d.TIF",
        "sub/deeper/e.jpg",
    ]
    assert [s.name for s in skipped] == ["README", "notes.txt", "sub/deeper/f.pdf"]


def test_find_images_errors(tmp_path):
    with pytest.raises(BankError, match="folder not found"):
        find_images(tmp_path / "nope")
    with pytest.raises(BankError, match="no images.*sub-folders are not searched"):
        find_images(tmp_path)
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.png").write_bytes(png())
    with pytest.raises(BankError, match=r"1 other file\(s\), e.g. a.txt"):
        find_images(tmp_path)
    assert len(find_images(tmp_path, recursive=True)[0]) == 1


# ---- zip uploads ------------------------------------------------------------------------------
def test_zip_with_nested_folders_gives_sorted_posix_names(tmp_path):
    members = {
        "set/": b"",
        "set/b/two.png": png(color=(2, 2, 2)),
        "set/a/one.jpg": encode(scene(1), "JPEG"),
        "./top.gif": animated("GIF"),
        "win\\style.png": png(color=(3, 3, 3)),
        "__MACOSX/set/._one.jpg": b"resource fork",
        "set/.DS_Store": b"x",
        "set/desktop.ini": b"x",
        "notes.txt": b"hello",
    }
    data = make_zip(members)
    images, skipped = images_from_zip(data)
    assert [name for name, _ in images] == ["set/a/one.jpg", "set/b/two.png", "top.gif", "win/style.png"]
    assert dict(images)["set/b/two.png"] == members["set/b/two.png"]
    assert [s.name for s in skipped] == ["notes.txt"] and "not an image file type" in skipped[0].reason
    path = tmp_path / "upload.zip"
    path.write_bytes(data)
    assert images_from_zip(path) == (images, skipped)
    staged = stage_many(images)
    assert len(staged.staged) == 4 and staged.skipped == []


def test_zip_slip_and_absolute_names_are_skipped():
    data = make_zip(
        {
            "../evil.png": png(),
            "a/../../evil2.png": png(),
            "/etc/abs.png": png(),
            "C:/win/abs.png": png(),
            "..\\evil3.png": png(),
            "fine/ok.png": png(),
        }
    )
    images, skipped = images_from_zip(data)
    assert [name for name, _ in images] == ["fine/ok.png"]
    got = reasons(skipped)
    assert set(got) == {"../evil.png", "a/../../evil2.png", "/etc/abs.png", "C:/win/abs.png", "..\\evil3.png"}
    assert all(r.startswith("unsafe path in the archive") for r in got.values())
    assert "absolute" in got["/etc/abs.png"] and "'..'" in got["../evil.png"]


def test_zip_bomb_member_is_skipped_by_ratio():
    zeros = bytes(5 * MIB)  # 5 MiB of zeros deflate to ~5 KiB: ~1000:1
    data = make_zip({"bomb.bmp": zeros, "ok.png": png(), "small-flat.bmp": bytes(200_000)})
    images, skipped = images_from_zip(data)
    assert [name for name, _ in images] == ["ok.png", "small-flat.bmp"]  # under the 1 MiB floor: honest
    assert [s.name for s in skipped] == ["bomb.bmp"]
    assert "looks like a zip bomb" in skipped[0].reason and "over the 200:1 limit" in skipped[0].reason


def test_zip_size_and_count_limits():
    members = {f"{i}.bmp": encode(Image.new("RGB", (16, 16), (i, i, i)), "BMP") for i in range(5)}
    size = len(members["0.bmp"])  # BMP: every member the same size
    images, skipped = images_from_zip(make_zip(members, zipfile.ZIP_STORED), InputLimits(max_files=2))
    assert [n for n, _ in images] == ["0.bmp", "1.bmp"]
    assert reasons(skipped) == {f"{i}.bmp": "over the limit of 2 files per upload" for i in (2, 3, 4)}
    images, skipped = images_from_zip(make_zip(members), InputLimits(max_total_bytes=3 * size))
    assert len(images) == 3 and all("per upload in total" in s.reason for s in skipped) and len(skipped) == 2
    big = make_zip({"big.png": encode(noise(1, (64, 64)), "PNG"), "ok.png": png()})
    images, skipped = images_from_zip(big, InputLimits(max_file_bytes=4096))
    assert [n for n, _ in images] == ["ok.png"] and "uncompressed; the limit is" in skipped[0].reason
    with pytest.raises(BankError, match="has 5 entries; the limit is 4"):
        images_from_zip(make_zip(members), InputLimits(max_zip_members=4))


def test_zip_damaged_and_encrypted_members():
    good = png(color=(9, 9, 9))
    data = bytearray(make_zip({"a.png": png(size=(64, 64)), "b.png": good}, zipfile.ZIP_STORED))
    start = data.find(b"IDAT")
    data[start + 8 : start + 20] = bytes(12)  # stored bytes changed: the CRC no longer matches
    images, skipped = images_from_zip(bytes(data))
    assert [n for n, _ in images] == ["b.png"]
    assert skipped[0].name == "a.png" and "damaged in the archive" in skipped[0].reason
    images, skipped = images_from_zip(mark_encrypted(make_zip({"secret.png": good})))
    assert images == [] and "encrypted" in skipped[0].reason


def test_not_a_zip(tmp_path):
    with pytest.raises(BankError, match="the uploaded zip is not a readable zip archive"):
        images_from_zip(png())
    with pytest.raises(BankError, match="zip file not found"):
        images_from_zip(tmp_path / "missing.zip")
    (tmp_path / "fake.zip").write_text("not a zip")
    with pytest.raises(BankError, match="fake.zip is not a readable zip"):
        images_from_zip(tmp_path / "fake.zip")


def test_zip_mixed_upload_end_to_end():
    full = encode(noise(5, (64, 64)), "PNG")
    data = make_zip(
        {
            "good/a.png": encode(scene(1), "PNG"),
            "good/b.jpg": encode(scene(2), "JPEG"),
            "good/copy.png": encode(scene(1), "PNG"),
            "bad/cut.png": full[:100],
            "bad/text.png": b"just text",
            "bad/doc.docx": b"PK",
            "../slip.png": png(),
        }
    )
    images, zip_skipped = images_from_zip(data)
    result = stage_many(images)
    assert [s.source_name for s in result.staged] == ["good/a.png", "good/b.jpg"]
    assert result.duplicates == ["good/copy.png"]
    assert set(reasons(zip_skipped)) == {"bad/doc.docx", "../slip.png"}
    assert set(reasons(result.skipped)) == {"bad/cut.png", "bad/text.png"}


# ---- tags -------------------------------------------------------------------------------------
def test_validate_tags_cleans_and_dedupes():
    assert validate_tags(None) == () and validate_tags("") == ()
    assert validate_tags(" nsfw,  Violence , nsfw,NSFW, , gore ") == ("nsfw", "Violence", "gore")
    assert validate_tags(["art  style", "C++", "v1.5", "Ölgemälde", "日本", "(beta)", "rock & roll"]) == (
        "art style",
        "C++",
        "v1.5",
        "Ölgemälde",
        "日本",
        "(beta)",
        "rock & roll",
    )
    assert validate_tags(("a",) * 50) == ("a",)


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        (["x" * (MAX_TAG_LEN + 1)], "characters long"),
        ([f"t{i}" for i in range(MAX_TAGS + 1)], "at most 20"),
        (["a,b"], "may only contain"),
        (["<script>"], "may only contain"),
        (["tab\x00"], "may only contain"),
        ([3], "must be text"),
        (7, "list of texts"),
        (b"bytes", "list of texts"),
    ],
)
def test_validate_tags_rejects(tags, message):
    with pytest.raises(BankError, match=message):
        validate_tags(tags)
