"""The "Safe Denoiser" tab in real gradio Blocks: each handler run as gradio runs it (``process_api``:
preprocess, the function with its ``gr.Request``, postprocess), on a real bank store."""

from __future__ import annotations

import asyncio
import html
import io
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from modules import script_callbacks, shared
from PIL import Image

from lib_safe_denoiser.banks import manage
from lib_safe_denoiser.banks.inputs import InputLimits
from lib_safe_denoiser.banks.store import BankStore
from safe_denoiser_webui.bank_tab import (
    UNFINISHED_UPLOAD_HINT,
    BankTab,
    TabServices,
    elem_id,
    status_html,
    upload_paths,
)
from safe_denoiser_webui.model import vae_id
from tests.browser.app import STAND_IN_VAE, StandInEncoder, stand_in_services
from tests.glue.conftest import smooth_picture

REPO = Path(__file__).resolve().parents[2]


class Driver:
    """Runs the tab's event handlers as the browser would: inputs from what the page shows now,
    outputs applied to it, one session state, the request's user.

    Components are named by their attribute on ``tab`` or, for a tab built elsewhere (the WebUI
    script), by their elem_id without the tab's prefix.
    """

    def __init__(self, tab: BankTab | None, blocks: gr.Blocks, user: str | None = None) -> None:
        self.tab, self.blocks, self.user = tab, blocks, user
        self.state: dict[int, Any] = {}
        self.values: dict[int, Any] = {i: getattr(b, "value", None) for i, b in blocks.blocks.items()}

    def c(self, name: str) -> Any:
        """A component of the tab, e.g. ``driver.c("bank")``."""
        if self.tab is not None and hasattr(self.tab, name):
            return getattr(self.tab, name)
        for block in self.blocks.blocks.values():
            if getattr(block, "elem_id", None) == elem_id(name):
                return block
        raise KeyError(name)

    def event(self, component: Any, trigger: str) -> int:
        for i, dep in enumerate(self.blocks.dependencies):
            if dep["trigger"] == trigger and (component._id in dep["targets"] or component is self.blocks):
                return i
        raise AssertionError(f"no {trigger} event on {component}")

    def run(self, component: Any, trigger: str, event_data: Any = None, **given: Any) -> dict[Any, Any]:
        """Fire ``trigger`` on ``component`` after setting the inputs named in ``given``."""
        index = self.event(component, trigger)
        dep = self.blocks.dependencies[index]
        self.values.update({self.c(name)._id: value for name, value in given.items()})
        inputs = [self.values.get(i) for i in dep["inputs"]]
        result = asyncio.run(self.blocks.process_api(fn_index=index, inputs=inputs, state=self.state,
                                                     request=gr.Request(username=self.user), event_data=event_data))
        outputs = {}
        for block_id, value in zip(dep["outputs"], result["data"], strict=True):
            outputs[self.blocks.blocks[block_id]] = value
            if isinstance(value, dict) and value.get("__type__") == "update":
                if "value" in value:
                    self.values[block_id] = value["value"]
            else:
                self.values[block_id] = value
        return outputs

    def value(self, name: str) -> Any:
        return self.values.get(self.c(name)._id)

    def status(self) -> str:
        """The status area's text, as a person reads it."""
        return html.unescape(re.sub(r"<[^>]+>", " ", self.value("status") or ""))


def picture_file(folder: Path, name: str, seed: int, size: int = 48) -> str:
    path = folder / name
    smooth_picture(seed, size).save(path)
    return str(path)


def uploaded(paths: list[str]) -> list[dict[str, Any]]:
    """gr.File values as the browser sends them after uploading."""
    return [{"name": p, "data": None, "is_file": True, "orig_name": Path(p).name} for p in paths]


@pytest.fixture
def env(tmp_path):
    store = BankStore(tmp_path / "store")
    encoder = StandInEncoder(store)
    return store, encoder, tmp_path


