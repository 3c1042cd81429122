"""The editor's web app (FastAPI): sessions of editable scenes, generated images, downloads.

    app = create_app(CheckpointBackend.from_options(opts), scenes=DatasetScenes.from_options(opts, "test"))
    server = EditorServer(app, host="127.0.0.1", port=0).start()   # or tools/editor.py
    print(server.url)

Every session holds one `Scene` in memory, keyed by a random id that the page keeps in localStorage
(the page also keeps a copy of the edited maps there, and re-uploads them if the server forgot the session).
Errors are JSON `{"error": message}` with a 4xx status (5xx only for failures of the model itself).

| method | path | what |
|---|---|---|
| GET | `/` | the editor page (`static/index.html`, `editor.js`, `editor.css`) |
| GET | `/api/config` | classes (name, colour, thing, clusters), limits, size multiple, backend |
| GET | `/api/scenes` | the dataset's scene names (`{dataroot}/{phase}_label`, relative names only) |
| POST | `/api/sessions` | `{"name": NAME}`: open a dataset scene by name (404 for any other name) |
| POST | `/api/sessions/upload` | multipart `label` (8-bit PNG), `instance` (16-bit PNG, optional), `name`, `styles` (StyleSpec JSON), `seed` |
| GET | `/api/sessions/{id}` | the session's state: size, regions (id, class, pixels, bbox, style), seed, undo/redo |
| POST | `/api/sessions/{id}/edit` | one edit, e.g. `{"op": "paint", "points": [[x, y], ...], "class_id": 2, "radius": 6}` (see `apply_edit`) |
| POST | `/api/sessions/{id}/undo`, `/redo` | history |
| GET | `/api/sessions/{id}/region?x=&y=` | the region under a pixel |
| GET | `/api/sessions/{id}/image.png` | the generated image (regenerated when the scene changed; `X-Generate-Ms`) |
| GET | `/api/sessions/{id}/label.png`, `instance.png` | the edited maps: 8-bit labels, 16-bit instances |
| GET | `/api/sessions/{id}/label_color.png` | the colour-coded label map with instance boundaries |
| GET | `/api/sessions/{id}/regions/{rid}/mask.png` | a translucent overlay of one region |
| GET | `/api/sessions/{id}/styles.json` | the chosen styles as a StyleSpec (for `tools/test.py --style_spec`); the seed of the others in `X-Seed` |
| GET | `/api/sessions/{id}/regions/{rid}/styles/{k}.png` | a swatch: a crop of the scene around the region, generated with the region in style cluster k |

Status codes: 404 unknown session/scene/region, 413 upload too large (by Content-Length, or counted as a
chunked body streams: `BodyLimit`), 415 not a PNG, 422 invalid maps, edits or fields (a brush stroke over
`scene.MAX_STROKE_WORK` pixel tests, a feature vector outside +-`scene.MAX_STYLE_VALUE`), 400 unknown edit
operation, or (served by `EditorServer`) a Host header that is not a trusted host (`TrustedHosts`).
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import importlib.util
import io
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import numpy as np
from fastapi import Body, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from pix2pixhd_tf.data.classes import ClassTable
from pix2pixhd_tf.data.files import DatasetError, DatasetLayout, list_folder_files
from pix2pixhd_tf.editor.backends import Backend, make_backend
from pix2pixhd_tf.editor.scene import (
    DEFAULT_LIMITS,
    Limits,
    Scene,
    SceneError,
    classes_json,
    derive_instances,
    encode_id_png,
    eraser_class,
    load_uploads,
    validate_maps,
)
from pix2pixhd_tf.styles import StyleSpec

if importlib.util.find_spec("python_multipart") is None:  # else FastAPI fails later, with a RuntimeError
    raise ModuleNotFoundError(
        "No module named 'python_multipart' (the editor's uploads need it)", name="python_multipart"
    )

__all__ = [
    "BodyLimit",
    "DatasetScenes",
    "EditorServer",
    "TrustedHosts",
    "apply_edit",
    "build_editor",
    "create_app",
    "trusted_hosts_for",
]

_LOG = logging.getLogger(__name__)
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
SWATCH_MARGIN = 0.5  # swatch crops reach this fraction of the region's size beyond it on every side
SWATCH_MIN = 32


# ------------------------------------------------------------------------------------------ dataset scenes


class DatasetScenes:
    """The label (+ instance) files of one dataset phase, known to clients by name only.

    Names are the label files' paths relative to `{dataroot}/{phase}_label` (e.g. `scene_00000.png`,
    `frankfurt/frankfurt_000000_000294_gtFine_labelIds.png`). A client sends a name; the server looks it up
    in this table, built from the dataset listing at start-up, and never opens a path a client sent.
    """

    def __init__(self, root: str, phase: str, pairs: Mapping[str, tuple[str, str | None]]):
        self.root = os.path.realpath(root)
        self.phase = phase
        self._pairs = dict(pairs)

    @classmethod
    def from_options(cls, opts, phase: str | None = None, *, instances: bool | None = None) -> DatasetScenes:
        """The pairs of `{dataroot}/{phase}_label` and `{phase}_inst`, as the data pipeline pairs them.

        Args:
            opts: the dataset's --dataroot, --label_nc and --max_dataset_size.
            phase: the folder prefix (default `opts.phase`).
            instances: list `{phase}_inst` too (default: unless --no_instance).

        Raises:
            DatasetError: the folders are missing, empty or do not pair (the message says why).
        """
        phase = phase or opts.phase
        layout = _scene_layout(opts, not opts.no_instance if instances is None else instances)
        files = list_folder_files(layout, phase=phase)
        label_dir = os.path.join(layout.dataroot, layout.folders(phase)["label"])
        pairs = {}
        for i, info in enumerate(files.label):
            name = os.path.relpath(info.path, label_dir).replace(os.sep, "/")
            pairs[name] = (info.path, files.instance[i].path if files.instance else None)
        return cls(layout.dataroot, phase, pairs)

    @property
    def names(self) -> list[str]:
        return list(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def load(self, name: Any, classes: ClassTable, size_multiple: int) -> tuple[np.ndarray, np.ndarray]:
        """(label, instance) int32 maps of the scene `name`; SceneError 404 for a name not in the listing."""
        if not isinstance(name, str) or name not in self._pairs:
            raise SceneError(
                f"there is no scene named {str(name)[:200]!r} in {self.phase}_label: open one of the names that "
                "GET /api/scenes lists",
                404,
            )
        label_path, instance_path = self._pairs[name]
        for path in (label_path, instance_path):
            if path is not None and not os.path.realpath(path).startswith(self.root + os.sep):
                raise SceneError(f"scene {name!r} lies outside the dataset root", 404)
        label = _read_ids(label_path)
        instance = _read_ids(instance_path) if instance_path else derive_instances(label, classes.things)
        validate_maps(label, instance, label_nc=classes.label_nc, size_multiple=size_multiple)
        return label, instance


def _scene_layout(opts, instances: bool) -> DatasetLayout:
    """The label (+ instance) folders the editor opens scenes from: no images or feature maps needed."""
    return DatasetLayout(opts.dataroot, opts.label_nc, instances=instances, max_dataset_size=opts.max_dataset_size)


def _read_ids(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).astype(np.int32)


# ------------------------------------------------------------------------------------------ sessions


@dataclasses.dataclass
class Session:
    id: str
    scene: Scene
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    rng: np.random.Generator = dataclasses.field(default_factory=np.random.default_rng)
    image_revision: int = -1
    image_png: bytes = b""
    image_ms: float = 0.0
    swatches: dict[tuple[int, int, int], bytes] = dataclasses.field(default_factory=dict)


class _Sessions:
    """At most `capacity` sessions in memory; the least recently used is dropped first."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, scene: Scene) -> Session:
        session = Session(secrets.token_urlsafe(16), scene)
        with self._lock:
            self._items[session.id] = session
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return session

    def get(self, session_id: str) -> Session:
        with self._lock:
            session = self._items.get(session_id)
            if session is None:
                raise SceneError(
                    f"no session {session_id[:64]!r} (the server forgot it or restarted): open a scene", 404
                )
            self._items.move_to_end(session_id)
            return session


