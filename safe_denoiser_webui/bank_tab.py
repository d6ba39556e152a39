"""The "Safe Denoiser" tab: manage negation banks in the browser.

Builds gradio Blocks from a small ``TabServices`` object and never imports the WebUI's
``modules``: ``scripts/safe_denoiser_tab.py`` wires in the WebUI's store, VAE encoder, users and
settings, and a test app hosts the same tab with a stand-in encoder. The actions themselves live
in ``lib_safe_denoiser.banks.manage``; this module only turns their ``Outcome`` into component
updates. Every handler answers in the status area and never raises into gradio, so a failed
action leaves the tab usable.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import io
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from lib_safe_denoiser.banks import manage
from lib_safe_denoiser.banks.images import DEFAULT_RESIZE, RESIZE_POLICIES
from lib_safe_denoiser.banks.inputs import InputLimits
from lib_safe_denoiser.banks.store import BankInfo, BankStore, CacheEntry
from lib_safe_denoiser.concepts.constants import DEFAULT_CLIP_DUPLICATE_COSINE, DEFAULT_CURATION_THRESHOLD
from lib_safe_denoiser.policy.users import User

logger = logging.getLogger(__name__)

TAB_TITLE = "Safe Denoiser"
TAB_ID = "safe_denoiser"
ELEM_PREFIX = "safe_denoiser_tab_"
GALLERY_COLUMNS = 8
DEFAULT_ENCODE_SIZE = 512
ENCODE_SIZE_STEP = 8
MAX_ENCODE_SIZE = 4096
DUPLICATE_COLUMNS = ("Image", "Looks like", "Distance (of 64 bits)")
STATUS_STYLE = {
    True: "border-left: 4px solid #2e9e4f; padding: 6px 10px; margin: 4px 0;",
    False: "border-left: 4px solid #d0342c; padding: 6px 10px; margin: 4px 0;",
}
STATUS_MARK = {True: "\u2714", False: "\u2716"}
GALLERY_HEIGHT = "fit-content"
"""A CSS height: as tall as the page's thumbnails (gradio's default is a fixed box with a scrollbar)."""
CURATION_SLIDER_STEP = 0.005


def request_username(request: Any) -> str | None:
    return getattr(request, "username", None)


@dataclasses.dataclass(frozen=True)
class TabServices:
    """What the tab needs from its host. Settings are callables so a changed setting applies at once."""

    store: BankStore
    encode: manage.Encode
    """``encode(bank, width, height, progress)`` with the host's current VAE (the WebUI: ``encode_now``)."""
    cancel: Callable[[], None]
    """Asks a running ``encode`` to stop (the WebUI: ``shared.state.interrupt``)."""
    export_dir: Path
    """Where exported archives wait to be downloaded."""
    is_operator: Callable[[str | None], bool]
    user_of: Callable[[Any], str | None] = request_username
    """The user of a ``gr.Request``; None when the host has no sign-in."""
    limits: Callable[[], InputLimits] = InputLimits
    default_resize: Callable[[], str] = lambda: DEFAULT_RESIZE
    folder_import: Callable[[], bool] = lambda: False
    """Whether operators may read images from a folder on the server."""
    clip_judge: manage.JudgeSource | None = None
    """Gives the CLIP judge for the "Curate with CLIP" tab (loaded on first use); None: no such tab."""


def elem_id(name: str) -> str:
    return ELEM_PREFIX + name


# ---------------------------------------------------------------------------------- rendering
def status_html(outcome: manage.Outcome) -> str:
    """The status area: a mark, the message and its detail lines, all escaped (file names are user input)."""
    lines = "".join(f"<li>{html.escape(d)}</li>" for d in outcome.details)
    items = f"<ul style='margin: 4px 0 0 1.2em;'>{lines}</ul>" if lines else ""
    kind = "ok" if outcome.ok else "error"
    return (f"<div class='safe-denoiser-status {kind}' style='{STATUS_STYLE[outcome.ok]}'>"
            f"{STATUS_MARK[outcome.ok]} {html.escape(outcome.message)}{items}</div>")


def info_html(info: BankInfo | None, note: manage.Outcome | None = None) -> str:
    """The chosen bank's facts, as one wrapping line of label: value pairs, and its description."""
    if info is None:
        body = "<p>No bank chosen: pick one above, or create one in the <b>Create</b> tab.</p>"
    else:
        pairs = "".join(f"<span style='margin-right: 1.5em; white-space: nowrap;'><b>{html.escape(k)}:</b> "
                        f"{html.escape(v)}</span> " for k, v in manage.describe_bank(info))
        body = f"<p class='safe-denoiser-bank-info' style='line-height: 1.8;'>{pairs}</p>"
        if info.description:
            body += f"<p>{html.escape(info.description)}</p>"
    if note is not None and not note.ok:
        body += status_html(note)
    return body


