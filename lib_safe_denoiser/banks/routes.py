"""The bank store over HTTP: ``/safe-denoiser/v1/...`` routes for scripts and other front-ends.

``build_router(BankApi(...))`` makes a FastAPI ``APIRouter`` from plain callables, so the WebUI glue
wires in its store, its encoder and its settings, and tests wire a store on a temp dir. Handlers stay
thin: the store validates and does the work; this module decides who the caller is, what they may see
and change (``policy.users``), bounds request bodies, and turns errors into JSON answers.

The WebUI applies ``--api-auth`` only to its own routes, so every route here checks it itself, before a
request body is read. Each 4xx answer is ``{"detail": "<what is wrong>"}``: 401 missing or wrong
credentials, 403 not allowed, 404 no such bank (also for another user's private bank, so names of
private banks do not leak), 409 conflicts with the server's state, 413 too large, 422 bad input.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import queue
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Extra, Field
from starlette.background import BackgroundTask

import lib_safe_denoiser
from lib_safe_denoiser.banks.encode import LATENT_DOWNSCALE
from lib_safe_denoiser.banks.images import DEFAULT_RESIZE
from lib_safe_denoiser.banks.inputs import MIB, InputLimits, SkippedFile, images_from_zip, validate_bank_name
from lib_safe_denoiser.banks.store import AddReport, BankInfo, BankStore
from lib_safe_denoiser.errors import BankError, BankNotFoundError, EncodeCancelled
from lib_safe_denoiser.generation.schema import args_schema
from lib_safe_denoiser.policy.operator_policy import PolicyConflictError, PolicyError
from lib_safe_denoiser.policy.presets_store import PresetConflictError, PresetError, PresetNotFoundError
from lib_safe_denoiser.policy.users import (
    AccessError,
    User,
    authenticate,
    can_see,
    make_user,
    owner_for_new_bank,
    parse_auth,
    require_edit,
    require_operator,
)

logger = logging.getLogger(__name__)

API_PREFIX = "/safe-denoiser/v1"
API_VERSION = 1
TAG = "Safe Denoiser banks"

SMALL_BODY_LIMIT = 1 * MIB
"""Largest body of a route that takes no images (JSON settings, file names, hashes)."""
BODY_OVERHEAD = 1 * MIB
"""Room above the images' own bytes for JSON keys, multipart headers and form fields."""
BASE64_GROWTH = 4 / 3

MAX_ENCODE_SIDE = 8192
"""Largest generation width or height a bank can be encoded for, in pixels."""
MAX_FINISHED_JOBS = 100
"""Finished encode jobs remembered for polling; older ones are forgotten first."""

JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
ZIP_SUFFIX = ".zip"
DATA_URL_MARK = ";base64,"
STATE_KEY = "safe_denoiser"


# ---------------------------------------------------------------------------------------- host wiring
EncodeFn = Callable[[str, int, int, Callable[[int, int], None]], Mapping[str, Any]]
"""``(bank, width, height, progress(done, total)) -> {"vae_id", "latent_hw", ...}``: encode the bank for
the loaded model at that generation size; ``BankError`` when that is impossible now (no model, ...),
``EncodeCancelled`` when stopped (also when ``progress`` raises it)."""


@dataclass(frozen=True)
class RouteSettings:
    """The host's settings, read once per request (they can change while the server runs)."""

    api_auth: str | None = None
    """``--api-auth``: "user:pass,user2:pass2"; None or empty: no credentials asked for."""
    other_users: bool = False
    """Users are configured elsewhere (``--gradio-auth``): the anonymous API caller is then no operator."""
    operators: str = ""
    """Comma-separated operator names."""
    folder_import: bool = True
    """Whether operators may make banks from folders on the server."""
    limits: InputLimits = field(default_factory=InputLimits)
    default_resize: str = DEFAULT_RESIZE

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_auth) or self.other_users


@dataclass(frozen=True)
class BankApi:
    """What the routes need from their host."""

    store: BankStore
    encode: EncodeFn
    settings: Callable[[], RouteSettings] = RouteSettings


# ---------------------------------------------------------------------------------------- models
class _Open(BaseModel):
    class Config:
        extra = Extra.allow