def build(services: TabServices, user: str | None = None) -> Driver:
    tab = BankTab(services)
    blocks = tab.build()
    blocks.queue()  # as in the WebUI: gr.Progress needs the queue
    driver = Driver(tab, blocks, user)
    driver.run(blocks, "load")
    return driver


@pytest.fixture
def driver(env):
    store, encoder, tmp = env
    return build(stand_in_services(store, encoder, tmp / "exports"))


def create(d: Driver, name: str, files: list[str], **fields: Any) -> dict:
    return d.run(d.tab.create, "click", new_name=name, new_files=uploaded(files), **fields)


def test_load_says_who_you_are_and_lists_visible_banks(env, tmp_path):
    store, encoder, _ = env
    folder = tmp_path / "src"
    folder.mkdir()
    files = [picture_file(folder, f"{i}.png", i) for i in range(2)]
    store.create("shared-bank", files)
    store.create("alices", files, owner="alice")
    store.create("bobs", files, owner="bob")
    services = stand_in_services(store, encoder, tmp_path / "exports", operators=frozenset({"root"}), auth=True)

    anonymous = build(stand_in_services(store, encoder, tmp_path / "exports"))
    assert "everyone is one anonymous user" in anonymous.value("identity")

    alice = build(services, user="alice")
    assert "Signed in as alice" in alice.value("identity")
    choices = alice.run(alice.tab.refresh, "click")[alice.tab.bank]["choices"]
    assert [c[0] if isinstance(c, (list, tuple)) else c for c in choices] == ["alices", "shared-bank"]

    root = build(services, user="root")
    assert "an operator" in root.value("identity")
    loaded = root.run(root.blocks, "load")
    assert loaded[root.tab.add_folder_row]["visible"] is True and loaded[root.tab.new_shared]["visible"] is True
    assert len(root.run(root.tab.refresh, "click")[root.tab.bank]["choices"]) == 3
    assert alice.run(alice.blocks, "load")[alice.tab.add_folder_row]["visible"] is False

    # a bank alice cannot see is answered as if it did not exist
    out = alice.run(alice.tab.export, "click", bank="bobs")
    assert "No bank named 'bobs' that you can see" in alice.status()
    assert out[alice.tab.export_file] is None


def test_create_reports_skipped_files_and_shows_the_gallery(driver, tmp_path):
    good = [picture_file(tmp_path, f"pic{i}.png", i) for i in range(3)]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = create(driver, "faces", [*good, str(bad)], new_tags="people, test", new_description="three faces")
    status = driver.status()
    assert "Created 3 image(s) in bank 'faces'" in status and "1 file(s) skipped" in status
    assert "Skipped broken.png:" in status
    assert driver.value("bank") == "faces"
    gallery = out[driver.tab.gallery]
    assert [caption for _, caption in gallery] == ["pic0.png", "pic1.png", "pic2.png"]
    assert all(Path(item["name"]).is_file() for item, _ in gallery)
    assert "Page 1 of 1: images 1-3 of 3" in driver.value("page_label")
    info = driver.value("info")
    assert "people, test" in info and "three faces" in info and "shared" in info
    assert driver.value("new_name") == "" and driver.value("new_files") is None


def test_create_with_nothing_usable_saves_nothing_and_says_why(driver, env, tmp_path):
    store = env[0]
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    create(driver, "empty", [str(bad)])
    assert "notes.png" in driver.status() and "nothing was saved" in driver.status()
    assert not store.exists("empty")
    create(driver, "../evil", [picture_file(tmp_path, "a.png", 1)])
    assert "looks like a path" in driver.status()
    create(driver, "no-files", [])
    assert "Add some images" in driver.status()


