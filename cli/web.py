"""`alexnet serve`'s web app: a search page and a JSON API over the run's collections.

    app = create_app("runs/demo")              # opens the training set once (builds it if missing)
    app = create_app(run, galleries=["photos"])  # and galleries, searched by `gallery`
    app = create_app(run, train=c)             # a training set already open (tests)

    GET  /                 the page: cli/static/index.html, app.js, style.css
    GET  /api/info         the run's facts (describe) and its galleries
    POST /api/search       multipart `image` (an upload) or `id` (an indexed image), with `k`,
                           `rerank`, `gallery` -> the records `alexnet search --json` prints
    GET  /api/thumb/{id}   a JPEG thumbnail of indexed image `id`
    GET  /docs             the API, as FastAPI documents it

Every answer comes from one library call (a Collection's search, file, thumbnail, describe);
errors are {"error": "..."} with a 4xx status, a library error's parameters written as the
form fields they are here (`k`, `rerank`).
No request names a path: indexed images are reached by id through the manifest, and the
page's three files are read once, here. The network, its query pipeline and the index are
not thread-safe, so one lock serialises searches; thumbnails need no lock.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from alexnet.retrieval.defaults import SEARCH_RERANK, K

STATIC = Path(__file__).parent / "static"
PAGES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
MAX_UPLOAD_MB = 20.0


def create_app(
    run: str | Path,
    *,
    train=None,
    galleries: Sequence[str] = (),
    max_upload_mb: float = MAX_UPLOAD_MB,
    progress: bool = False,
    milvus: str | None = None,
) -> FastAPI:
    """The app for RUN: `train` is RUN's training set, opened (a Collection), or None to open
    it here; `galleries` names galleries of RUN (alexnet index --images) to open beside it;
    `milvus`, a Milvus URI that serves the codes (retrieval/remote.py)."""
    from alexnet.pipeline.errors import AlexnetError
    from alexnet.retrieval.collection import collection as open_collection

    train = train or open_collection(run, milvus=milvus).open(progress=progress)
    collections = {"": train}  # "" is the training set
    collections |= {name: open_collection(run, name, milvus=milvus).open() for name in galleries}
    info = {
        **train.describe(),
        "galleries": sorted(name for name in collections if name),
        "max_upload_mb": max_upload_mb,
    }
    lock = threading.Lock()
    app = FastAPI(
        title="alexnet search",
        description=f"Search the images of run {info['run']} by fc7 binary codes.",
    )
    app.add_middleware(UploadLimit, max_bytes=int(max_upload_mb * 2**20))

    def collection(gallery: str):
        if gallery not in collections:
            names = ", ".join(info["galleries"]) or "none"
            raise HTTPException(400, f"this run has no gallery {gallery!r} (galleries: {names})")
        return collections[gallery]

    @app.exception_handler(AlexnetError)
    def refused(request, e: AlexnetError) -> JSONResponse:
        return JSONResponse({"error": e.render(lambda param: param)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    def http_error(request, e: StarletteHTTPException) -> JSONResponse:
        error = e.detail
        if e.status_code == 413:
            error = f"the upload is larger than {max_upload_mb:g} MB (serve --max-upload-mb)"
        return JSONResponse({"error": error}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    def invalid(request, e: RequestValidationError) -> JSONResponse:
        errors = "; ".join(f"{err['loc'][-1]}: {err['msg']}" for err in e.errors())
        return JSONResponse({"error": errors}, status_code=422)

    @app.get("/api/info", summary="The run: classes, images indexed, bits, checkpoint")
    def get_info() -> dict:
        """`run`, `classes`, `count` (images indexed), `bits`, `index` (kind), `checkpoint`,
        `epoch`, `top1_error` (that epoch's validation top-1 error, or null), `galleries`
        (names other than the training set), `max_upload_mb`."""
        return info

    @app.post("/api/search", summary="The most similar indexed images of one image")
    def post_search(
        image: Annotated[UploadFile | None, File(description="A JPEG, PNG or BMP file.")] = None,
        id: Annotated[int | None, Form(description="Or: the id of an indexed image.")] = None,
        k: Annotated[int, Form(description="Results: 1 to the number indexed.")] = K,
        rerank: Annotated[
            int, Form(description="Re-order the R nearest by Hamming distance by fc7 distance.")
        ] = SEARCH_RERANK,
        gallery: Annotated[str, Form(description="A gallery name; empty: training set.")] = "",
    ) -> dict:
        """The records `alexnet search --json` prints, for one query: {"run", "query_ms",
        "k", "rerank", "distance", "bits", "index", "checkpoint", "queries": [{"query",
        "results": [{"rank", "id", "path", "class", "class_id", "hamming", "distance"}]}]}."""
        target = collection(gallery)
        if (image is None) == (id is None):
            raise HTTPException(400, "send either an image or the id of an indexed one")
        if image is None:
            query, names = target.file(id), None  # named by its path
        else:
            query, names = image.file.read(), [image.filename or "upload"]
        with lock:
            result = target.search([query], k=k, rerank=rerank, names=names)
        return {"run": info["run"], **result}

    @app.get(
        "/api/thumb/{id}",
        summary="A thumbnail of an indexed image",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    def get_thumb(id: int, gallery: str = "") -> Response:
        """The centre square of indexed image `id` as a small JPEG (made once, then cached)."""
        data = collection(gallery).thumbnail(id)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    for route, (name, media_type) in PAGES.items():
        app.get(route, include_in_schema=False)(page((STATIC / name).read_bytes(), media_type))
    return app


class UploadLimit:
    """Refuses a request body over `max_bytes` with 413: at once when its Content-Length says
    so, else as soon as that many bytes have come (a chunked upload). FastAPI's own limit
    answers in plain text; this one goes through the app's handler, so the error is JSON."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            receive = self.refuse  # the first read fails, before any byte is taken in
        else:
            receive = self.counted(receive)
        await self.app(scope, receive, send)

    async def refuse(self):
        raise HTTPException(413)

    def counted(self, receive):
        seen = 0

        async def read():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413)
            return message

        return read


def page(body: bytes, media_type: str):
    """A route that answers with one of the page's files, read once at start."""

    def get() -> Response:
        return Response(body, media_type=media_type)

    return get


def serve_until_stopped(app: FastAPI, sock, announce: Callable[[], None]) -> int:
    """Serves `app` on the listening `sock` until SIGINT or SIGTERM; returns that signal's
    number. The handlers are in place before `announce` runs, so a signal sent once the address
    is out stops the server one way, whenever it comes (before the loop starts, or during a
    request). uvicorn's own handlers are not used: they go in later, and newer releases raise
    the signal again after shutdown, which turned a clean stop into a KeyboardInterrupt."""
    server = QuietServer(uvicorn.Config(app, log_level="warning"))
    received: list[int] = []

    def stop(sig, frame) -> None:
        received.append(sig)
        server.force_exit = server.should_exit  # a second Ctrl-C stops without waiting
        server.should_exit = True

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, stop) for sig in handled}
    try:
        announce()
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received[0] if received else 0


class QuietServer(uvicorn.Server):
    """uvicorn's server with signal handling left to serve_until_stopped."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on HOST:PORT, or one clear error (port taken, unknown address)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # proto IPPROTO_TCP, not 0: asyncio turns Nagle off only on sockets that say TCP, and
        # with Nagle on every answer waits ~40 ms for the client's delayed ACK.
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)  # connections wait in the queue until the server takes them
    except OSError as e:
        from alexnet.pipeline.errors import AlexnetError

        raise AlexnetError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return sock