# ------------------------------------------------------------------------------------------ edits


_EDIT_FIELDS = {
    "paint": ({"points", "class_id"}, {"radius", "instance_id"}),
    "erase": ({"points"}, {"radius", "class_id"}),
    "add_object": ({"points", "class_id"}, {"radius"}),
    "delete": ({"region"}, {"fill_class"}),
    "relabel": ({"region", "class_id"}, set()),
    "restyle": ({"region"}, {"style"}),
    "reseed": (set(), {"seed"}),
}
DEFAULT_RADIUS = 8


def apply_edit(scene: Scene, edit: Mapping[str, Any], *, rng: np.random.Generator | None = None):
    """Apply one edit given as JSON to `scene` and return its `EditResult`.

    Edits (`op` and fields; `radius` defaults to 8 pixels, points are [x, y] image pixels):

        {"op": "paint", "points": [[x, y], ...], "class_id": c, "radius": r, "instance_id": id (optional)}
        {"op": "erase", "points": [...], "radius": r, "class_id": stuff class (optional: the eraser class)}
        {"op": "add_object", "points": [...], "class_id": thing class, "radius": r}
        {"op": "delete", "region": id, "fill_class": stuff class (optional: the surrounding majority)}
        {"op": "relabel", "region": id, "class_id": c}
        {"op": "restyle", "region": id, "style": cluster index | "random" | [feature vector] | null}
        {"op": "reseed", "seed": n (optional: random)}

    Raises:
        SceneError: 400 unknown op or fields, 422 invalid values, 404 unknown region.
    """
    if not isinstance(edit, Mapping):
        raise SceneError("an edit is a JSON object with an 'op'", 400)
    op = edit.get("op")
    if op not in _EDIT_FIELDS:
        raise SceneError(f"unknown edit op {op!r}; one of {', '.join(sorted(_EDIT_FIELDS))}", 400)
    required, optional = _EDIT_FIELDS[op]
    given = set(edit) - {"op"}
    missing, unknown = required - given, given - required - optional
    if missing or unknown:
        parts = ([f"missing {', '.join(sorted(missing))}"] if missing else []) + (
            [f"unknown {', '.join(sorted(unknown))}"] if unknown else []
        )
        raise SceneError(f"edit {op!r}: {'; '.join(parts)} (fields: {', '.join(sorted(required | optional))})", 400)
    radius = edit.get("radius", DEFAULT_RADIUS)
    if op == "paint":
        return scene.paint(edit["points"], edit["class_id"], radius, instance_id=edit.get("instance_id"))
    if op == "erase":
        return scene.erase(edit["points"], radius, edit.get("class_id"))
    if op == "add_object":
        return scene.add_object(edit["points"], edit["class_id"], radius)
    if op == "delete":
        return scene.delete(edit["region"], edit.get("fill_class"))
    if op == "relabel":
        return scene.relabel(edit["region"], edit["class_id"])
    if op == "restyle":
        return scene.restyle(edit["region"], edit.get("style"), rng=rng)
    return scene.reseed(edit.get("seed"), rng=rng)