def test_an_upload_that_arrived_empty_says_it_was_probably_unfinished(driver, env, tmp_path):
    """gradio 3.41 can send a file without its contents when the button beat the upload: say so."""
    store = env[0]
    empty = tmp_path / "big.png"
    empty.write_bytes(b"")
    create(driver, "unfinished", [str(empty)])
    assert "big.png: empty file (0 bytes)" in driver.status() and UNFINISHED_UPLOAD_HINT in driver.status()
    assert not store.exists("unfinished")
    create(driver, "half", [picture_file(tmp_path, "ok.png", 1), str(empty)])  # the good one is kept
    assert "Created 1 image(s) in bank 'half'" in driver.status() and UNFINISHED_UPLOAD_HINT in driver.status()
    driver.run(driver.tab.add, "click", add_files=uploaded([str(empty)]))
    assert UNFINISHED_UPLOAD_HINT in driver.status()
    driver.run(driver.tab.import_bank, "click", import_file=uploaded([str(empty)]))
    assert UNFINISHED_UPLOAD_HINT in driver.status()
    create(driver, "complete", [picture_file(tmp_path, "fine.png", 2)])
    assert UNFINISHED_UPLOAD_HINT not in driver.status()


def test_zip_upload_adds_its_images_and_names_the_bad_members(driver, env, tmp_path):
    store = env[0]
    create(driver, "zipped", [picture_file(tmp_path, "first.png", 1)])
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(2):
            buf = io.BytesIO()
            smooth_picture(10 + i).save(buf, format="PNG")
            zf.writestr(f"inner/z{i}.png", buf.getvalue())
        zf.writestr("readme.txt", "not an image")
        zf.writestr("inner/bad.jpg", b"garbage")
    driver.run(driver.tab.add, "click", add_files=uploaded([str(archive)]))
    status = driver.status()
    assert "Added 2 image(s) to bank 'zipped' (now 3)" in status
    assert "more.zip/readme.txt" in status and "more.zip/inner/bad.jpg" in status
    assert [e["source_name"] for e in store.image_entries("zipped")][1:] == ["more.zip/inner/z0.png",
                                                                            "more.zip/inner/z1.png"]
    assert driver.value("add_files") is None


def test_upload_limits_come_from_the_services(env, tmp_path):
    store, encoder, _ = env
    services = stand_in_services(store, encoder, tmp_path / "exports")
    limited = build(TabServices(**{**services.__dict__, "limits": lambda: InputLimits(max_files=2)}))
    files = [picture_file(tmp_path, f"l{i}.png", i) for i in range(4)]
    create(limited, "limited", files)
    assert store.get("limited").n_images == 2
    assert "2 file(s) skipped" in limited.status()


def test_paging_selecting_by_clicking_and_removing(driver, env, tmp_path):
    store = env[0]
    files = [picture_file(tmp_path, f"p{i:02d}.png", 100 + i, size=16) for i in range(manage.GALLERY_PAGE_SIZE + 2)]
    create(driver, "big", files)
    assert len(driver.value("gallery")) == manage.GALLERY_PAGE_SIZE
    out = driver.run(driver.tab.next_page, "click")
    assert len(out[driver.tab.gallery]) == 2 and driver.value("page") == 2
    assert "Page 2 of 2" in driver.value("page_label")
    assert driver.run(driver.tab.next_page, "click")[driver.tab.page] == 2  # clamped

    shas = driver.state[driver.tab.page_shas._id]
    driver.run(driver.tab.gallery, "select", event_data=gr.SelectData(driver.tab.gallery, {"index": 1, "value": None}))
    assert driver.value("selected") == [shas[1]]
    driver.run(driver.tab.gallery, "select", event_data=gr.SelectData(driver.tab.gallery, {"index": 0, "value": None}))
    driver.run(driver.tab.gallery, "select", event_data=gr.SelectData(driver.tab.gallery, {"index": 1, "value": None}))
    assert driver.value("selected") == [shas[0]]  # a second click unselects
    driver.run(driver.tab.remove, "click")
    assert "Removed 1 image(s) from bank 'big' (now 49)" in driver.status()
    assert shas[0] not in {e["sha256"] for e in store.image_entries("big")}
    assert driver.value("page") == 2 and len(driver.value("gallery")) == 1

    driver.run(driver.tab.remove, "click")
    assert "Select the images to remove first" in driver.status()

    # ticking the boxes selects too; "Select this page" and "Clear selection"
    shas = driver.state[driver.tab.page_shas._id]
    driver.run(driver.tab.selected, "input", selected=[shas[0]])
    assert driver.state[driver.tab.selection._id] == [shas[0]]
    driver.run(driver.tab.clear_selection, "click")
    assert driver.value("selected") == [] and driver.state[driver.tab.selection._id] == []
    driver.run(driver.tab.prev_page, "click")
    driver.run(driver.tab.select_page, "click")
    assert len(driver.value("selected")) == manage.GALLERY_PAGE_SIZE
    driver.run(driver.tab.remove, "click")
    assert "Removed 48 image(s) from bank 'big' (now 1)" in driver.status()
    driver.run(driver.tab.select_page, "click")
    driver.run(driver.tab.remove, "click")
    assert "would leave bank 'big' empty; delete the bank instead" in driver.status()