class BankModel(_Open):
    name: str
    content_hash: str
    short_hash: str
    n_images: int
    created: str
    description: str = ""
    updated: str = ""
    owner: str | None = Field(None, description="None: a shared bank")
    tags: list[str] = []
    resize: str = DEFAULT_RESIZE
    has_images: bool = Field(True, description="False: imported latents only")


class SkippedModel(BaseModel):
    name: str
    reason: str


class ReportModel(_Open):
    added: list[str] = []
    duplicates: list[str] = []
    skipped: list[SkippedModel] = []
    near_duplicates: list[Any] = []
    summary: str = ""


class CacheModel(_Open):
    vae_id: str
    latent_hw: list[int]


class ImageEntryModel(_Open):
    sha256: str
    source_name: str = ""


class NearDuplicateModel(BaseModel):
    a: str
    b: str
    distance: int


class VersionOut(BaseModel):
    version: str
    api: int


class BankOut(BaseModel):
    bank: BankModel


class BankListOut(BaseModel):
    banks: list[BankModel]


class AddOut(BaseModel):
    bank: BankModel
    report: ReportModel


class BankDetailOut(BaseModel):
    bank: BankModel
    images: list[ImageEntryModel]
    caches: list[CacheModel]
    near_duplicates: list[NearDuplicateModel]


class DeletedOut(BaseModel):
    deleted: str


class RemovedOut(BaseModel):
    removed: int


class CacheOut(BaseModel):
    cache: CacheModel


class JobOut(BaseModel):
    job_id: str
    bank: str
    status: str = Field(..., description=" | ".join(JOB_STATES))
    done: int
    total: int
    error: str = ""
    cache: CacheModel | None = None


class ImageIn(BaseModel):
    name: str = Field("", description="File name shown in reports; defaults to image-<n>")
    data: str = Field(..., description="The file's bytes in base64 (a data: URL works too)")


class BankCreateIn(BaseModel):
    name: str
    description: str = ""
    tags: list[str] = []
    resize: str | None = Field(None, description="crop | pad | stretch; default: the server's setting")
    shared: bool = Field(False, description="Shared with every user (operators only); otherwise private")
    images: list[ImageIn]


class BankPatchIn(BaseModel):
    new_name: str | None = None
    description: str | None = None
    tags: list[str] | None = None
    resize: str | None = None


class ImagesIn(BaseModel):
    images: list[ImageIn]


class RemoveIn(BaseModel):
    sha256: list[str]


class EncodeIn(BaseModel):
    width: int = Field(512, gt=0, le=MAX_ENCODE_SIDE)
    height: int = Field(512, gt=0, le=MAX_ENCODE_SIDE)
    wait: bool = Field(True, description="true: answer when done; false: answer 202 with a job to poll")


class FolderIn(BaseModel):
    folder: str = Field(..., description="A folder on the server")
    recursive: bool = False
    description: str = ""
    tags: list[str] = []
    resize: str | None = None
    shared: bool = False