# ------------------------------------------------------------------------------------------ pictures


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _edges(ids: np.ndarray) -> np.ndarray:
    """Pixels that differ from a 4-neighbour (both sides), as the generator's boundary map."""
    edge = np.zeros(ids.shape, bool)
    dx = ids[:, 1:] != ids[:, :-1]
    dy = ids[1:, :] != ids[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    return edge


def label_picture(scene: Scene) -> np.ndarray:
    """The colour-coded label map, instance boundaries darkened: uint8 [H, W, 3]."""
    colors = scene.classes.palette[scene.label]
    edge = _edges(scene.instance)
    colors[edge] = (colors[edge] * 0.45).astype(np.uint8)
    return colors


def swatch_box(mask: np.ndarray, multiple: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): a crop around `mask` with SWATCH_MARGIN context, sides multiples of `multiple` (the
    image's sides are), inside the image."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    out = []
    for lo, hi, size in ((rows[0], rows[-1] + 1, mask.shape[0]), (cols[0], cols[-1] + 1, mask.shape[1])):
        want = max(SWATCH_MIN, int(np.ceil((hi - lo) * (1 + 2 * SWATCH_MARGIN))))
        side = min(size, -(-want // multiple) * multiple)
        start = int(np.clip((lo + hi - side) // 2, 0, size - side))
        out += [start, start + side]
    return out[0], out[1], out[2], out[3]


def region_overlay(mask: np.ndarray) -> np.ndarray:
    """RGBA overlay of a selected region: translucent fill, opaque outline (inside and outside its edge)."""
    rgba = np.zeros(mask.shape + (4,), np.uint8)
    outline = _edges(mask.astype(np.int8))
    rgba[mask] = (255, 255, 255, 90)
    rgba[outline] = (255, 230, 0, 255)
    return rgba


# ------------------------------------------------------------------------------------------ request guards

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
Scope = dict[str, Any]


async def _send_json(send, status: int, body: Mapping[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, by its Content-Length or, for a chunked
    upload (no Content-Length), by counting the bytes as they arrive; the app never reads more than that.

    Once the limit is passed the app is told the client left (`http.disconnect`), whatever it answers is
    dropped, and the client gets the 413.
    """

    def __init__(self, app, *, max_bytes: int, message: str):
        self.app, self.max_bytes, self.message = app, max_bytes, message

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await _send_json(send, 413, {"error": self.message})
            return
        received, over, started = 0, False, False

        async def limited_receive():
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message) -> None:
            nonlocal started
            if over:
                return
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await _send_json(send, 413, {"error": self.message})


def _host_name(host_header: str) -> str:
    """'localhost:8000' -> 'localhost', '[::1]:8000' -> '::1' (lower case)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class TrustedHosts:
    """ASGI middleware: 400 for a request whose Host header is not one of `hosts` (names or addresses).

    A page on an attacker's domain can rebind that domain's DNS to 127.0.0.1 and then call a local server
    from the user's browser; its requests still carry the attacker's host name, which this check refuses.
    `"*"` among the hosts turns the check off.
    """

    def __init__(self, app, hosts: Sequence[str]):
        self.app = app
        self.hosts = frozenset(_host_name(h) for h in hosts if h)
        self.any = "*" in self.hosts

    @property
    def state(self):  # the wrapped app's state (backend, sessions) stays reachable
        return self.app.state

    async def __call__(self, scope: Scope, receive, send) -> None:
        if self.any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if _host_name(host) in self.hosts:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await _send_json(
            send,
            400,
            {
                "error": f"this editor does not answer requests for host {host[:100]!r}; it answers "
                f"{', '.join(sorted(self.hosts))}: open it by one of those names, or start it with "
                f"--trusted_hosts={_host_name(host)[:100] or 'NAME'} to allow that one"
            },
        )


def trusted_hosts_for(host: str, extra: Sequence[str] = ()) -> list[str]:
    """The Host names a server bound to `host` answers by default: the loopback names, `host`, and `extra`."""
    return [*LOCAL_HOSTS, host, *extra]


# ------------------------------------------------------------------------------------------ the app


def create_app(
    backend: Backend,
    *,
    classes: ClassTable | None = None,
    scenes: DatasetScenes | None = None,
    limits: Limits = DEFAULT_LIMITS,
    max_sessions: int = 32,
):
    """The FastAPI app of the editor.

    Args:
        backend: the model (`backends.CheckpointBackend`, `SavedModelBackend` or `RestBackend`).
        classes: names, colours and thing classes (default: `ClassTable.for_dataset` of the scenes' dataset).
        scenes: the dataset scenes that can be opened by name (None: uploads only).
        limits: the largest upload accepted.
        max_sessions: sessions kept in memory (least recently used dropped first).
    """
    classes = classes or ClassTable.for_dataset(scenes.root if scenes else None, backend.label_nc)
    if classes.label_nc != backend.label_nc:
        raise ValueError(f"the class table has {classes.label_nc} classes, the model label_nc={backend.label_nc}")
    eraser = eraser_class(classes)
    sessions = _Sessions(max_sessions)
    generate_lock = threading.Lock()  # one generation at a time: the CPU is the bottleneck anyway
    scene_feat_num = backend.feat_num if backend.can_choose_styles else 0

    app = FastAPI(title="pix2pixHD editor", docs_url="/api/docs", redoc_url=None)
    app.state.backend = backend
    app.state.sessions = sessions
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # ---------------------------------------------------------------- errors as {"error": ...}
    @app.exception_handler(SceneError)
    def _scene_error(request: Request, exc: SceneError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse({"error": "invalid request: " + "; ".join(parts)}, status_code=422)

    # Two files of max_bytes plus the form's overhead; counted as the body streams (chunked uploads too).
    app.add_middleware(
        BodyLimit,
        max_bytes=2 * limits.max_bytes + 2**16,
        message=f"the request is too large; the limit is {limits.describe()}",
    )

    # ---------------------------------------------------------------- helpers
    def new_scene(label, instance, name: str, styles=None, seed: int = 0) -> Scene:
        return Scene(
            label,
            instance,
            classes,
            clusters=backend.clusters,
            feat_num=scene_feat_num,
            styles=styles,
            seed=seed,
            name=name,
        )

    def state(session: Session, result=None) -> dict[str, Any]:
        scene = session.scene
        out = {
            "session": session.id,
            "name": scene.name,
            "width": scene.shape[1],
            "height": scene.shape[0],
            "revision": scene.revision,
            "seed": scene.seed,
            "can_undo": scene.can_undo,
            "can_redo": scene.can_redo,
            "regions": scene.regions(),
            "styles": scene.style_spec(),
        }
        if result is not None:
            out["changed"] = result.changed
            out["selected"] = result.selected
        return out

    def generate(label, instance, styles, seed) -> tuple[np.ndarray, float]:
        with generate_lock:
            start = time.perf_counter()
            try:
                image = backend.generate(label, instance, styles=styles, seed=seed)
            except Exception as e:  # noqa: BLE001 - any failure of the model becomes a JSON 500
                _LOG.exception("generation failed")
                raise SceneError(f"the model failed to generate: {e}", 500) from None
            return image, (time.perf_counter() - start) * 1000.0

    def png_response(data: bytes, filename: str | None = None, headers: Mapping[str, str] | None = None):
        headers = {"Cache-Control": "no-store", **(headers or {})}
        if filename:
            headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        return Response(data, media_type="image/png", headers=headers)

    def stem(scene: Scene) -> str:
        base = os.path.splitext(os.path.basename(scene.name))[0] or "scene"
        return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in base)[:100]

    # ---------------------------------------------------------------- pages and configuration
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), headers={"Cache-Control": "no-store"})

    @app.get("/api/config")
    def config():
        counts = backend.clusters.counts if backend.clusters is not None else np.zeros(classes.label_nc, int)
        table = classes_json(classes)
        for row in table:
            row["clusters"] = int(counts[row["id"]]) if backend.can_choose_styles else 0
        return {
            "classes": table,
            "eraser": eraser,
            "backend": backend.info(),
            "limits": dataclasses.asdict(limits),
            "dataset": None if scenes is None else {"phase": scenes.phase, "count": len(scenes)},
            "default_radius": DEFAULT_RADIUS,
        }

    @app.get("/api/scenes")
    def list_scenes():
        if scenes is None:
            return {"phase": None, "names": []}
        return {"phase": scenes.phase, "names": scenes.names}

    # ---------------------------------------------------------------- sessions
    @app.post("/api/sessions", status_code=201)
    def open_scene(body: Annotated[dict[str, Any], Body()]):
        if scenes is None:
            raise SceneError("this editor was started without a dataset: upload label/instance PNGs instead", 404)
        name = body.get("name")
        label, instance = scenes.load(name, classes, backend.size_multiple)
        return state(sessions.add(new_scene(label, instance, name)))

    @app.post("/api/sessions/upload", status_code=201)
    def upload_scene(
        label: Annotated[UploadFile, File(description="label map: single-channel 8-bit PNG of class ids")],
        instance: Annotated[UploadFile | None, File(description="instance map: 16-bit PNG (derived if absent)")] = None,
        name: Annotated[str, Form()] = "upload.png",
        styles: Annotated[str, Form(description="chosen styles, a StyleSpec JSON")] = "",
        seed: Annotated[int, Form()] = 0,
    ):
        def read(upload: UploadFile, what: str) -> bytes:
            data = upload.file.read(limits.max_bytes + 1)
            if len(data) > limits.max_bytes:
                raise SceneError(f"the {what} is too large; the limit is {limits.describe()}", 413)
            return data

        has_instance = instance is not None and bool(instance.filename or instance.size)
        label_map, instance_map = load_uploads(
            read(label, "label map"),
            read(instance, "instance map") if has_instance else None,
            classes=classes,
            size_multiple=backend.size_multiple,
            limits=limits,
        )
        chosen = {}
        if styles.strip():
            try:
                spec = StyleSpec.from_json(styles)
            except ValueError as e:
                raise SceneError(f"styles: {e}") from None
            chosen = dict(spec.instances)
        scene = new_scene(label_map, instance_map, os.path.basename(name)[:200] or "upload.png", chosen, seed)
        return state(sessions.add(scene))

    @app.get("/api/sessions/{session_id}")
    def get_state(session_id: str):
        session = sessions.get(session_id)
        with session.lock:
            return state(session)

    @app.post("/api/sessions/{session_id}/edit")
    def edit(session_id: str, body: Annotated[dict[str, Any], Body()]):
        session = sessions.get(session_id)
        with session.lock:
            result = apply_edit(session.scene, body, rng=session.rng)
            return state(session, result)

    @app.post("/api/sessions/{session_id}/undo")
    def undo(session_id: str):
        session = sessions.get(session_id)
        with session.lock:
            session.scene.undo()
            return state(session)

    @app.post("/api/sessions/{session_id}/redo")
    def redo(session_id: str):
        session = sessions.get(session_id)
        with session.lock:
            session.scene.redo()
            return state(session)

    @app.get("/api/sessions/{session_id}/region")
    def region_at(session_id: str, x: int, y: int):
        session = sessions.get(session_id)
        with session.lock:
            region = session.scene.region_at(x, y)
            return next(r for r in session.scene.regions() if r["id"] == region)

    # ---------------------------------------------------------------- pictures and downloads
    @app.get("/api/sessions/{session_id}/image.png")
    def image(session_id: str, download: bool = False):
        session = sessions.get(session_id)
        with session.lock:
            scene = session.scene
            if session.image_revision != scene.revision:
                picture, ms = generate(scene.label, scene.instance, scene.styles, scene.seed)
                session.image_png, session.image_ms, session.image_revision = _png(picture), ms, scene.revision
            headers = {"X-Revision": str(session.image_revision), "X-Generate-Ms": f"{session.image_ms:.1f}"}
            filename = f"{stem(scene)}_synthesized.png" if download else None
            return png_response(session.image_png, filename, headers)

    @app.get("/api/sessions/{session_id}/label.png")
    def label_png(session_id: str):
        session = sessions.get(session_id)
        with session.lock:
            data = encode_id_png(session.scene.label, sixteen_bit=classes.label_nc > 256)
            return png_response(data, f"{stem(session.scene)}_label.png", {"X-Revision": str(session.scene.revision)})

    @app.get("/api/sessions/{session_id}/instance.png")
    def instance_png(session_id: str):
        session = sessions.get(session_id)
        with session.lock:
            data = encode_id_png(session.scene.instance, sixteen_bit=True)
            return png_response(
                data, f"{stem(session.scene)}_instance.png", {"X-Revision": str(session.scene.revision)}
            )

    @app.get("/api/sessions/{session_id}/label_color.png")
    def label_color(session_id: str):
        session = sessions.get(session_id)
        with session.lock:
            return png_response(_png(label_picture(session.scene)), None, {"X-Revision": str(session.scene.revision)})

    @app.get("/api/sessions/{session_id}/regions/{region}/mask.png")
    def region_mask(session_id: str, region: int):
        session = sessions.get(session_id)
        with session.lock:
            return png_response(_png(region_overlay(session.scene.region_mask(region))))

    @app.get("/api/sessions/{session_id}/styles.json")
    def styles_json(session_id: str):
        session = sessions.get(session_id)
        with session.lock:
            body = json.dumps(session.scene.style_spec(), indent=2)
            headers = {
                "Content-Disposition": f'attachment; filename="{stem(session.scene)}_styles.json"',
                "X-Seed": str(session.scene.seed),
            }
            return Response(body, media_type="application/json", headers=headers)

    @app.get("/api/sessions/{session_id}/regions/{region}/styles/{index}.png")
    def swatch(session_id: str, region: int, index: int):
        """The region, in a crop of the current scene around it, rendered with style cluster `index`."""
        session = sessions.get(session_id)
        with session.lock:
            scene = session.scene
            key = (scene.revision, region, index)
            if key not in session.swatches:
                mask = scene.region_mask(region)
                style = scene.check_style(region, index)  # 422 without clusters or for a bad index
                y0, y1, x0, x1 = swatch_box(mask, backend.size_multiple)
                styles = {**scene.styles, region: style}
                picture, _ = generate(scene.label[y0:y1, x0:x1], scene.instance[y0:y1, x0:x1], styles, scene.seed)
                if session.swatches and next(iter(session.swatches))[0] != scene.revision:
                    session.swatches.clear()
                session.swatches[key] = _png(picture)
            return png_response(session.swatches[key], None, {"Cache-Control": "max-age=3600"})

    return app


# ------------------------------------------------------------------------------------------ serving


class EditorServer:
    """uvicorn serving an app on a socket bound up front (so port 0 gives a known free port), in a thread or
    in the foreground.

    Only requests whose Host header names `trusted_hosts` are answered (default: 127.0.0.1, localhost, ::1
    and `host`; see `TrustedHosts`), so a DNS-rebinding page cannot drive a local editor.

    Raises:
        OSError: the port is taken or the address cannot be bound (the message names both and the fix).
    """

    def __init__(
        self,
        app,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        trusted_hosts: Sequence[str] | None = None,
    ):
        import uvicorn  # only serving needs it (the app itself runs under a TestClient without it)

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError as e:
            self.socket.close()
            if e.errno == errno.EADDRINUSE:
                raise OSError(
                    e.errno,
                    f"port {port} on {host} is taken (another editor or server?): pass --port=0 for a "
                    "free one, or another --port",
                ) from None
            raise OSError(e.errno, f"cannot listen on {host}:{port} ({e.strerror}): check --host and --port") from None
        self.host, self.port = host, self.socket.getsockname()[1]
        self.app = app
        self.trusted_hosts = list(trusted_hosts) if trusted_hosts is not None else trusted_hosts_for(host)
        served = TrustedHosts(app, self.trusted_hosts)
        self.server = uvicorn.Server(uvicorn.Config(served, log_level=log_level, timeout_graceful_shutdown=2))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def run(self) -> None:
        """Serve in the foreground until interrupted (Ctrl-C)."""
        self.server.run(sockets=[self.socket])

    def start(self, timeout: float = 30.0) -> EditorServer:
        """Serve in a daemon thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the editor server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.socket.close()


def build_editor(
    opts,
    *,
    saved_model: str | None = None,
    serving_url: str | None = None,
    cluster_file: str | None = None,
    phase: str | None = None,
    thing_classes: list[int] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    host: str = "127.0.0.1",
    port: int = 0,
    trusted_hosts: Sequence[str] = (),
) -> EditorServer:
    """What `tools/editor.py` does: the backend the flags name, the dataset scenes of `phase` (when
    `{dataroot}/{phase}_label` exists) and the app, on a bound (not yet running) server.

    Requests must address 127.0.0.1, localhost, ::1, `host` or one of `trusted_hosts` ("*": any).

    Raises:
        FileNotFoundError, ValueError, RuntimeError: from the backend (no checkpoint, a bad export, an
            unreachable TF Serving) or a dataset that does not pair.
        OSError: the port is taken (the message suggests --port=0).
    """
    backend = make_backend(opts, saved_model=saved_model, serving_url=serving_url, cluster_file=cluster_file)
    phase = phase or opts.phase
    scenes = None
    label_dir = os.path.join(opts.dataroot, _scene_layout(opts, backend.use_instance).folders(phase)["label"])
    if os.path.isdir(label_dir):
        try:
            scenes = DatasetScenes.from_options(opts, phase, instances=backend.use_instance)
        except DatasetError as e:
            raise DatasetError(f"the editor lists the scenes of {label_dir}: {e}") from None
    else:
        _LOG.warning("no %s: scenes can only be uploaded", label_dir)
    classes = ClassTable.for_dataset(opts.dataroot, backend.label_nc)
    if thing_classes is not None:
        classes = classes.with_things(thing_classes)
    app = create_app(backend, classes=classes, scenes=scenes, limits=limits)
    return EditorServer(
        app, host=host, port=port, log_level="info", trusted_hosts=trusted_hosts_for(host, trusted_hosts)
    )