def test_rename_edit_and_delete_needs_confirmation(driver, env, tmp_path):
    store = env[0]
    create(driver, "old-name", [picture_file(tmp_path, "a.png", 1)])
    driver.run(driver.tab.rename, "click", rename_to="new-name")
    assert "Renamed bank 'old-name' to 'new-name'" in driver.status() and driver.value("bank") == "new-name"
    driver.run(driver.tab.save_details, "click", edit_description="edited", edit_tags="a, b", edit_resize="pad")
    info = store.get("new-name")
    assert (info.description, info.tags, info.resize) == ("edited", ("a", "b"), "pad")
    assert "encoded again with the 'pad' resize policy" in driver.status()

    driver.run(driver.tab.delete, "click")
    assert "Tick 'Yes, delete new-name' first" in driver.status() and store.exists("new-name")
    driver.run(driver.tab.delete, "click", delete_confirm=True)
    assert "Deleted bank 'new-name'" in driver.status()
    assert not store.exists("new-name") and driver.value("bank") is None
    assert driver.value("gallery") == []


def test_encode_shows_progress_cache_rows_and_drop(driver, env, tmp_path):
    store, encoder, _ = env
    create(driver, "enc", [picture_file(tmp_path, f"e{i}.png", i) for i in range(3)])
    assert "no cached latents yet" in driver.value("cache_note")
    driver.run(driver.tab.encode, "click", encode_width=64, encode_height=48)
    assert f"Bank 'enc' is encoded for {STAND_IN_VAE} at 64x48 (6x8 latents, 3 images)" in driver.status()
    assert store.has_latents("enc", STAND_IN_VAE, (6, 8))
    table = driver.value("cache_table")
    assert table["data"][0][:4] == [STAND_IN_VAE, "6x8", "64x48", "crop"]
    driver.run(driver.tab.encode, "click", encode_width=60, encode_height=48)
    assert "multiples of 8" in driver.status()

    driver.run(driver.tab.drop, "click", drop_choice=f"6x8{manage.CACHE_LABEL_SEPARATOR}{STAND_IN_VAE}")
    assert "Dropped 1 latent cache file(s)" in driver.status()
    assert not store.has_latents("enc", STAND_IN_VAE, (6, 8))
    assert driver.value("cache_table")["data"] == []


def test_a_cancelled_encode_caches_nothing(driver, env, tmp_path):
    store, encoder, _ = env
    create(driver, "slow", [picture_file(tmp_path, f"s{i}.png", i) for i in range(4)])
    encoder.vae = _cancelling(encoder)
    driver.run(driver.tab.encode, "click", encode_width=32, encode_height=32)
    assert "Encoding cancelled" in driver.status()
    assert not store.has_latents("slow", STAND_IN_VAE, (4, 4))


def _cancelling(encoder: StandInEncoder):
    """The stand-in VAE, with the user pressing Cancel (the tab's button) during the first batch."""
    vae = encoder.vae

    def encode(img01):
        encoder.cancel()
        return vae(img01)

    return encode