def _thumb_image(thumb: manage.Thumb) -> tuple[Image.Image, str]:
    img = Image.open(io.BytesIO(thumb.png))
    img.load()
    return img, thumb.caption


UNFINISHED_UPLOAD_HINT = ("A file that arrived empty (0 bytes) was most likely still uploading when the button was "
                          "pressed: choose it again, and press the button once the upload has finished.")


def with_upload_hint(out: manage.Outcome, paths: Iterable[str]) -> manage.Outcome:
    """An action on browser uploads, one of them empty, says how that happens.

    gradio 3.41 uploads chosen files in the background and forgets the upload if an event redraws
    the page meanwhile; the next press then sends the files without their contents.
    """
    if not any(os.path.isfile(p) and os.path.getsize(p) == 0 for p in paths):
        return out
    return dataclasses.replace(out, details=(*out.details, UNFINISHED_UPLOAD_HINT))


def upload_paths(files: Any) -> list[str]:
    """File paths from a gr.File value: gradio 3 gives temp-file objects, gradio 4 paths or dicts."""
    if files is None:
        return []
    if not isinstance(files, (list, tuple)):
        files = [files]
    paths = []
    for f in files:
        if isinstance(f, dict):
            f = f.get("path") or f.get("name")
        path = getattr(f, "name", f)
        if isinstance(path, (str, os.PathLike)) and str(path):
            paths.append(str(path))
    return paths