# ---------------------------------------------------------------------------------------- errors
class ApiProblem(Exception):
    """An answer other than success, with its status and message."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, dict(headers or {})

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": self.detail}, status_code=self.status, headers=self.headers)


def _problem_of(exc: Exception) -> ApiProblem | None:
    """The HTTP answer for an exception a handler let through (None: a bug, left to the server)."""
    if isinstance(exc, ApiProblem):
        return exc
    if isinstance(exc, AccessError):
        return ApiProblem(403, str(exc))
    if isinstance(exc, (BankNotFoundError, PresetNotFoundError)):
        return ApiProblem(404, str(exc))
    if isinstance(exc, (PresetConflictError, PolicyConflictError)):
        return ApiProblem(409, str(exc))
    if isinstance(exc, (PresetError, PolicyError)):
        return ApiProblem(422, str(exc))
    if isinstance(exc, BankError):
        return ApiProblem(422, str(exc))
    if isinstance(exc, RequestValidationError):
        parts = [f"{' -> '.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return ApiProblem(422, "invalid request: " + "; ".join(parts))
    if isinstance(exc, HTTPException):
        return ApiProblem(exc.status_code, str(exc.detail), exc.headers)
    return None


def _missing(name: str) -> BankNotFoundError:
    return BankNotFoundError(f"no bank named {name!r}")


# ---------------------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class Caller:
    """Who sent the request and the settings it is judged by."""

    user: User
    settings: RouteSettings


def _caller(request: Request) -> Caller:
    return getattr(request.state, STATE_KEY)


CALLER = Depends(_caller)
"""The dependency that hands an endpoint its ``Caller`` (set by ``Route`` before the endpoint runs)."""

# FastAPI reads parameters from these defaults; made once here (ruff B008).
IMPORT_FILE = File(..., description="A .zip made by the export route")
IMPORT_NAME = Form(None, description="Name for the bank; default: the archive's")
IMPORT_OVERWRITE = Form(False, description="Replace a bank of that name (needs 'name')")
IMPORT_SHARED = Form(False, description="Shared with every user (operators only); otherwise private")
UPLOAD_FILES = File(..., description="Images, or .zip archives of them")
DROP_VAE = Query(None, description="Only caches of this VAE id")
DROP_WIDTH = Query(None, gt=0, description="Only caches for this generation width in pixels")
DROP_HEIGHT = Query(None, gt=0, description="Only caches for this generation height in pixels")
EXPORT_LATENTS = Query("include", description="none | include | only")


def _identify(request: Request, settings: RouteSettings) -> User:
    """The user behind a request; ``ApiProblem(401)`` when credentials are required and not right."""
    name = None
    if settings.api_auth:
        header = request.headers.get("authorization")
        name = authenticate(header, parse_auth(settings.api_auth))
        if name is None:
            detail = ("incorrect username or password" if header else
                      "authentication required: send HTTP Basic credentials of a user in --api-auth")
            raise ApiProblem(401, detail, {"WWW-Authenticate": "Basic"})
    return make_user(name, settings.operators, settings.auth_enabled)


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``limit`` bytes."""
    too_large = ApiProblem(413, f"the request body is larger than {limit / MIB:.1f} MB, the most this route "
                                "accepts (for images: the upload size setting of the Safe Denoiser section)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _replaying(request: Request, body: bytes) -> Request:
    """A request whose body is ``body`` (already read), for FastAPI to parse as usual."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Mapping[str, Any]:
        return pending.pop() if pending else await request.receive()

    return Request(request.scope, receive)


def _upload_limit(limits: InputLimits) -> int:
    return limits.max_total_bytes + BODY_OVERHEAD


def _base64_limit(limits: InputLimits) -> int:
    return int(limits.max_total_bytes * BASE64_GROWTH) + BODY_OVERHEAD


def _decode_images(images: Iterable[ImageIn]) -> tuple[list[tuple[str, bytes]], list[SkippedFile]]:
    """Base64 items -> ``(name, bytes)``; items that are not base64 are skipped by name."""
    sources, skipped = [], []
    for i, item in enumerate(images):
        name = item.name.strip() or f"image-{i + 1}"
        data = item.data.strip()
        if data.startswith("data:") and DATA_URL_MARK in data:
            data = data.split(DATA_URL_MARK, 1)[1]
        try:
            sources.append((name, base64.b64decode("".join(data.split()), validate=True)))
        except (binascii.Error, ValueError):
            skipped.append(SkippedFile(name, "its data is not valid base64"))
    return sources, skipped


def _with_skipped(add: Callable[[list[tuple[str, bytes]]], AddReport], sources: list[tuple[str, bytes]],
                  skipped: list[SkippedFile]) -> AddReport:
    """Run ``add`` on the good sources and report what was skipped before the store saw it too."""
    listed = "; ".join(f"{s.name}: {s.reason}" for s in skipped)
    if not sources:
        raise BankError(f"none of the uploaded files can be used: {listed}" if skipped else "no images given")
    try:
        report = add(sources)
    except BankError as exc:
        if skipped and not isinstance(exc, BankNotFoundError):
            raise BankError(f"{exc}; also skipped: {listed}") from None
        raise
    return dataclasses.replace(report, skipped=(*skipped, *report.skipped))


def _add_out(report: AddReport) -> dict[str, Any]:
    return {"bank": report.info.as_dict(), "report": report.as_dict()}


# ---------------------------------------------------------------------------------------- encode jobs
@dataclass
class _Job:
    job_id: str
    bank: str
    owner: str | None
    width: int
    height: int
    total: int
    status: str = "queued"
    done: int = 0
    error: str = ""
    cache: dict[str, Any] | None = None
    cancel_requested: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "bank": self.bank, "status": self.status, "done": self.done,
                "total": self.total, "error": self.error, "cache": self.cache}


class EncodeJobs:
    """Encodes asked for with ``wait: false``, run in order by one worker thread.

    The thread lives only while there is work. Finished jobs are kept for polling, the oldest
    forgotten first beyond ``MAX_FINISHED_JOBS``.
    """

    def __init__(self, run: Callable[[str, int, int, Callable[[int, int], None]], dict[str, Any]]) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None

    def submit(self, bank: str, owner: str | None, width: int, height: int, total: int) -> dict[str, Any]:
        job = _Job(uuid.uuid4().hex, bank, owner, width, height, total)
        with self._lock:
            self._forget_old()
            self._jobs[job.job_id] = job
            self._queue.put(job)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="safe-denoiser-encode-jobs", daemon=True)
                self._worker.start()
            return job.as_dict()

    def status(self, job_id: str, user: User) -> dict[str, Any]:
        with self._lock:
            return self._visible(job_id, user).as_dict()

    def cancel(self, job_id: str, user: User) -> dict[str, Any]:
        """Stop a job: a queued one never starts, a running one stops after its current batch."""
        with self._lock:
            job = self._visible(job_id, user)
            if job.status == "queued":
                job.status, job.error = "cancelled", "cancelled before it started"
            elif job.status == "running":
                job.cancel_requested = True
            return job.as_dict()

    def _visible(self, job_id: str, user: User) -> _Job:
        job = self._jobs.get(job_id)
        if job is None or not (job.owner == user.name or user.operator):
            raise ApiProblem(404, f"no encode job {job_id!r} (finished jobs are kept for a while only)")
        return job

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.status not in ("queued", "running")]
        for job in finished[: max(0, len(finished) - MAX_FINISHED_JOBS + 1)]:
            del self._jobs[job.job_id]

    def _work(self) -> None:
        while True:
            with self._lock:
                if self._queue.empty():
                    self._worker = None
                    return
                job = self._queue.get()
                if job.status != "queued":
                    continue
                job.status = "running"
            self._execute(job)

    def _execute(self, job: _Job) -> None:
        def progress(done: int, total: int) -> None:
            with self._lock:
                job.done, job.total = done, total
                if job.cancel_requested:
                    raise EncodeCancelled(f"encoding bank {job.bank!r} was cancelled by request")

        try:
            cache = self._run(job.bank, job.width, job.height, progress)
        except EncodeCancelled as exc:
            outcome = {"status": "cancelled", "error": str(exc)}
        except BankError as exc:
            outcome = {"status": "failed", "error": str(exc)}
        except Exception as exc:  # the worker must outlive any one job; the job says what happened
            logger.exception("safe denoiser: encode job for bank %r failed", job.bank)
            outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        else:
            outcome = {"status": "done", "cache": cache, "done": job.total}
        with self._lock:
            for key, value in outcome.items():
                setattr(job, key, value)


# ---------------------------------------------------------------------------------------- the router
def build_router(api: BankApi) -> APIRouter:
    """The ``/safe-denoiser/v1`` routes over ``api``; include it into the app (``app.include_router``)."""
    store = api.store
    body_limits: dict[str, Callable[[InputLimits], int]] = {
        "create_bank": _base64_limit,
        "add_images": _base64_limit,
        "upload_images": _upload_limit,
        "import_bank": _upload_limit,
    }

    class Route(APIRoute):
        """Authenticates before the body is read, bounds the body, and answers errors as JSON."""

        def get_route_handler(self) -> Callable[[Request], Any]:
            inner = super().get_route_handler()
            body_limit = body_limits.get(self.name, lambda _limits: SMALL_BODY_LIMIT)

            async def handler(request: Request) -> Response:
                try:
                    settings = api.settings()
                    user = _identify(request, settings)
                    setattr(request.state, STATE_KEY, Caller(user, settings))
                    body = await _read_body(request, body_limit(settings.limits))
                    return await inner(_replaying(request, body))
                except Exception as exc:
                    problem = _problem_of(exc)
                    if problem is None:
                        raise
                    return problem.response()

            return handler

    router = APIRouter(prefix=API_PREFIX, tags=[TAG], route_class=Route)

    def visible(name: str, user: User) -> BankInfo:
        """The bank if ``user`` may see it; the same 404 whether it is missing or someone else's."""
        validate_bank_name(name)
        try:
            info = store.get(name)
        except BankNotFoundError:
            raise _missing(name) from None
        if not can_see(info, user):
            raise _missing(name)
        return info

    def editable(name: str, user: User) -> BankInfo:
        info = visible(name, user)
        require_edit(info, user)
        return info

    def name_is_free(name: str) -> None:
        """409 if the name (or another casing of it) is taken; the message names no other bank."""
        validate_bank_name(name)
        try:
            store.check_free(name, False)
        except BankError:
            raise ApiProblem(409, f"a bank named {name!r} already exists (names are case-insensitive); "
                                  "choose another name") from None

    def image_of(name: str, sha256: str, user: User) -> None:
        """404 unless ``user`` sees bank ``name`` and it holds an image with this hash."""
        visible(name, user)
        if not any(e["sha256"] == sha256 for e in store.image_entries(name)):
            raise ApiProblem(404, f"bank {name!r} has no image with hash {sha256[:64]!r}")

    def encode_bank(name: str, width: int, height: int, progress: Callable[[int, int], None]) -> dict[str, Any]:
        result = dict(api.encode(name, width, height, progress))
        hw = list(result.get("latent_hw", ()))
        entry = next((c.as_dict() for c in store.cache_status(name)
                      if c.vae_id == result.get("vae_id") and list(c.latent_hw) == hw), {})
        return {**result, **entry}

    jobs = EncodeJobs(encode_bank)

    # ------------------------------------------------------------------ about
    @router.get("/version", summary="Extension and API version", response_model=VersionOut)
    def version() -> dict[str, Any]:
        return {"version": lib_safe_denoiser.__version__, "api": API_VERSION}

    @router.get("/schema", summary="JSON schema of the alwayson_scripts entry (generation arguments)")
    def schema() -> dict[str, Any]:
        return args_schema()

    # ------------------------------------------------------------------ banks
    @router.get("/banks", summary="Banks the caller may see", response_model=BankListOut)
    def list_banks(caller: Caller = CALLER) -> dict[str, Any]:
        return {"banks": [info.as_dict() for info in store.list() if can_see(info, caller.user)]}

    @router.post("/banks", summary="Create a bank from base64 images", status_code=201, response_model=AddOut)
    def create_bank(body: BankCreateIn, caller: Caller = CALLER) -> dict[str, Any]:
        owner = owner_for_new_bank(caller.user, body.shared)
        name_is_free(body.name)
        sources, skipped = _decode_images(body.images)
        report = _with_skipped(
            lambda good: store.create(body.name, good, description=body.description, owner=owner, tags=body.tags,
                                      resize=body.resize or caller.settings.default_resize,
                                      limits=caller.settings.limits),
            sources, skipped)
        return _add_out(report)

    @router.post("/banks/import", summary="Import a bank exported as .zip", status_code=201, response_model=BankOut)
    def import_bank(file: UploadFile = IMPORT_FILE, name: str | None = IMPORT_NAME,
                    overwrite: bool = IMPORT_OVERWRITE, shared: bool = IMPORT_SHARED,
                    caller: Caller = CALLER) -> dict[str, Any]:
        owner = owner_for_new_bank(caller.user, shared)
        if name is not None and not overwrite:
            name_is_free(name)
        if overwrite:
            if name is None:
                raise ApiProblem(422, "give 'name' to overwrite a bank (the archive's own name is not used then)")
            validate_bank_name(name)
            taken = next((n for n in store.names() if n.casefold() == name.casefold()), None)
            if taken is not None:
                existing = store.get(taken)
                if not can_see(existing, caller.user):
                    name_is_free(name)
                require_edit(existing, caller.user)
        info = store.import_bank(file.file.read(), name=name, owner=owner, overwrite=overwrite)
        return {"bank": info.as_dict()}

    @router.get("/banks/{name}", summary="A bank with its images, latent caches and near-duplicate pairs",
                response_model=BankDetailOut)
    def get_bank(name: str, caller: Caller = CALLER) -> dict[str, Any]:
        info = visible(name, caller.user)
        return {
            "bank": info.as_dict(),
            "images": store.image_entries(name),
            "caches": [c.as_dict() for c in store.cache_status(name)],
            "near_duplicates": [{"a": a, "b": b, "distance": d} for a, b, d in store.near_duplicates(name)],
        }

    @router.patch("/banks/{name}", summary="Rename a bank or change its description, tags or resize policy",
                  response_model=BankOut)
    def patch_bank(name: str, body: BankPatchIn, caller: Caller = CALLER) -> dict[str, Any]:
        info = editable(name, caller.user)
        changes = {k: v for k, v in body.dict(exclude={"new_name"}).items() if v is not None}
        renaming = body.new_name is not None and body.new_name != name
        if not changes and not renaming:
            raise ApiProblem(422, "nothing to change: give new_name, description, tags or resize")
        if renaming and body.new_name.casefold() != name.casefold():  # a new casing of its own name is free
            name_is_free(body.new_name)
        if changes:
            info = store.update(name, **changes)
        if renaming:
            info = store.rename(name, body.new_name)
        return {"bank": info.as_dict()}

    @router.delete("/banks/{name}", summary="Delete a bank (its images stay while other banks use them)",
                   response_model=DeletedOut)
    def delete_bank(name: str, caller: Caller = CALLER) -> dict[str, Any]:
        editable(name, caller.user)
        store.delete(name)
        return {"deleted": name}

    # ------------------------------------------------------------------ images
    @router.post("/banks/{name}/images", summary="Add base64 images to a bank", response_model=AddOut)
    def add_images(name: str, body: ImagesIn, caller: Caller = CALLER) -> dict[str, Any]:
        editable(name, caller.user)
        sources, skipped = _decode_images(body.images)
        report = _with_skipped(lambda good: store.add_images(name, good, limits=caller.settings.limits),
                               sources, skipped)
        return _add_out(report)

    @router.post("/banks/{name}/images/upload", summary="Add uploaded image files (a .zip is expanded)",
                 response_model=AddOut)
    def upload_images(name: str, files: list[UploadFile] = UPLOAD_FILES, caller: Caller = CALLER) -> dict[str, Any]:
        editable(name, caller.user)
        limits = caller.settings.limits
        sources: list[tuple[str, bytes]] = []
        skipped: list[SkippedFile] = []
        for i, upload in enumerate(files):
            filename = upload.filename or f"file-{i + 1}"
            data = upload.file.read()
            if filename.lower().endswith(ZIP_SUFFIX):
                try:
                    members, left_out = images_from_zip(data, limits)
                except BankError as exc:  # this archive is unusable; the other files still count
                    skipped.append(SkippedFile(filename, str(exc)))
                    continue
                sources += [(f"{filename}/{member}", content) for member, content in members]
                skipped += [SkippedFile(f"{filename}/{s.name}", s.reason) for s in left_out]
            else:
                sources.append((filename, data))
        report = _with_skipped(lambda good: store.add_images(name, good, limits=limits), sources, skipped)
        return _add_out(report)

    @router.post("/banks/{name}/images/remove", summary="Remove images from a bank by sha256",
                 response_model=BankOut)
    def remove_images(name: str, body: RemoveIn, caller: Caller = CALLER) -> dict[str, Any]:
        editable(name, caller.user)
        return {"bank": store.remove_images(name, body.sha256).as_dict()}

    @router.get("/banks/{name}/images/{sha256}", summary="One image file of a bank", response_class=FileResponse)
    def image_file(name: str, sha256: str, caller: Caller = CALLER) -> FileResponse:
        image_of(name, sha256, caller.user)
        return FileResponse(store.image_path(name, sha256))

    @router.get("/banks/{name}/images/{sha256}/thumbnail", summary="A PNG thumbnail of one image of a bank",
                response_class=Response)
    def thumbnail(name: str, sha256: str, caller: Caller = CALLER) -> Response:
        image_of(name, sha256, caller.user)
        return Response(store.thumbnail(name, sha256), media_type="image/png")

    # ------------------------------------------------------------------ latents
    @router.post("/banks/{name}/encode", summary="Encode a bank for the loaded model at a generation size",
                 response_model=CacheOut, responses={202: {"model": JobOut, "description": "Started (wait=false)"}})
    def encode(name: str, body: EncodeIn, caller: Caller = CALLER) -> Any:
        info = visible(name, caller.user)
        if body.width % LATENT_DOWNSCALE or body.height % LATENT_DOWNSCALE:
            raise ApiProblem(422, f"width and height must be multiples of {LATENT_DOWNSCALE}, "
                                  f"got {body.width}x{body.height}")
        if not body.wait:
            job = jobs.submit(name, caller.user.name, body.width, body.height, info.n_images)
            return JSONResponse(job, status_code=202)
        try:
            return {"cache": encode_bank(name, body.width, body.height, lambda done, total: None)}
        except BankNotFoundError:
            raise
        except BankError as exc:  # the bank is fine; the server cannot encode it now (no model, cancelled)
            raise ApiProblem(409, str(exc)) from None

    @router.get("/jobs/{job_id}", summary="Progress of an encode started with wait=false", response_model=JobOut)
    def job_status(job_id: str, caller: Caller = CALLER) -> dict[str, Any]:
        return jobs.status(job_id, caller.user)

    @router.post("/jobs/{job_id}/cancel", summary="Cancel an encode job", response_model=JobOut)
    def cancel_job(job_id: str, caller: Caller = CALLER) -> dict[str, Any]:
        return jobs.cancel(job_id, caller.user)

    @router.delete("/banks/{name}/caches", summary="Drop cached latents of a bank (all, or one VAE and/or size)",
                   response_model=RemovedOut)
    def drop_caches(name: str, vae_id: str | None = DROP_VAE, width: int | None = DROP_WIDTH,
                    height: int | None = DROP_HEIGHT, caller: Caller = CALLER) -> dict[str, Any]:
        editable(name, caller.user)
        if (width is None) != (height is None):
            raise ApiProblem(422, "give both width and height (the generation size), or neither")
        latent_hw = None
        if width is not None and height is not None:
            if width % LATENT_DOWNSCALE or height % LATENT_DOWNSCALE:
                raise ApiProblem(422, f"width and height must be multiples of {LATENT_DOWNSCALE}, "
                                      f"got {width}x{height}")
            latent_hw = (height // LATENT_DOWNSCALE, width // LATENT_DOWNSCALE)
        return {"removed": store.drop_cache(name, vae_id=vae_id, latent_hw=latent_hw)}

    # ------------------------------------------------------------------ transfer
    @router.get("/banks/{name}/export", summary="Download a bank as .zip", response_class=FileResponse)
    def export_bank(name: str, latents: str = EXPORT_LATENTS, caller: Caller = CALLER) -> FileResponse:
        visible(name, caller.user)
        folder = Path(tempfile.mkdtemp(prefix="safe-denoiser-export-"))
        try:
            path = store.export_bank(name, folder, latents=latents)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return FileResponse(path, media_type="application/zip", filename=path.name,
                            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

    @router.post("/banks/{name}/folder", summary="Create a bank from a folder on the server (operators)",
                 status_code=201, response_model=AddOut)
    def from_folder(name: str, body: FolderIn, caller: Caller = CALLER) -> dict[str, Any]:
        validate_bank_name(name)
        if not caller.settings.folder_import:
            raise AccessError("making banks from folders on the server is switched off in the settings")
        require_operator(caller.user, "make banks from folders on the server")
        owner = owner_for_new_bank(caller.user, body.shared)
        name_is_free(name)
        report = store.add_folder(name, body.folder, recursive=body.recursive, description=body.description,
                                  owner=owner, tags=body.tags, resize=body.resize or caller.settings.default_resize)
        return _add_out(report)

    return router