def test_cancel_button_asks_the_encoder_to_stop(driver, env):
    encoder = env[1]
    driver.run(driver.tab.cancel, "click")
    assert encoder.cancelled.is_set() and "Asked the encoding to stop" in driver.status()


def test_export_then_import_round_trip(driver, env, tmp_path):
    store = env[0]
    create(driver, "travel", [picture_file(tmp_path, f"t{i}.png", i) for i in range(2)])
    driver.run(driver.tab.encode, "click", encode_width=32, encode_height=32)
    out = driver.run(driver.tab.export, "click", export_latents="include")
    exported = Path(out[driver.tab.export_file]["name"])
    assert exported.suffix == ".zip" and "Exported bank 'travel' (images and cached latents" in driver.status()

    driver.run(driver.tab.import_bank, "click", import_file=uploaded([str(exported)])[0], import_name="")
    assert "Bank 'travel' already exists; pick another name" in driver.status()
    driver.run(driver.tab.import_bank, "click", import_file=uploaded([str(exported)])[0], import_name="travel-copy")
    assert "Imported bank 'travel-copy' with 2 images" in driver.status() and driver.value("bank") == "travel-copy"
    assert store.get("travel-copy").content_hash == store.get("travel").content_hash

    driver.run(driver.tab.export, "click", export_latents="bogus")
    assert "Latents must be one of none, include, only" in driver.status()


def test_near_duplicates_are_listed_by_name(driver, tmp_path):
    base = smooth_picture(5, 64)
    base.save(tmp_path / "orig.png")
    base.resize((60, 60), Image.BICUBIC).save(tmp_path / "resized.png")
    smooth_picture(6, 64).save(tmp_path / "other.png")
    create(driver, "dups", [str(tmp_path / n) for n in ("orig.png", "resized.png", "other.png")])
    assert "near-duplicate" in driver.status()
    out = driver.run(driver.tab.find_duplicates, "click")
    rows = out[driver.tab.dup_table]["data"]
    assert [r[:2] for r in rows] == [["orig.png", "resized.png"]]


def test_others_banks_are_read_only_and_folder_import_is_for_operators(env, tmp_path):
    store, encoder, _ = env
    folder = tmp_path / "server"
    folder.mkdir()
    picture_file(folder, "f0.png", 1)
    picture_file(folder, "f1.png", 2)
    (folder / "notes.txt").write_text("not an image")
    store.create("shared-bank", [picture_file(tmp_path, "s.png", 3)])
    services = stand_in_services(store, encoder, tmp_path / "exports", operators=frozenset({"root"}), auth=True)

    alice = build(services, user="alice")
    alice.run(alice.tab.bank, "change", bank="shared-bank")
    alice.run(alice.tab.delete, "click", delete_confirm=True)
    assert "Only operators may change the shared bank" in alice.status() and store.exists("shared-bank")
    alice.run(alice.tab.create_from_folder, "click", new_name="mine", new_folder=str(folder))
    assert "Only operators may import images from a folder" in alice.status()
    create(alice, "mine", [picture_file(tmp_path, "m.png", 4)], new_shared=True)
    assert "Only operators may create shared banks" in alice.status()
    create(alice, "mine", [picture_file(tmp_path, "m.png", 4)], new_shared=False)
    assert store.get("mine").owner == "alice"

    root = build(services, user="root")
    root.run(root.tab.create_from_folder, "click", new_name="from-server", new_folder=str(folder), new_shared=True)
    assert "Created 2 image(s) in bank 'from-server'" in root.status() and "notes.txt" in root.status()
    assert store.get("from-server").owner is None
    root.run(root.tab.bank, "change", bank="mine")
    root.run(root.tab.delete, "click", delete_confirm=True)
    assert "The bank 'mine' belongs to 'alice'" in root.status() and store.exists("mine")

    closed = build(TabServices(**{**services.__dict__, "folder_import": lambda: False}), user="root")
    closed.run(closed.tab.create_from_folder, "click", new_name="x", new_folder=str(folder))
    assert "Importing from a server folder is turned off" in closed.status()