# ---------------------------------------------------------------------------------- the tab
class BankTab:
    """The components of the tab and their handlers (one instance per built tab)."""

    def __init__(self, services: TabServices) -> None:
        self.s = services

    # -- who asks
    def user(self, request: Any) -> User:
        name = self.s.user_of(request)
        return User(name, bool(self.s.is_operator(name)))

    def guarded(self, fn: Callable[..., dict]) -> Callable[..., dict]:
        """A handler that answers in the status area whatever goes wrong (gradio would show only 'Error')."""

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> dict:
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - the tab must stay usable; the log has the traceback
                logger.exception("safe denoiser tab: %s failed", fn.__name__)
                return {self.status: status_html(manage.Outcome(False, f"Unexpected error: {e}"))}

        return run

    # -- layout
    def build(self) -> gr.Blocks:
        with gr.Blocks(analytics_enabled=False) as blocks:
            self.identity = gr.Markdown(elem_id=elem_id("identity"))
            with gr.Row():
                self.bank = gr.Dropdown(label="Bank", choices=[], value=None, elem_id=elem_id("bank"))
                self.refresh = gr.Button(value="\U0001f504", elem_classes=["tool"], elem_id=elem_id("refresh"))
            self.status = gr.HTML(elem_id=elem_id("status"))
            self.info = gr.HTML(value=info_html(None), elem_id=elem_id("info"))
            self.page_shas = gr.State([])
            # The selected images, kept on the server: clicks in quick succession each see the previous
            # one's result (the checkbox group's value sent by the browser could still be stale).
            self.selection = gr.State([])
            with gr.Tabs(elem_id=elem_id("tabs")):
                with gr.Tab("Images", elem_id=elem_id("images_tab")):
                    self._images_layout()
                with gr.Tab("Create", elem_id=elem_id("create_tab")):
                    self._create_layout()
                with gr.Tab("Edit", elem_id=elem_id("edit_tab")):
                    self._edit_layout()
                with gr.Tab("Latents", elem_id=elem_id("latents_tab")):
                    self._latents_layout()
                with gr.Tab("Import / export", elem_id=elem_id("transfer_tab")):
                    self._transfer_layout()
                with gr.Tab("Near duplicates", elem_id=elem_id("duplicates_tab")):
                    self._duplicates_layout()
                if self.s.clip_judge is not None:
                    with gr.Tab("Curate with CLIP", elem_id=elem_id("curate_tab")):
                        self._curate_layout()
            self._wire(blocks)
        return blocks

    def _images_layout(self) -> None:
        self.gallery = gr.Gallery(label="Images (click to select)", columns=GALLERY_COLUMNS, allow_preview=False,
                                  object_fit="contain", height=GALLERY_HEIGHT, elem_id=elem_id("gallery"))
        with gr.Row():
            self.page = gr.Number(value=1, label="Page", precision=0, minimum=1, scale=0, min_width=120,
                                  elem_id=elem_id("page"))
            self.prev_page = gr.Button(value="\u25c0", elem_classes=["tool"], elem_id=elem_id("prev_page"))
            self.next_page = gr.Button(value="\u25b6", elem_classes=["tool"], elem_id=elem_id("next_page"))
            self.page_label = gr.Markdown(elem_id=elem_id("page_label"))
        self.selected = gr.CheckboxGroup(label="Selected images", choices=[], elem_id=elem_id("selected"))
        with gr.Row():
            self.select_page = gr.Button(value="Select this page", elem_id=elem_id("select_page"))
            self.clear_selection = gr.Button(value="Clear selection", elem_id=elem_id("clear_selection"))
            self.remove = gr.Button(value="Remove selected", variant="stop", elem_id=elem_id("remove"))
        with gr.Accordion("Add images", open=False):
            self.add_files = gr.File(label="Images or .zip archives of images", file_count="multiple",
                                     file_types=["image", manage.ARCHIVE_SUFFIX], elem_id=elem_id("add_files"))
            self.add = gr.Button(value="Add to this bank", variant="primary", elem_id=elem_id("add"))
            with gr.Row(visible=False) as self.add_folder_row:
                self.add_folder_path = gr.Textbox(label="Server folder", elem_id=elem_id("add_folder_path"))
                self.add_recursive = gr.Checkbox(label="Include sub-folders", elem_id=elem_id("add_recursive"))
                self.add_folder = gr.Button(value="Add from folder", elem_id=elem_id("add_folder"))

    def _create_layout(self) -> None:
        with gr.Row():
            self.new_name = gr.Textbox(label="New bank name", placeholder="e.g. nudity-v1", elem_id=elem_id("new_name"))
            self.new_tags = gr.Textbox(label="Tags (comma-separated)", elem_id=elem_id("new_tags"))
        self.new_description = gr.Textbox(label="Description", lines=2, elem_id=elem_id("new_description"))
        with gr.Row():
            self.new_resize = gr.Radio(label="Resize policy (how images meet the VAE's size)",
                                       choices=list(RESIZE_POLICIES), value=DEFAULT_RESIZE,
                                       elem_id=elem_id("new_resize"))
            self.new_shared = gr.Checkbox(label="Shared (every user sees it)", visible=False,
                                          elem_id=elem_id("new_shared"))
        self.new_files = gr.File(label="Images or .zip archives of images", file_count="multiple",
                                 file_types=["image", manage.ARCHIVE_SUFFIX], elem_id=elem_id("new_files"))
        self.create = gr.Button(value="Create bank", variant="primary", elem_id=elem_id("create"))
        with gr.Row(visible=False) as self.create_folder_row:
            self.new_folder = gr.Textbox(label="Or a server folder", elem_id=elem_id("new_folder"))
            self.new_recursive = gr.Checkbox(label="Include sub-folders", elem_id=elem_id("new_recursive"))
            self.create_from_folder = gr.Button(value="Create from folder", elem_id=elem_id("create_from_folder"))

    def _edit_layout(self) -> None:
        with gr.Row():
            self.edit_tags = gr.Textbox(label="Tags (comma-separated)", elem_id=elem_id("edit_tags"))
            self.edit_resize = gr.Radio(label="Resize policy", choices=list(RESIZE_POLICIES), value=DEFAULT_RESIZE,
                                        elem_id=elem_id("edit_resize"))
        self.edit_description = gr.Textbox(label="Description", lines=2, elem_id=elem_id("edit_description"))
        self.save_details = gr.Button(value="Save details", elem_id=elem_id("save_details"))
        with gr.Row():
            self.rename_to = gr.Textbox(label="New name", elem_id=elem_id("rename_to"))
            self.rename = gr.Button(value="Rename", elem_id=elem_id("rename"))
        with gr.Row():
            self.delete_confirm = gr.Checkbox(label="Yes, delete this bank (cannot be undone)",
                                              elem_id=elem_id("delete_confirm"))
            self.delete = gr.Button(value="Delete bank", variant="stop", elem_id=elem_id("delete"))

    def _latents_layout(self) -> None:
        self.cache_note = gr.Markdown(elem_id=elem_id("cache_note"))
        self.cache_table = gr.Dataframe(headers=list(manage.CACHE_COLUMNS), interactive=False,
                                        elem_id=elem_id("cache_table"))
        with gr.Row():
            self.encode_width = gr.Number(value=DEFAULT_ENCODE_SIZE, label="Width", precision=0,
                                          minimum=ENCODE_SIZE_STEP, maximum=MAX_ENCODE_SIZE, step=ENCODE_SIZE_STEP,
                                          elem_id=elem_id("encode_width"))
            self.encode_height = gr.Number(value=DEFAULT_ENCODE_SIZE, label="Height", precision=0,
                                           minimum=ENCODE_SIZE_STEP, maximum=MAX_ENCODE_SIZE, step=ENCODE_SIZE_STEP,
                                           elem_id=elem_id("encode_height"))
            self.encode = gr.Button(value="Encode now (current model)", variant="primary", elem_id=elem_id("encode"))
            self.cancel = gr.Button(value="Cancel encoding", elem_id=elem_id("cancel"))
        with gr.Row():
            self.drop_choice = gr.Dropdown(label="Latent cache", choices=[], value=None, elem_id=elem_id("drop_choice"))
            self.drop = gr.Button(value="Drop cache", elem_id=elem_id("drop"))

    def _transfer_layout(self) -> None:
        with gr.Row():
            with gr.Column():
                self.export_latents = gr.Radio(label="Latents in the export", choices=list(manage.LATENT_MODES),
                                               value=manage.DEFAULT_EXPORT_LATENTS, elem_id=elem_id("export_latents"))
                self.export = gr.Button(value="Export this bank", elem_id=elem_id("export"))
                self.export_file = gr.File(label="Exported bank", interactive=False, elem_id=elem_id("export_file"))
            with gr.Column():
                self.import_file = gr.File(label="Bank archive (.zip) to import", file_types=[manage.ARCHIVE_SUFFIX],
                                           elem_id=elem_id("import_file"))
                self.import_name = gr.Textbox(label="Name (blank: the name in the archive)",
                                              elem_id=elem_id("import_name"))
                with gr.Row():
                    self.import_overwrite = gr.Checkbox(label="Replace a bank of that name",
                                                        elem_id=elem_id("import_overwrite"))
                    self.import_shared = gr.Checkbox(label="Shared (every user sees it)", visible=False,
                                                     elem_id=elem_id("import_shared"))
                self.import_bank = gr.Button(value="Import", elem_id=elem_id("import"))

    def _duplicates_layout(self) -> None:
        with gr.Row():
            self.dup_distance = gr.Slider(label="Largest difference (bits of 64)", minimum=0,
                                          maximum=manage.MAX_NEAR_DUPLICATE_DISTANCE, step=1,
                                          value=manage.NEAR_DUPLICATE_DISTANCE, elem_id=elem_id("dup_distance"))
            self.find_duplicates = gr.Button(value="Find near duplicates", elem_id=elem_id("find_duplicates"))
        self.dup_table = gr.Dataframe(headers=list(DUPLICATE_COLUMNS), interactive=False, elem_id=elem_id("dup_table"))

    def _curate_layout(self) -> None:
        gr.Markdown("Score candidate images against text concepts, then add the ones above the threshold to the "
                    "chosen bank. CLIP near-duplicates (crops, flips, re-renders of one picture) are flagged for "
                    "you to check.", elem_id=elem_id("curate_note"))
        with gr.Row():
            self.curate_concepts = gr.Textbox(label="Concepts (comma-separated)", placeholder="e.g. nudity, violence",
                                              elem_id=elem_id("curate_concepts"))
            self.curate_threshold = gr.Slider(label="Threshold (CLIP similarity)", minimum=-1.0, maximum=1.0,
                                              step=CURATION_SLIDER_STEP, value=DEFAULT_CURATION_THRESHOLD,
                                              elem_id=elem_id("curate_threshold"))
            self.curate_duplicates = gr.Slider(label="Near-duplicate cosine", step=CURATION_SLIDER_STEP,
                                               minimum=manage.MIN_CURATION_DUPLICATE_COSINE, maximum=1.0,
                                               value=DEFAULT_CLIP_DUPLICATE_COSINE,
                                               elem_id=elem_id("curate_duplicates"))
        self.curate_files = gr.File(label="Images or .zip archives of images to score", file_count="multiple",
                                    file_types=["image", manage.ARCHIVE_SUFFIX], elem_id=elem_id("curate_files"))
        self.curate = gr.Button(value="Score", variant="primary", elem_id=elem_id("curate"))
        with gr.Row(visible=False) as self.curate_folder_row:
            self.curate_folder_path = gr.Textbox(label="Or a server folder", elem_id=elem_id("curate_folder_path"))
            self.curate_recursive = gr.Checkbox(label="Include sub-folders", elem_id=elem_id("curate_recursive"))
            self.curate_folder = gr.Button(value="Score folder", elem_id=elem_id("curate_folder"))
        self.curate_table = gr.Dataframe(headers=list(manage.CURATION_COLUMNS), interactive=False,
                                         elem_id=elem_id("curate_table"))
        self.curate_add = gr.Button(value="Add the images above the threshold to this bank",
                                    elem_id=elem_id("curate_add"))
        self.curate_report = gr.State(None)

    # -- views (component updates)
    def page_updates(self, user: User, name: str | None, page: Any) -> dict:
        if not name:
            return {self.gallery: [], self.page: 1, self.page_label: "", self.selected: gr.update(choices=[], value=[]),
                    self.page_shas: [], self.selection: []}
        out = manage.gallery_page(self.s.store, user, name, page)
        view: manage.GalleryPage | None = out.data
        items = view.items if view is not None else ()
        label = view.label if view is not None and out.ok else out.message
        if out.details:
            label += "\n\n" + "\n".join(f"- {d}" for d in out.details)
        return {
            self.gallery: [_thumb_image(t) for t in items],
            self.page: view.page if view is not None else 1,
            self.page_label: label,
            self.selected: gr.update(choices=[(t.caption, t.sha256) for t in items], value=[]),
            self.page_shas: [t.sha256 for t in items],
            self.selection: [],
        }

    def cache_updates(self, user: User, name: str | None) -> dict:
        if not name:
            return {self.cache_note: "", self.cache_table: table(manage.CACHE_COLUMNS),
                    self.drop_choice: gr.update(choices=[], value=None)}
        out = manage.cache_rows(self.s.store, user, name)
        rows: list[CacheEntry] = out.data or []
        choices = list(dict.fromkeys(manage.cache_label(r) for r in rows if not r.carried))  # one per VAE and size
        if len(choices) > 1:
            choices.append(manage.ALL_CACHES)
        cells = (manage.cache_cells(r) for r in rows)
        return {self.cache_note: out.message, self.cache_table: table(manage.CACHE_COLUMNS, cells),
                self.drop_choice: gr.update(choices=choices, value=None)}

    def bank_updates(self, user: User, name: str | None, page: Any = 1) -> dict:
        """Everything shown about the chosen bank; the status area keeps the last action's answer."""
        info: BankInfo | None = None
        note = None
        if name:
            note = manage.open_bank(self.s.store, user, name)
            info = note.data
        if info is None:
            name = None
        updates = {
            self.info: info_html(info, note),
            self.edit_description: info.description if info else "",
            self.edit_tags: ", ".join(info.tags) if info else "",
            self.edit_resize: info.resize if info else DEFAULT_RESIZE,
            self.rename_to: "",
            self.delete_confirm: False,
            self.dup_table: table(DUPLICATE_COLUMNS),
            self.export_file: None,
        }
        updates.update(self.page_updates(user, name, page))
        updates.update(self.cache_updates(user, name))
        return updates

    def choice_update(self, user: User, value: str | None) -> Any:
        choices = manage.bank_choices(self.s.store, user)
        return gr.update(choices=choices, value=value if value in choices else None)

    # -- handlers
    def on_load(self, request: gr.Request) -> dict:
        user = self.user(request)
        folders = user.operator and self.s.folder_import()
        sharing = user.operator and user.name is not None
        return {
            self.identity: manage.describe_user(user),
            self.bank: self.choice_update(user, None),
            self.new_resize: self.s.default_resize(),
            self.add_folder_row: gr.update(visible=folders),
            self.create_folder_row: gr.update(visible=folders),
            self.new_shared: gr.update(visible=sharing),
            self.import_shared: gr.update(visible=sharing),
            **({self.curate_folder_row: gr.update(visible=folders)} if self.s.clip_judge is not None else {}),
        }

    def on_refresh(self, name: str | None, request: gr.Request) -> dict:
        user = self.user(request)
        update = self.choice_update(user, name)
        return {self.bank: update, **self.bank_updates(user, update["value"])}

    def on_focus(self, name: str | None, request: gr.Request) -> dict:
        return {self.bank: self.choice_update(self.user(request), name)}

    def on_bank(self, name: str | None, request: gr.Request) -> dict:
        return self.bank_updates(self.user(request), name)

    def on_page(self, name: str | None, page: Any, request: gr.Request) -> dict:
        return self.page_updates(self.user(request), name, page)

    def on_prev_page(self, name: str | None, page: Any, request: gr.Request) -> dict:
        return self.page_updates(self.user(request), name, int(page or 1) - 1)

    def on_next_page(self, name: str | None, page: Any, request: gr.Request) -> dict:
        return self.page_updates(self.user(request), name, int(page or 1) + 1)

    def on_gallery_select(self, selection: list[str] | None, page_shas: list[str], evt: gr.SelectData) -> dict:
        """A click on a thumbnail toggles that image in the selection."""
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        chosen = list(selection or [])
        if 0 <= index < len(page_shas):
            sha = page_shas[index]
            chosen = [s for s in chosen if s != sha] if sha in chosen else [*chosen, sha]
        return self.select(chosen)

    def select(self, chosen: list[str] | None) -> dict:
        return {self.selected: list(chosen or []), self.selection: list(chosen or [])}

    def on_remove(self, name: str | None, selected: list[str] | None, page: Any, request: gr.Request) -> dict:
        user = self.user(request)
        out = manage.remove_images(self.s.store, user, name, selected or [])
        return self._after_change(user, name, out, page)

    def on_add(self, name: str | None, files: Any, page: Any, request: gr.Request) -> dict:
        user = self.user(request)
        paths = upload_paths(files)
        out = with_upload_hint(manage.add_uploads(self.s.store, user, name, paths, limits=self.s.limits()), paths)
        updates = self._after_change(user, name, out, page)
        if out.ok:
            updates[self.add_files] = None
        return updates

    def on_add_folder(self, name: str | None, folder: str, recursive: bool, page: Any, request: gr.Request) -> dict:
        user = self.user(request)
        out = manage.add_folder(self.s.store, user, name, folder, folder_import=self.s.folder_import(),
                                recursive=recursive)
        return self._after_change(user, name, out, page)

    def _after_change(self, user: User, name: str | None, out: manage.Outcome, page: Any) -> dict:
        updates = {self.status: status_html(out)}
        if out.ok:
            updates.update(self.bank_updates(user, name, page))
        return updates

    def on_create(self, name: str, description: str, tags: str, resize: str, shared: bool, files: Any,
                  request: gr.Request) -> dict:
        user = self.user(request)
        paths = upload_paths(files)
        out = with_upload_hint(manage.create_bank(self.s.store, user, name, paths, description=description, tags=tags,
                                                  resize=resize, shared=shared, limits=self.s.limits()), paths)
        return self._after_create(user, out, self.new_files)

    def on_create_from_folder(self, name: str, description: str, tags: str, resize: str, shared: bool, folder: str,
                              recursive: bool, request: gr.Request) -> dict:
        user = self.user(request)
        out = manage.create_bank_from_folder(self.s.store, user, name, folder, folder_import=self.s.folder_import(),
                                             recursive=recursive, description=description, tags=tags, resize=resize,
                                             shared=shared)
        return self._after_create(user, out, self.new_folder)

    def _after_create(self, user: User, out: manage.Outcome, source: Any) -> dict:
        """A new bank becomes the chosen one; its form is emptied for the next."""
        updates = {self.status: status_html(out)}
        if out.ok:
            name = out.data.info.name
            updates.update({self.bank: self.choice_update(user, name), self.new_name: "",
                            self.new_description: "", self.new_tags: "", source: None})
            updates.update(self.bank_updates(user, name))
        return updates

    def on_save_details(self, name: str | None, description: str, tags: str, resize: str,
                        request: gr.Request) -> dict:
        user = self.user(request)
        out = manage.update_details(self.s.store, user, name, description=description, tags=tags, resize=resize)
        return self._after_change(user, name, out, 1)

    def on_rename(self, name: str | None, new_name: str, request: gr.Request) -> dict:
        user = self.user(request)
        out = manage.rename_bank(self.s.store, user, name, new_name)
        return self._switch_to(user, out, out.data.name if out.ok else name)

    def on_delete(self, name: str | None, confirmed: bool, request: gr.Request) -> dict:
        user = self.user(request)
        out = manage.delete_bank(self.s.store, user, name, confirmed)
        return self._switch_to(user, out, None if out.ok else name)

    def on_import(self, upload: Any, new_name: str, overwrite: bool, shared: bool, request: gr.Request) -> dict:
        user = self.user(request)
        paths = upload_paths(upload)
        out = with_upload_hint(manage.import_bank(self.s.store, user, paths[0] if paths else None, name=new_name,
                                                  overwrite=overwrite, shared=shared), paths)
        updates = self._switch_to(user, out, out.data.name if out.ok else None)
        if out.ok:
            updates.update({self.import_file: None, self.import_name: "", self.import_overwrite: False})
        return updates

    def _switch_to(self, user: User, out: manage.Outcome, name: str | None) -> dict:
        updates = {self.status: status_html(out)}
        if out.ok:
            update = self.choice_update(user, name)
            updates[self.bank] = update
            updates.update(self.bank_updates(user, update["value"]))
        return updates

    def on_export(self, name: str | None, latents: str, request: gr.Request) -> dict:
        out = manage.export_bank(self.s.store, self.user(request), name, latents, self.s.export_dir)
        return {self.status: status_html(out), self.export_file: str(out.data) if out.ok else None}

    def on_encode(self, name: str | None, width: Any, height: Any, request: gr.Request,
                  progress: gr.Progress = gr.Progress()) -> dict:  # noqa: B008 - gradio's documented idiom
        user = self.user(request)
        if name:
            progress(0, desc=f"Waiting for the model to be free to encode {name}")

        def report(done: int, total: int) -> None:
            progress((done, total), desc=f"Encoding {name}", unit="images")

        out = manage.encode_bank(self.s.store, user, name, width, height, self.s.encode, report)
        return {self.status: status_html(out), **self.cache_updates(user, name)}

    def on_cancel(self) -> dict:
        self.s.cancel()
        return {self.status: status_html(manage.Outcome(True, "Asked the encoding to stop after the current batch."))}

    def on_drop(self, name: str | None, choice: str | None, request: gr.Request) -> dict:
        user = self.user(request)
        out = manage.drop_cache(self.s.store, user, name, choice)
        return {self.status: status_html(out), **self.cache_updates(user, name)}

    def _curation_view(self, out: manage.Outcome, threshold: Any, duplicates: Any) -> dict:
        rows = manage.curation_rows(out.data, float(threshold), float(duplicates)) if out.ok else []
        return {self.status: status_html(out), self.curate_table: table(manage.CURATION_COLUMNS, rows),
                self.curate_report: out.data if out.ok else None}

    def on_curate(self, files: Any, concepts: str, threshold: Any, duplicates: Any) -> dict:
        paths = upload_paths(files)
        out = with_upload_hint(manage.curate_uploads(self.s.clip_judge, paths, concepts, threshold=threshold,
                                                     duplicate_cosine=duplicates, limits=self.s.limits()), paths)
        return self._curation_view(out, threshold, duplicates)

    def on_curate_folder(self, folder: str, recursive: bool, concepts: str, threshold: Any, duplicates: Any,
                         request: gr.Request) -> dict:
        out = manage.curate_folder(self.s.clip_judge, self.user(request), folder, concepts,
                                   folder_import=self.s.folder_import(), recursive=recursive, threshold=threshold,
                                   duplicate_cosine=duplicates)
        return self._curation_view(out, threshold, duplicates)

    def on_curate_rethreshold(self, report: Any, threshold: Any, duplicates: Any) -> dict:
        """Moving a slider re-marks the scored images without scoring them again."""
        if report is None:
            return {}
        return {self.curate_table: table(manage.CURATION_COLUMNS,
                                         manage.curation_rows(report, float(threshold), float(duplicates)))}

    def on_curate_add(self, name: str | None, report: Any, threshold: Any, page: Any, request: gr.Request) -> dict:
        user = self.user(request)
        out = manage.add_curated(self.s.store, user, name, report, threshold, limits=self.s.limits())
        return self._after_change(user, name, out, page)

    def on_duplicates(self, name: str | None, distance: Any, request: gr.Request) -> dict:
        out = manage.near_duplicate_rows(self.s.store, self.user(request), name, distance)
        return {self.status: status_html(out), self.dup_table: table(DUPLICATE_COLUMNS, out.data or [])}

    # -- events
    def _wire(self, blocks: gr.Blocks) -> None:
        view = self._view_outputs()
        page = [self.gallery, self.page, self.page_label, self.selected, self.page_shas, self.selection]
        selecting = [self.selected, self.selection]
        after_change = [self.status, *view]
        switch = [self.status, self.bank, *view]
        on = self.guarded

        curation_rows = [self.curate_folder_row] if self.s.clip_judge is not None else []
        blocks.load(fn=on(self.on_load), inputs=[], outputs=[
            self.status, self.identity, self.bank, self.new_resize, self.add_folder_row, self.create_folder_row,
            self.new_shared, self.import_shared, *curation_rows], show_progress="hidden")
        self.refresh.click(fn=on(self.on_refresh), inputs=[self.bank], outputs=[self.status, self.bank, *view])
        self.bank.focus(fn=on(self.on_focus), inputs=[self.bank], outputs=[self.status, self.bank],
                        show_progress="hidden")
        self.bank.change(fn=on(self.on_bank), inputs=[self.bank], outputs=[self.status, *view])

        for trigger, handler in ((self.prev_page.click, self.on_prev_page), (self.next_page.click, self.on_next_page),
                                 (self.page.submit, self.on_page)):
            trigger(fn=on(handler), inputs=[self.bank, self.page], outputs=[self.status, *page])
        self.gallery.select(fn=on(self.on_gallery_select), inputs=[self.selection, self.page_shas],
                            outputs=[self.status, *selecting], show_progress="hidden")
        self.selected.input(fn=self.select, inputs=[self.selected], outputs=selecting, show_progress="hidden")
        self.select_page.click(fn=self.select, inputs=[self.page_shas], outputs=selecting, show_progress="hidden")
        self.clear_selection.click(fn=lambda: self.select([]), inputs=[], outputs=selecting, show_progress="hidden")
        self.remove.click(fn=on(self.on_remove), inputs=[self.bank, self.selection, self.page], outputs=after_change)
        self.add.click(fn=on(self.on_add), inputs=[self.bank, self.add_files, self.page],
                       outputs=[*after_change, self.add_files])
        self.add_folder.click(fn=on(self.on_add_folder),
                              inputs=[self.bank, self.add_folder_path, self.add_recursive, self.page],
                              outputs=after_change)

        form = [self.new_name, self.new_description, self.new_tags, self.new_resize, self.new_shared]
        cleared = [self.new_name, self.new_description, self.new_tags]
        self.create.click(fn=on(self.on_create), inputs=[*form, self.new_files],
                          outputs=[*switch, *cleared, self.new_files])
        self.create_from_folder.click(fn=on(self.on_create_from_folder),
                                      inputs=[*form, self.new_folder, self.new_recursive],
                                      outputs=[*switch, *cleared, self.new_folder])

        self.save_details.click(fn=on(self.on_save_details),
                                inputs=[self.bank, self.edit_description, self.edit_tags, self.edit_resize],
                                outputs=after_change)
        self.rename.click(fn=on(self.on_rename), inputs=[self.bank, self.rename_to], outputs=switch)
        self.delete.click(fn=on(self.on_delete), inputs=[self.bank, self.delete_confirm], outputs=switch)

        latents = [self.status, self.cache_note, self.cache_table, self.drop_choice]
        self.encode.click(fn=on(self.on_encode), inputs=[self.bank, self.encode_width, self.encode_height],
                          outputs=latents)
        self.cancel.click(fn=on(self.on_cancel), inputs=[], outputs=[self.status], queue=False)
        self.drop.click(fn=on(self.on_drop), inputs=[self.bank, self.drop_choice], outputs=latents)

        self.export.click(fn=on(self.on_export), inputs=[self.bank, self.export_latents],
                          outputs=[self.status, self.export_file])
        self.import_bank.click(fn=on(self.on_import),
                               inputs=[self.import_file, self.import_name, self.import_overwrite, self.import_shared],
                               outputs=[*switch, self.import_file, self.import_name, self.import_overwrite])
        self.find_duplicates.click(fn=on(self.on_duplicates), inputs=[self.bank, self.dup_distance],
                                   outputs=[self.status, self.dup_table])
        if self.s.clip_judge is not None:
            self._wire_curation(after_change)

    def _wire_curation(self, after_change: list[Any]) -> None:
        on = self.guarded
        numbers = [self.curate_concepts, self.curate_threshold, self.curate_duplicates]
        scored = [self.status, self.curate_table, self.curate_report]
        self.curate.click(fn=on(self.on_curate), inputs=[self.curate_files, *numbers], outputs=scored)
        self.curate_folder.click(fn=on(self.on_curate_folder),
                                 inputs=[self.curate_folder_path, self.curate_recursive, *numbers], outputs=scored)
        for slider in (self.curate_threshold, self.curate_duplicates):
            slider.release(fn=on(self.on_curate_rethreshold),
                           inputs=[self.curate_report, self.curate_threshold, self.curate_duplicates],
                           outputs=[self.status, self.curate_table], show_progress="hidden")
        self.curate_add.click(fn=on(self.on_curate_add),
                              inputs=[self.bank, self.curate_report, self.curate_threshold, self.page],
                              outputs=after_change)

    def _view_outputs(self) -> list[Any]:
        return [self.info, self.edit_description, self.edit_tags, self.edit_resize, self.rename_to,
                self.delete_confirm, self.dup_table, self.export_file, self.gallery, self.page, self.page_label,
                self.selected, self.page_shas, self.selection, self.cache_note, self.cache_table, self.drop_choice]


def table(columns: Iterable[str], rows: Iterable[Iterable[Any]] = ()) -> pd.DataFrame:
    """A table value that keeps its headers when it has no rows (a bare [] loses them in gradio 3)."""
    return pd.DataFrame([list(r) for r in rows], columns=list(columns))


def build_tab(services: TabServices) -> gr.Blocks:
    """The tab's Blocks, ready to be returned from ``on_ui_tabs`` or rendered into a test app."""
    return BankTab(services).build()
