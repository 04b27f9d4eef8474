"""The web app of ``mmx serve`` (FastAPI): a search page and a JSON API over one :class:`Backend`.

Routes: ``GET /`` the page (static/), ``GET /api/info``, ``GET /api/items``, ``POST /api/search``
(JSON: ``text`` or ``like`` (a gallery row), ``targets``, ``k``), ``POST /api/search/upload``
(a multipart ``file``: image, audio or video), ``GET /media/{row}`` (a gallery item's file),
``GET /docs`` and ``/openapi.json`` (the framework's). Every error is one JSON line
``{"error": "..."}``; an upload is refused past ``max_upload`` bytes (413) before it is read
whole, and when its extension or first bytes are not a known media type (415).
"""

from __future__ import annotations

import mimetypes
import tempfile
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD = 50 * 1024 * 1024

# First bytes of the formats the backbones decode, by modality: a file must agree with its extension.
_SIGNATURES = {
    "image": [(0, b"\x89PNG"), (0, b"\xff\xd8\xff"), (0, b"GIF8"), (8, b"WEBP"), (0, b"BM"), (0, b"II*\x00"), (0, b"MM\x00*")],
    "audio": [(8, b"WAVE"), (0, b"fLaC"), (0, b"ID3"), (0, b"\xff\xfb"), (0, b"\xff\xf3"), (0, b"\xff\xf2"), (0, b"OggS"),
              (4, b"ftyp"), (0, b"FORM")],
    "video": [(4, b"ftyp"), (0, b"\x1aE\xdf\xa3"), (8, b"AVI "), (0, b"FLV"), (0, b"\x00\x00\x01\xba"), (0, b"\x00\x00\x01\xb3")],
}


class Query(BaseModel):
    text: str | None = Field(None, max_length=2000, description="Words to search with.")
    like: int | None = Field(None, ge=0, description="A gallery row (from /api/items or a hit) to search with.")
    targets: list[str] = Field(default_factory=list, description="Gallery modalities to rank (empty: all).")
    k: int = Field(12, ge=1, le=200, description="Hits to return.")


class TooLarge(Exception):
    pass


class UploadLimit:
    """ASGI middleware: a request body past ``limit`` bytes is answered 413 as soon as it is known to be."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen, exceeded, answered = 0, False, False

        async def counted():
            nonlocal seen, exceeded
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                exceeded = True
                raise TooLarge  # the app's body parser turns this into its own error, replaced below
            return message

        async def tracked(message):
            nonlocal answered
            if not exceeded:
                return await send(message)
            if not answered:
                answered = True
                await self._refuse(send)

        try:
            await self.app(scope, counted, tracked)
        except TooLarge:
            if not answered:
                await self._refuse(send)

    async def _refuse(self, send):
        limit = f"{self.limit / 2**20:.0f} MiB" if self.limit >= 2**20 else f"{self.limit} bytes"
        body = JSONResponse({"error": f"upload too large: the limit is {limit} (mmx serve --max-upload-mb)"}, 413)
        await send({"type": "http.response.start", "status": 413, "headers": body.raw_headers})
        await send({"type": "http.response.body", "body": body.body})


def create_app(backend, max_upload: int = MAX_UPLOAD) -> FastAPI:
    """The app serving ``backend`` (a :class:`mmx.pipeline.serve.backend.Backend` or anything with its methods)."""
    app = FastAPI(title="mmx serve", description=f"Search the joint space of run {backend.run.name}.", version="1")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(message).split())}, status)

    @app.exception_handler(StarletteHTTPException)  # the framework's own (404, a body it cannot parse) too
    async def _http(_request, exc: StarletteHTTPException):
        return error(exc.status_code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return error(422, f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request"))

    @app.exception_handler(ValueError)
    async def _bad(_request, exc: ValueError):
        return error(400, exc)

    @app.exception_handler(IndexError)
    async def _missing(_request, exc: IndexError):
        return error(404, exc)

    def hits(found) -> dict:
        return {"hits": [h.__dict__ for h in found]}

    @app.get("/api/info")
    def info() -> dict:
        """The run, the modalities it embeds, the gallery's modalities and sizes."""
        return backend.info()

    @app.get("/api/items")
    def items(modality: str = "", offset: int = 0, limit: int = 50) -> dict:
        """Gallery items (to query by one), optionally of one modality."""
        return {"items": backend.items(modality, max(0, offset), min(max(1, limit), 500))}

    @app.post("/api/search")
    def search(query: Query) -> dict:
        """Rank the gallery for a text or a gallery item (``like``)."""
        if (query.text is None) == (query.like is None) or (query.text is not None and not query.text.strip()):
            raise HTTPException(400, "give either a non-empty 'text' or 'like' (a gallery row)")
        vec = backend.embed_text(query.text) if query.text is not None else backend.row_vector(query.like)
        return hits(backend.search(vec, query.k, query.targets))

    @app.post("/api/search/upload")
    def upload(file: UploadFile = File(...), targets: str = Form(""), k: int = Form(12, ge=1, le=200)) -> dict:
        """Rank the gallery for an uploaded image, audio or video file."""
        from mmx.pipeline.embed import modality_of_file

        name = Path(file.filename or "upload").name
        try:
            modality = modality_of_file(name).value
        except ValueError as exc:
            raise HTTPException(415, str(exc)) from None
        head = file.file.read(16)
        if modality == "text" or not any(head[at : at + len(sig)] == sig for at, sig in _SIGNATURES[modality]):
            raise HTTPException(415, f"{name}: its first bytes are not those of a known {modality} format")
        file.file.seek(0)
        with tempfile.TemporaryDirectory(prefix="mmx-serve-") as tmp:
            path = Path(tmp) / f"upload{Path(name).suffix.lower()}"
            with open(path, "wb") as out:
                while chunk := file.file.read(1 << 20):
                    out.write(chunk)
            _, vec = backend.embed_file(path)
        wanted = [t for t in targets.split(",") if t.strip()]
        return {**hits(backend.search(vec, k, wanted)), "modality": modality}

    @app.get("/media/{row}")
    def media(row: int):
        """The file of gallery item ``row``, when its manifest lists one inside the manifest's folder."""
        path = backend.media_path(row)
        if path is None:
            raise HTTPException(404, f"gallery item {row} has no media to serve")
        return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(UploadLimit, limit=max_upload)
    return app