def test_an_unexpected_error_is_shown_and_the_tab_keeps_working(env, tmp_path):
    store, encoder, _ = env

    def broken(*args):
        raise RuntimeError("the GPU caught fire")

    d = build(TabServices(**{**stand_in_services(store, encoder, tmp_path / "e").__dict__, "encode": broken}))
    create(d, "fine", [picture_file(tmp_path, "a.png", 1)])
    d.run(d.tab.encode, "click", encode_width=64, encode_height=64)
    assert "Unexpected error: the GPU caught fire" in d.status()
    d.run(d.tab.refresh, "click")
    assert d.value("bank") == "fine" and len(d.value("gallery")) == 1


def test_status_html_escapes_user_text():
    html = status_html(manage.Outcome(False, "bad <b>name</b>", ("<script>x</script>.png: corrupt",)))
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;" in html


def test_upload_paths_reads_gradio_3_and_4_values(tmp_path):
    class Temp:
        name = str(tmp_path / "a.png")

    assert upload_paths(None) == []
    assert upload_paths([Temp()]) == [Temp.name]
    assert upload_paths(Temp.name) == [Temp.name]
    assert upload_paths([{"path": "/x/b.png"}]) == ["/x/b.png"]


def test_the_tab_module_runs_without_the_webui():
    """A test app hosts the real tab: safe_denoiser_webui.bank_tab must import with no ``modules`` at all."""
    code = "import sys; sys.modules['modules'] = None; import safe_denoiser_webui.bank_tab"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_webui_script_registers_the_tab_and_encodes_with_the_loaded_model(glue, banks):
    tab_script = sys.modules["scripts.safe_denoiser_tab"]  # loaded by the glue fixture, as the WebUI loads it
    assert tab_script.on_ui_tabs in [c.callback for c in script_callbacks.callback_map["callbacks_ui_tabs"]]
    [(blocks, title, tab_id), (policy, policy_title, policy_id)] = tab_script.on_ui_tabs()
    assert isinstance(blocks, gr.Blocks) and (title, tab_id) == ("Safe Denoiser", "safe_denoiser")
    assert isinstance(policy, gr.Blocks) and (policy_title, policy_id) == ("Safe Denoiser policy",
                                                                          "safe_denoiser_policy")
    blocks.queue()
    d = Driver(None, blocks)
    d.run(blocks, "load")
    assert "everyone is one anonymous user, who may manage every bank" in d.value("identity")
    d.run(d.c("refresh"), "click", bank=banks["unsafe"])
    assert len(d.value("gallery")) == glue.STORE.get(banks["unsafe"]).n_images

    d.run(d.c("encode"), "click", encode_width=64, encode_height=48)
    ident = vae_id(shared.sd_model)
    assert f"Bank 'unsafe' is encoded for {ident} at 64x48 (6x8 latents, 6 images)" in d.status()
    assert glue.STORE.has_latents(banks["unsafe"], ident, (6, 8))
    assert shared.state.job == ""  # encode_now ended its WebUI job

    shared.cmd_opts.gradio_auth = "alice:pw,root:pw"
    shared.cmd_opts.safe_denoiser_operators = "root"
    try:
        assert tab_script.is_operator("root") and not tab_script.is_operator("alice")
        alice = Driver(None, blocks, user="alice")
        alice.run(blocks, "load")
        assert "Signed in as alice" in alice.value("identity")
        alice.run(alice.c("bank"), "change", bank=banks["unsafe"])
        alice.run(alice.c("delete"), "click", delete_confirm=True)
        assert "Only operators may change the shared bank 'unsafe'" in alice.status()
    finally:
        shared.cmd_opts.gradio_auth = None
        shared.cmd_opts.safe_denoiser_operators = None
