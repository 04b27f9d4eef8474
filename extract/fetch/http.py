"""One polite HTTP download: redirects, status codes, streaming, retries (mmx fetch).

Redirects are followed by hand (bounded, no loops, http(s) only); 404, 410 and other 4xx are
permanent; timeouts, connection errors, truncated bodies, 5xx and 429 are retried with backoff
or after ``Retry-After``; the size is held to ``max_bytes`` while streaming, and the body is
decoded here a bounded piece at a time (:data:`DECODED_PIECE`; ``gzip`` and ``deflate`` only).
The full rules and their reasons: docs/notes/extract.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import errno
import hashlib
import os
import random
import time
import zlib
from typing import AsyncIterator, Iterator
from urllib.parse import urljoin, urlsplit

from mmx.extract.fetch.status import NO_SPACE, TRANSIENT_KINDS
from mmx.extract.fetch.validate import content_type_problem

ACCEPT_ENCODING = "gzip, deflate"  # what :func:`decode_chain` can inflate a bounded piece at a time
DECODED_PIECE = 256 * 1024  # most decoded bytes one step of one encoding stage yields

_DNS_HINTS = ("name or service not known", "nodename nor servname", "temporary failure in name resolution",
              "getaddrinfo failed", "no address associated", "name resolution")


@dataclasses.dataclass
class Attempt:
    """What one GET (with its redirects) ended in. ``kind`` None means a complete body in ``tmp``."""

    kind: str | None
    error: str = ""
    http_status: int | None = None
    final_url: str = ""
    content_type: str = ""
    nbytes: int = 0
    sha256: str = ""
    retry_after: float | None = None


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with 'equal jitter': half fixed, half random, so clients spread out."""
    delay = min(cap, base * (2 ** (attempt - 1)))
    return delay / 2 + random.uniform(0, delay / 2)


def parse_retry_after(value: str | None, cap: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, min(cap, seconds))


def classify_status(code: int) -> str:
    if code == 404:
        return "not_found"
    if code == 410:
        return "gone"
    if code == 429:
        return "rate_limited"
    if code >= 500:
        return "server_error"
    return "http_error"


def classify_exception(exc: BaseException, body_started: bool) -> tuple[str, str]:
    import httpx

    msg = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return NO_SPACE, msg
    if isinstance(exc, (httpx.TimeoutException, TimeoutError, asyncio.TimeoutError)):
        return "timeout", msg
    if isinstance(exc, httpx.ConnectError):
        if any(h in str(exc).lower() for h in _DNS_HINTS):
            return "dns", msg
        return "connection", msg
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        return ("truncated" if body_started else "connection"), msg
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
        return "bad_url", msg
    if isinstance(exc, httpx.TransportError):
        return "connection", msg
    return "error", msg


async def get_with_retries(client, url: str, modality: str, tmp: str, cfg, host_limit) -> tuple[Attempt, int]:
    """Download ``url`` into ``tmp``, retrying transient failures; returns the last attempt and the count."""
    attempts = 0
    while True:
        attempts += 1
        async with host_limit:
            result = await _attempt(client, url, modality, tmp, cfg)
        if result.kind in (None, NO_SPACE) or result.kind not in TRANSIENT_KINDS or attempts > cfg.retries:
            return result, attempts
        delay = result.retry_after if result.retry_after is not None else \
            backoff_delay(attempts, cfg.backoff_base, cfg.backoff_max)
        await asyncio.sleep(delay)


async def _attempt(client, url: str, modality: str, tmp: str, cfg) -> Attempt:
    body_started = False
    try:
        async with asyncio.timeout(cfg.item_timeout):
            visited = {url}
            current = url
            for _hop in range(cfg.max_redirects + 1):
                request = client.build_request("GET", current)
                response = await client.send(request, stream=True)
                try:
                    if response.is_redirect:
                        target = urljoin(str(response.url), response.headers["location"])
                        scheme = urlsplit(target).scheme.lower()
                        if scheme not in ("http", "https"):
                            return Attempt("bad_redirect", f"redirect to {scheme or 'a relative'} URL {target[:200]!r}",
                                           response.status_code, current)
                        if target in visited:
                            return Attempt("redirect_loop", f"redirect back to {target[:200]!r}",
                                           response.status_code, current)
                        visited.add(target)
                        current = target
                        continue
                    body_started = True
                    return await _read_body(response, modality, tmp, cfg)
                finally:
                    await response.aclose()
            return Attempt("redirect_loop", f"more than {cfg.max_redirects} redirects", None, current)
    except Exception as exc:  # noqa: BLE001 - every transport error becomes a failure kind
        kind, msg = classify_exception(exc, body_started)
        return Attempt(kind, msg, None, url)


async def _read_body(response, modality: str, tmp: str, cfg) -> Attempt:
    code = response.status_code
    ctype = response.headers.get("content-type", "")
    final_url = str(response.url)
    if not 200 <= code < 300:
        kind = classify_status(code)
        retry_after = None
        if code in (429, 503):
            retry_after = parse_retry_after(response.headers.get("retry-after"), cfg.max_retry_after)
        return Attempt(kind, f"HTTP {code} {response.reason_phrase}", code, final_url, ctype, retry_after=retry_after)
    problem = content_type_problem(ctype, modality)
    if problem:
        return Attempt("wrong_type", problem, code, final_url, ctype)
    declared = response.headers.get("content-length")
    declared = int(declared) if declared and declared.isdigit() else None
    if declared is not None and declared > cfg.max_bytes:
        return Attempt("too_large", f"Content-Length {declared} exceeds the cap of {cfg.max_bytes} bytes",
                       code, final_url, ctype, nbytes=declared)
    try:
        stages = [_inflater(e) for e in reversed(content_encodings(response.headers.get("content-encoding", "")))]
    except ValueError as exc:
        return Attempt("undecodable", str(exc), code, final_url, ctype)
    digest = hashlib.sha256()
    nbytes = 0
    try:
        with open(tmp, "wb") as fh:
            async for chunk in decode_chain(response.aiter_raw(), stages):
                nbytes += len(chunk)
                if nbytes > cfg.max_bytes:
                    return Attempt("too_large", f"body exceeds the cap of {cfg.max_bytes} bytes",
                                   code, final_url, ctype, nbytes=nbytes)
                digest.update(chunk)
                fh.write(chunk)
    except zlib.error as exc:
        return Attempt("undecodable", f"corrupt compressed body: {exc}", code, final_url, ctype, nbytes=nbytes)
    except Exception as exc:  # noqa: BLE001
        kind, msg = classify_exception(exc, body_started=True)
        return Attempt(kind, msg, code, final_url, ctype, nbytes=nbytes)
    if declared is not None and response.num_bytes_downloaded < declared:
        return Attempt("truncated", f"received {response.num_bytes_downloaded} of {declared} bytes",
                       code, final_url, ctype, nbytes=nbytes)
    if not all(stage.obj.eof for stage in stages):
        return Attempt("truncated", "the compressed body ends before its end-of-stream marker",
                       code, final_url, ctype, nbytes=nbytes)
    if nbytes == 0:
        return Attempt("undecodable", "empty body", code, final_url, ctype)
    return Attempt(None, "", code, final_url, ctype, nbytes=nbytes, sha256=digest.hexdigest())


def content_encodings(header: str) -> list[str]:
    """The codings of a ``Content-Encoding`` header in the order the server applied them."""
    return [e.strip().lower() for e in header.split(",") if e.strip() and e.strip().lower() != "identity"]


class _Inflater:
    """One zlib stage that never returns more than :data:`DECODED_PIECE` bytes per step."""

    def __init__(self, wbits: int, raw_fallback: bool = False):
        self.wbits, self.raw_fallback = wbits, raw_fallback
        self.obj = zlib.decompressobj(wbits)
        self.started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        while data:
            try:
                out = self.obj.decompress(data, DECODED_PIECE)
            except zlib.error:
                if self.started or not self.raw_fallback:
                    raise
                # "deflate" is zlib-wrapped by the standard, raw by some servers (httpx allows both)
                self.obj, self.raw_fallback = zlib.decompressobj(-zlib.MAX_WBITS), False
                continue
            self.started = True
            if out:
                yield out
            data = self.obj.unconsumed_tail
            if self.obj.eof and self.obj.unused_data:  # a further gzip member follows
                data, self.obj = self.obj.unused_data, zlib.decompressobj(self.wbits)


def _inflater(coding: str) -> _Inflater:
    if coding in ("gzip", "x-gzip"):
        return _Inflater(16 + zlib.MAX_WBITS)
    if coding == "deflate":
        return _Inflater(zlib.MAX_WBITS, raw_fallback=True)
    raise ValueError(f"content encoding {coding!r} is not supported (asked for {ACCEPT_ENCODING})")


async def decode_chain(raw: AsyncIterator[bytes], stages: list[_Inflater]) -> AsyncIterator[bytes]:
    """The decoded body, in pieces of at most :data:`DECODED_PIECE` bytes, pulled lazily through
    every stage (outermost coding first), so no stage ever holds more than one piece."""
    def through(data: bytes, rest: list[_Inflater]) -> Iterator[bytes]:
        if not rest:
            yield data
            return
        for piece in rest[0].feed(data):
            yield from through(piece, rest[1:])

    async for chunk in raw:
        for piece in through(chunk, stages):
            yield piece


def remove_quietly(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
