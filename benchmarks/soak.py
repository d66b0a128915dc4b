#!/usr/bin/env python
"""A soak test of `lookalike serve` on 127.0.0.1: mixed and hostile traffic for minutes, with re-indexing
under the server and a burst of maximum-size uploads; requests, errors, RSS and latency per minute.

    python benchmarks/soak.py --small --duration 60                        # 3,000 generated images, 1 min
    python benchmarks/soak.py --json benchmarks/results/soak.json          # 50,000 CIFAR-10 JPEGs, 10 min

What it does:

1. **An index**, built once and kept in ``--cache-dir`` (default ``$TMPDIR/lookalike-bench``, as
   ``serve_load.py``): the 50,000 CIFAR-10 train JPEGs (extracted by ``serve_load.extract_cifar``, then
   hard-linked into a folder of its own that this script may change), or with ``--small`` 3,000
   generated pictures (``serve_load.generate_images``), indexed by ``serve_load.build_index`` (an untrained
   default model at 32 px). A run first puts back what the previous run's re-indexing added and removed,
   and brings the index up to date with ``lookalike index`` when it did.
2. **A server**: ``python -m lookalike.cli serve INDEX --host 127.0.0.1 --port P`` in a child process
   (free port, thumbnails in a temporary folder, its output in a log file), with its default limits.
3. **Traffic** for ``--duration`` seconds from a bounded set of asyncio tasks, each with one keep-alive
   HTTP/1.1 connection (``serve_load``'s raw client):

   - ``--clients`` tasks back to back: uploads of real JPEGs of the set, searches by id, thumbnails,
     originals (``/api/images/{id}``), ``/health`` and ``/api/info``;
   - one task of bad uploads, one every ``--bad-every`` seconds in turn: a truncated JPEG, a truncated
     PNG, a text file, a decompression bomb (a 1-bit 9000x9000 PNG of a few kB), 17 MiB with a
     ``Content-Length`` and 17 MiB chunked (both over the 16 MiB cap);
   - one slow client in turn: a request head sent a byte every 0.5 s (slower than the 10 s head
     deadline: the connection must be closed, with or without a 408) and an upload body trickled at
     100 bytes a second (the 60 s body deadline: 408, or the connection closed);
   - every ``--reindex-every`` seconds a re-index under the server: a few files removed and a few added
     (mirrored copies), ``lookalike index FOLDER -o INDEX``, then waiting for the server to load it
     (``/api/info``'s ``loaded_at``); from then on a search by a removed id is an expected 404;
   - at ``--burst-at`` seconds, 16 uploads at once of pictures near the 16 MiB cap (a PNG of random
     noise, and a PNG at the 64-megapixel limit), while the server's RSS is read every 0.1 s and
     ``/health`` is asked every 50 ms; 503 with ``Retry-After`` is an expected answer to them.

   Every request has a timeout and every loop ends at the deadline. Only 127.0.0.1 is contacted.
4. **Report**: requests by kind; answers by kind and status, each ``ok``, ``expected`` (a refusal the
   request deserved: 400/404/408/413/415, 503 with ``Retry-After`` to an upload) or ``unexpected`` (any
   other status, any other 5xx, connection errors); the server's RSS every second (``VmRSS``) and its
   growth after ``--warmup`` (median of the last minute minus median of the first minute after the
   warm-up); p50/p95/p99 per minute of searches by id and by upload (200s); the burst's peak RSS and
   ``/health`` latency; the goals, PASS or FAIL. ``--json`` writes it all.

The load generator, the re-indexing and the server share the machine's cores (and here other people's
work): the figures are for all of them together; the machine's load average is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_load  # noqa: E402  (benchmarks/serve_load.py: the index, the raw client, the machine)

REPO = serve_load.REPO
MiB = 1024 * 1024
CAP = 16 * MiB  # the server's default upload cap (ServerSettings.max_upload_bytes)
REQUEST_TIMEOUT_S = 30.0
IDLE_REOPEN_S = 3.0  # reopen a keep-alive connection idle this long (the server closes them after 5 s)
HEADER_TIMEOUT_S = 10.0  # the server's defaults (ServerSettings)
BODY_TIMEOUT_S = 60.0
GOALS = {"rss_growth_mb": 100.0, "burst_rss_mb": 1024.0, "burst_health_ms": 100.0, "id_p99_ms": 250.0}
UPLOAD_KINDS = {"upload", "truncated", "text", "bomb", "oversized", "oversized_chunked", "slow_body", "burst"}
ID_KINDS = {"id", "thumb", "original", "removed_id", "removed_original", "removed_thumb"}  # a removed id: 404 expected
EXPECTED = {  # status -> outcome; anything else is unexpected
    "upload": {200: "ok"},
    "id": {200: "ok"},
    "thumb": {200: "ok", 304: "ok"},
    "original": {200: "ok"},
    "health": {200: "ok"},
    "info": {200: "ok"},
    "truncated": {400: "expected", 200: "ok"},  # 200: decoded what was there (not an error)
    "text": {415: "expected", 400: "expected"},
    "bomb": {400: "expected"},
    "oversized": {413: "expected"},
    "oversized_chunked": {413: "expected"},
    "slow_head": {408: "expected"},
    "slow_body": {408: "expected"},
    "burst": {200: "ok"},
    "removed_id": {404: "expected"},  # asked for on purpose once a re-index removed them
    "removed_original": {404: "expected"},
    "removed_thumb": {404: "expected"},
}
DEFAULT_MIX = "upload=0.3,id=0.3,thumb=0.15,original=0.1,health=0.075,info=0.075"
NORMAL_KINDS = ("upload", "id", "thumb", "original", "health", "info")


# ------------------------------------------------------------------------------------------ index
def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lookalike.cli", *args]


def prepare(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """``(images folder, index folder, folder of removed files)``, built once and kept in the cache."""
    from lookalike.search import is_index_dir

    if args.small:
        home = args.cache_dir / f"soak-small-{args.images}"
        folder = home / "images"
        if not (home / ".images-complete").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            print(f"generating {args.images:,} images ...", flush=True)
            serve_load.generate_images(folder, args.images)
            (home / ".images-complete").write_text("done")
    else:
        if not args.data.is_file():
            raise SystemExit(f"error: {args.data}: CIFAR-10 tarball not found (give --data, or use --small)")
        train = serve_load.extract_cifar(args.data, args.cache_dir)
        home = args.cache_dir / "soak-cifar10"
        folder = home / "images"
        if not folder.is_dir():  # hard links to the train images: a folder this script may change
            home.mkdir(parents=True, exist_ok=True)
            tmp = home / ".images-tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(train, tmp, copy_function=os.link)
            os.replace(tmp, folder)
    index, removed = home / "index", home / "removed"
    changed = restore(folder, removed)
    if not is_index_dir(index):
        serve_load.build_index(folder, index)
    elif changed:
        print(f"putting back {changed} files of the last run's re-indexing ...", flush=True)
        rc, seconds, _ = run_index(folder, index, home / "restore-index.log")
        if rc != 0:
            raise SystemExit(f"error: lookalike index failed (exit {rc}); see {home / 'restore-index.log'}")
        print(f"index brought up to date in {seconds:.1f} s", flush=True)
    return folder, index, removed


def restore(folder: Path, removed: Path) -> int:
    """Put back the files a run removed, delete those it added; how many files changed."""
    n = 0
    if removed.is_dir():
        for f in sorted(p for p in removed.rglob("*") if p.is_file()):
            dest = folder / f.relative_to(removed)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dest)
            n += 1
        shutil.rmtree(removed, ignore_errors=True)
    for f in folder.rglob("soak-added-*"):
        f.unlink()
        n += 1
    return n


def run_index(folder: Path, index: Path, log: Path, timeout: float = 600.0) -> tuple[int, float, str]:
    """``lookalike index FOLDER -o INDEX`` (an existing index keeps its model): exit code, seconds, tail."""
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        try:
            rc = subprocess.run(cli("index", str(folder), "-o", str(index)), stdout=out, stderr=subprocess.STDOUT,
                                timeout=timeout, env=dict(os.environ, NO_COLOR="1")).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            rc = -9
    tail = log.read_text(errors="replace")[-400:]
    return rc, time.perf_counter() - t0, tail


# --------------------------------------------------------------------------------------- payloads
def make_payloads(cache: Path, good: list[tuple[str, bytes]]) -> dict[str, list[tuple[str, bytes]]]:
    """The hostile uploads and the burst's pictures (the big ones kept in ``cache``)."""
    import io

    import numpy as np
    from PIL import Image

    cache.mkdir(parents=True, exist_ok=True)
    name, jpeg = next((n, d) for n, d in good if n.lower().endswith((".jpg", ".jpeg")))
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(png, "PNG")
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, "PNG", optimize=True)
    out: dict[str, list[tuple[str, bytes]]] = {
        "truncated": [("cut-" + name, jpeg[: len(jpeg) // 2]), ("cut.png", png.getvalue()[: len(png.getvalue()) // 2])],
        "text": [("notes.txt", b"this is not an image, just some text\n" * 40)],
        "bomb": [("bomb.png", bomb.getvalue())],
        "oversized": [("big.png", os.urandom(17 * MiB))],
    }
    noise, limit = cache / "noise-2340.png", cache / "limit-8000x8000.png"
    if not noise.is_file():  # random RGB noise: ~15.7 MiB, 5.5 megapixels
        arr = np.random.default_rng(2).integers(0, 256, (2340, 2340, 3), dtype=np.uint8)
        Image.fromarray(arr).save(noise.with_suffix(".tmp"), "PNG", compress_level=1)
        os.replace(noise.with_suffix(".tmp"), noise)
    if not limit.is_file():  # 64,000,000 pixels (the limit), a band of noise to bring it near 16 MiB
        arr = np.zeros((8000, 8000, 3), dtype=np.uint8)
        arr[:, :, 1] = np.linspace(0, 255, 8000, dtype=np.uint8)[None, :]
        arr[:640] = np.random.default_rng(3).integers(0, 256, (640, 8000, 3), dtype=np.uint8)
        Image.fromarray(arr).save(limit.with_suffix(".tmp"), "PNG", compress_level=1)
        os.replace(limit.with_suffix(".tmp"), limit)
        del arr
    out["burst"] = [(p.name, p.read_bytes()) for p in (noise, limit)]
    for n, d in out["burst"]:
        if len(d) > CAP:
            raise SystemExit(f"error: {n} is {len(d):,} bytes, over the 16 MiB cap; delete {cache} and retry")
    return out


# ----------------------------------------------------------------------------------------- client
class _HeadCapture:
    """Wraps an ``asyncio.StreamReader`` for ``serve_load.read_response``, keeping the response head."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.head = b""

    async def readuntil(self, separator: bytes) -> bytes:
        data = await self.reader.readuntil(separator)
        if not self.head:
            self.head = data
        return data

    async def readexactly(self, n: int) -> bytes:
        return await self.reader.readexactly(n)

    async def read(self, n: int = -1) -> bytes:
        return await self.reader.read(n)


def header(head: bytes, name: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return None


CLIENT_ERRORS = (OSError, EOFError, TimeoutError, ValueError, asyncio.LimitOverrunError, serve_load.ResponseError)


class Connection:
    """One keep-alive HTTP/1.1 connection to the server (opened when needed, again after a close)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, data: bytes, timeout: float = REQUEST_TIMEOUT_S) -> tuple[int | None, bytes, str | None]:
        """Send one request, read the whole response: ``(status or None, response head, error name or None)``."""
        if self.writer is not None and time.monotonic() - self.last_used > IDLE_REOPEN_S:
            self.close()  # the server may be closing it now: do not race its keep-alive timeout
        capture = None
        try:
            async with asyncio.timeout(timeout):
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                assert self.reader is not None
                self.writer.write(data)
                capture = _HeadCapture(self.reader)
                status, close = await serve_load.read_response(capture)
        except CLIENT_ERRORS as exc:
            self.close()
            partial = capture.head if capture is not None else b""
            return None, partial, type(exc).__name__
        self.last_used = time.monotonic()
        if close:
            self.close()
        return status, capture.head, None


class Requests:
    """The bytes of every request the soak sends (``serve_load.multipart_body`` for uploads)."""

    BOUNDARY = "3db1e6279daf4c843b45acef7ebe717a"

    def __init__(self, host: str, port: int, k: int) -> None:
        self.common = f"Host: {host}:{port}\r\n".encode() + serve_load.CLIENT_HEADERS
        self.k = k

    def get(self, path: str) -> bytes:
        return f"GET {path} HTTP/1.1\r\n".encode() + self.common + b"\r\n"

    def upload_head(self, length: int | None) -> bytes:
        size = "Transfer-Encoding: chunked\r\n" if length is None else f"Content-Length: {length}\r\n"
        return (b"POST /api/search HTTP/1.1\r\n" + self.common + size.encode()
                + f"Content-Type: multipart/form-data; boundary={self.BOUNDARY}\r\n\r\n".encode())  # fmt: skip

    def upload_body(self, name: str, data: bytes) -> bytes:
        return serve_load.multipart_body({"k": str(self.k)}, name, data, self.BOUNDARY)

    def upload(self, name: str, data: bytes) -> bytes:
        body = self.upload_body(name, data)
        return self.upload_head(len(body)) + body


# ------------------------------------------------------------------------------------------- soak
def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


class Soak:
    """The traffic, the re-indexing and the burst, and everything they record."""

    def __init__(self, args: argparse.Namespace, port: int, pid: int, folder: Path, index: Path, removed_dir: Path,
                 ids: dict[int, Path], good: list[tuple[str, bytes]], bad: dict[str, list[tuple[str, bytes]]],
                 log_dir: Path) -> None:  # fmt: skip
        self.args, self.port, self.pid = args, port, pid
        self.folder, self.index, self.removed_dir, self.log_dir = folder, index, removed_dir, log_dir
        self.paths = ids  # id -> file, of the ids still served
        self.pool = sorted(ids)
        self.removed: set[int] = set()
        self.req = Requests("127.0.0.1", port, args.k)
        self.uploads = [self.req.upload(n, d) for n, d in good]
        self.bad = bad
        self.records: list[tuple[float, str, float, int | None, str, str]] = []  # t, kind, ms, status, outcome, why
        self.rss: list[tuple[float, int]] = []
        self.reindex: list[dict[str, Any]] = []
        self.burst: dict[str, Any] | None = None
        self.slow: list[dict[str, Any]] = []
        self.t0 = 0.0
        self.t_end = 0.0

    # ---- bookkeeping
    def now(self) -> float:
        return time.monotonic() - self.t0

    def record(self, kind: str, ms: float, status: int | None, head: bytes, error: str | None, id_: int | None = None,
               t: float | None = None) -> str:  # fmt: skip
        if status is None:
            outcome, why = "unexpected", f"connection: {error}"
        else:
            outcome = EXPECTED.get(kind, {}).get(status, "unexpected")
            why = f"HTTP {status}"
            if status == 503 and kind in UPLOAD_KINDS and header(head, b"retry-after"):
                outcome, why = "expected", "HTTP 503 (Retry-After)"
            elif status == 404 and kind in ID_KINDS and id_ in self.removed:
                outcome, why = "expected", "HTTP 404 (removed id)"
        self.records.append((self.now() if t is None else t, kind, ms, status, outcome, why))
        return outcome

    async def timed(self, conn: Connection, kind: str, data: bytes, id_: int | None = None,
                    timeout: float = REQUEST_TIMEOUT_S) -> tuple[int | None, bytes, str | None, float]:  # fmt: skip
        t = self.now()
        t0 = time.perf_counter()
        status, head, error = await conn.request(data, timeout)
        ms = (time.perf_counter() - t0) * 1000
        self.record(kind, ms, status, head, error, id_, t)
        return status, head, error, ms

    def running(self) -> bool:
        return time.monotonic() < self.t_end

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, min(seconds, self.t_end - time.monotonic())))

    # ---- tasks
    async def sample_rss(self) -> None:
        while self.running():
            value = rss_bytes(self.pid)
            if value is not None:
                self.rss.append((self.now(), value))
            await self.sleep(1.0 - (self.now() % 1.0))

    async def client(self, n: int, mix: dict[str, float]) -> None:
        rng = random.Random(self.args.seed * 1000 + n)
        conn = Connection("127.0.0.1", self.port)
        kinds, weights = list(mix), list(mix.values())
        while self.running():
            kind = rng.choices(kinds, weights)[0]
            id_ = None
            if kind == "upload":
                data = self.uploads[rng.randrange(len(self.uploads))]
            elif kind in ("health", "info"):
                data = self.req.get("/health" if kind == "health" else "/api/info")
            else:
                id_ = rng.choice(self.pool)
                path = {"id": f"/api/search?id={id_}&k={self.args.k}", "thumb": f"/thumbs/{id_}",
                        "original": f"/api/images/{id_}"}[kind]  # fmt: skip
                data = self.req.get(path)
            await self.timed(conn, kind, data, id_)
        conn.close()

    async def bad_uploads(self) -> None:
        order = ["truncated", "text", "bomb", "oversized", "truncated", "oversized_chunked"]
        i = 0
        while self.running():
            kind = order[i % len(order)]
            i += 1
            conn = Connection("127.0.0.1", self.port)
            if kind == "oversized_chunked":
                await self.chunked_upload(conn)
            else:
                name, data = self.bad["oversized" if kind == "oversized" else kind][i % len(self.bad[kind])]
                await self.timed(conn, kind, self.req.upload(name, data))
            conn.close()
            await self.sleep(self.args.bad_every)

    async def chunked_upload(self, conn: Connection) -> None:
        """17 MiB without ``Content-Length`` (chunked): 413 once the body passes the cap."""
        name, data = self.bad["oversized"][0]
        body = self.req.upload_body(name, data)
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + MiB]), body[i : i + MiB]) for i in range(0, len(body), MiB)
        )
        await self.timed(conn, "oversized_chunked", self.req.upload_head(None) + chunks + b"0\r\n\r\n")

    async def slow_clients(self) -> None:
        which = 0
        while self.running():
            head = which % 2 == 0
            which += 1
            if self.now() + (HEADER_TIMEOUT_S if head else BODY_TIMEOUT_S) + 5 > self.args.duration:
                if head:
                    break
                continue  # no time left for a body deadline: heads only
            if head:
                await self.slow_one("slow_head", self.req.get("/health"), 0, 0.5, HEADER_TIMEOUT_S)
            else:
                body = self.req.upload_body(*self.bad["truncated"][0]) + b"x" * 20_000
                await self.slow_one("slow_body", self.req.upload_head(len(body)) + body,
                                    len(self.req.upload_head(len(body))), 1.0, BODY_TIMEOUT_S, step=100)  # fmt: skip
            await self.sleep(2.0)

    async def slow_one(self, kind: str, data: bytes, fast: int, every: float, deadline: float, step: int = 1) -> None:
        """Send ``data[:fast]`` at once, then ``step`` bytes every ``every`` seconds, until the server answers
        or closes. Expected: closed (a 408 first, or nothing) by the deadline plus a few seconds."""
        t = self.now()
        t0 = time.monotonic()
        limit = deadline + 15.0
        sent, got, error, closed = fast, b"", None, False
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError as exc:
            self.record(kind, 0.0, None, b"", type(exc).__name__, t=t)
            return
        writer.write(data[:fast])
        reading = asyncio.ensure_future(reader.read(65536))
        try:
            while time.monotonic() - t0 < limit and sent < len(data):
                done, _ = await asyncio.wait([reading], timeout=every)
                if done:
                    break
                writer.write(data[sent : sent + step])
                sent += step
            async with asyncio.timeout(max(0.1, limit - (time.monotonic() - t0))):
                more = await reading
                while more:  # read until the server closes the connection
                    got += more
                    more = await reader.read(65536)
                closed = True
        except TimeoutError:
            error = "not closed"
        except OSError as exc:
            error, closed = type(exc).__name__, True
        finally:
            reading.cancel()
            writer.close()
        seconds = time.monotonic() - t0
        status = int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.") else None
        in_time = seconds <= deadline + 5.0
        if status is None and closed and in_time and error in (None, "ConnectionResetError"):
            outcome, why = "expected", "closed, no answer" if error is None else "closed (reset)"
        elif status is not None and EXPECTED[kind].get(status) == "expected" and in_time:
            outcome, why = "expected", f"HTTP {status} then closed" if closed else f"HTTP {status}"
        elif status == 503 and kind == "slow_body" and header(got.split(b"\r\n\r\n")[0] + b"\r\n", b"retry-after"):
            outcome, why = "expected", "HTTP 503 (Retry-After)"
        else:
            outcome = "unexpected"
            why = f"HTTP {status}" if status is not None else (f"connection: {error}" if error else "not closed")
            why += f" after {seconds:.1f} s"
        self.records.append((t, kind, seconds * 1000, status, outcome, why))
        self.slow.append({"kind": kind, "t_s": round(t, 1), "seconds": round(seconds, 2), "bytes_sent": sent,
                          "status": status, "closed": closed, "error": error, "outcome": outcome})  # fmt: skip

    async def reindexer(self) -> None:
        cycle = 0
        every = self.args.reindex_every
        while every > 0 and self.now() + every < self.args.duration - 5:
            await self.sleep(every - (self.now() % every))
            if not self.running():
                break
            cycle += 1
            await asyncio.to_thread(self.reindex_once, cycle)

    def reindex_once(self, cycle: int) -> None:
        """Remove and add a few files, ``lookalike index``, wait for the server to load the new state."""
        import httpx
        from PIL import Image, ImageOps

        base = f"http://127.0.0.1:{self.port}"
        rng = random.Random(self.args.seed * 7 + cycle)
        event: dict[str, Any] = {"cycle": cycle, "t_s": round(self.now(), 1)}
        try:
            before = httpx.get(base + "/api/info", timeout=10).json().get("loaded_at")
        except (httpx.HTTPError, ValueError):
            before = None
        gone = rng.sample(self.pool, self.args.churn)
        self.removed.update(gone)  # from now on a 404 for these is expected
        self.pool = [i for i in self.pool if i not in set(gone)]
        for id_ in gone:
            src = self.paths.pop(id_)
            dest = self.removed_dir / src.relative_to(self.folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
        for j, id_ in enumerate(rng.sample(self.pool, self.args.churn)):
            src = self.paths[id_]
            with Image.open(src) as im:
                ImageOps.mirror(im.convert("RGB")).save(src.with_name(f"soak-added-{cycle}-{j}.jpg"), quality=90)
        rc, seconds, tail = run_index(self.folder, self.index, self.log_dir / "reindex.log")
        event.update(removed_ids=gone, added=self.args.churn, index_rc=rc, index_s=round(seconds, 2))
        if rc != 0:
            event["index_tail"] = tail
        t1 = time.monotonic()
        reloaded = None
        while time.monotonic() - t1 < 60 and time.monotonic() < self.t_end:
            try:
                now = httpx.get(base + "/api/info", timeout=10).json().get("loaded_at")
            except (httpx.HTTPError, ValueError):
                now = None
            if now is not None and now != before:
                reloaded = round(time.monotonic() - t1, 2)
                break
            time.sleep(0.25)
        event["reloaded_after_s"] = reloaded  # seconds after `lookalike index` ended (None: not seen)
        # the removed ids: 404 once the new state is served (searched for, their originals, their thumbnails)
        gone_404 = None
        while time.monotonic() - t1 < 60 and time.monotonic() < self.t_end + 30:
            try:
                if all(httpx.get(f"{base}/api/search?id={i}", timeout=10).status_code == 404 for i in gone):
                    gone_404 = round(time.monotonic() - t1, 2)
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        event["removed_404_after_s"] = gone_404
        probes = Counter()
        for i in gone:
            for kind, path in (("removed_id", f"/api/search?id={i}"), ("removed_original", f"/api/images/{i}"),
                               ("removed_thumb", f"/thumbs/{i}")):  # fmt: skip
                t = self.now()
                t2 = time.perf_counter()
                try:
                    status = httpx.get(base + path, timeout=10).status_code
                    error = None
                except httpx.HTTPError as exc:
                    status, error = None, type(exc).__name__
                self.record(kind, (time.perf_counter() - t2) * 1000, status, b"", error, i, t)
                probes[f"{kind} {status}"] += 1
        event["removed_probes"] = dict(probes)
        self.reindex.append(event)
        seen = f"after {reloaded:.1f} s" if reloaded is not None else "NOT seen"
        seen += f", removed ids 404 after {gone_404} s" if gone_404 is not None else ", removed ids NOT 404 in 60 s"
        print(f"  t={event['t_s']:.0f}s re-index {cycle}: -{len(gone)} +{self.args.churn} files, index {seconds:.1f} s "
              f"(exit {rc}), server reloaded {seen}", flush=True)  # fmt: skip

    async def burst_task(self) -> None:
        await self.sleep(self.args.burst_at - self.now())
        if not self.running():
            return
        n = self.args.burst
        requests = [self.req.upload(name, data) for name, data in self.bad["burst"]]
        rss: list[tuple[float, int]] = []
        inloop: list[tuple[float, float, int | None]] = []
        done = asyncio.Event()
        before = rss_bytes(self.pid)

        async def sampler() -> None:
            while not done.is_set():
                value = rss_bytes(self.pid)
                if value is not None:
                    rss.append((self.now(), value))
                await asyncio.sleep(0.1)

        async def prober() -> None:  # in this process too: its figures include this event loop's delays
            conn = Connection("127.0.0.1", self.port)
            stop = time.monotonic() + 120
            while not done.is_set() and time.monotonic() < stop:
                status, head, error, ms = await self.timed(conn, "health", self.req.get("/health"), timeout=10)
                inloop.append((self.now(), ms, status))
                await asyncio.sleep(0.05)
            conn.close()

        async def one(i: int) -> dict[str, Any]:
            conn = Connection("127.0.0.1", self.port)
            status, head, error, ms = await self.timed(conn, "burst", requests[i % len(requests)], timeout=120)
            conn.close()
            return {"file": self.bad["burst"][i % len(requests)][0], "status": status, "ms": round(ms, 1),
                    "retry_after": header(head, b"retry-after"), "error": error}  # fmt: skip

        # /health is timed by a process of its own (blocking sockets, no event loop shared with the load)
        probe = subprocess.Popen([sys.executable, __file__, "--probe-health", str(self.port)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        await asyncio.sleep(1.0)  # the probe is running; a baseline for /health
        t_start = self.now()
        side = [asyncio.ensure_future(sampler()), asyncio.ensure_future(prober())]
        answers = await asyncio.gather(*(one(i) for i in range(n)))
        t_done = self.now()
        await asyncio.sleep(1.0)
        done.set()
        await asyncio.gather(*side)
        try:
            out, _ = await asyncio.to_thread(probe.communicate, b"stop\n", 30)
            health = [(t - self.t0, ms, status) for t, ms, status in json.loads(out or b"[]")]
        except (subprocess.TimeoutExpired, ValueError):
            probe.kill()
            health = []
        baseline = [h[1] for h in health if h[0] < t_start]
        during = [h for h in health if t_start <= h[0] <= t_done]
        inloop_during = [h for h in inloop if t_start <= h[0] <= t_done]
        self.burst = {
            "t_s": round(t_start, 1),
            "uploads": n,
            "files": {name: len(data) for name, data in self.bad["burst"]},
            "seconds": round(t_done - t_start - 0.3, 2),
            "statuses": dict(Counter(str(a["status"] if a["status"] is not None else a["error"]) for a in answers)),
            "answers": answers,
            "rss_before_mb": round(before / MiB, 1) if before else None,
            "rss_peak_mb": round(max(v for _, v in rss) / MiB, 1) if rss else None,
            "rss_after_mb": round(rss[-1][1] / MiB, 1) if rss else None,
            "health_requests": len(during),
            "health_max_ms": round(max(h[1] for h in during), 1) if during else None,  # the goal's figure
            "health_p99_ms": round(serve_load.percentile([h[1] for h in during], 99), 1) if during else None,
            "health_p50_ms": round(serve_load.percentile([h[1] for h in during], 50), 1) if during else None,
            "health_not_200": sum(1 for h in during if h[2] != 200),
            "health_baseline_max_ms": round(max(baseline), 1) if baseline else None,
            "health_inloop_max_ms": round(max(h[1] for h in inloop_during), 1) if inloop_during else None,
            "health_samples": [(round(t, 2), round(ms, 1), st) for t, ms, st in health],
            "rss_samples": [(round(t, 2), round(v / MiB, 1)) for t, v in rss],
        }
        b = self.burst
        print(f"  t={b['t_s']:.0f}s burst of {n}: {b['statuses']}, {b['seconds']:.1f} s, RSS {b['rss_before_mb']} -> "
              f"peak {b['rss_peak_mb']} MiB, /health max {b['health_max_ms']} ms", flush=True)  # fmt: skip

    async def progress(self) -> None:
        while self.running():
            await self.sleep(30.0)
            if not self.running():
                break
            n = len(self.records)
            bad = sum(1 for r in self.records if r[4] == "unexpected")
            rss = self.rss[-1][1] / MiB if self.rss else float("nan")
            print(f"  t={self.now():.0f}s {n:,} requests, {bad} unexpected, server RSS {rss:.0f} MiB", flush=True)

    async def run(self, mix: dict[str, float]) -> None:
        self.t0 = time.monotonic()
        self.t_end = self.t0 + self.args.duration
        tasks = [self.sample_rss(), self.progress(), *(self.client(n, mix) for n in range(self.args.clients))]
        if not self.args.no_hostile:
            tasks += [self.bad_uploads(), self.slow_clients()]
        tasks += [self.reindexer(), self.burst_task()]
        # every loop ends at t_end; the slow clients and the burst may take their own deadline beyond it
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=self.args.duration + 200)


# ----------------------------------------------------------------------------------------- report
def pct(values: list[float], q: float) -> float | None:
    return round(serve_load.percentile(values, q), 1) if values else None


def summarise(soak: Soak, warmup: float, duration: float) -> dict[str, Any]:
    records = soak.records
    by_kind: dict[str, Counter] = defaultdict(Counter)
    answers: dict[str, Counter] = defaultdict(Counter)
    for _, kind, _, _, outcome, why in records:
        by_kind[kind][outcome] += 1
        answers[kind][f"{outcome}: {why}"] += 1
    kinds = {
        kind: {
            "requests": sum(c.values()),
            "ok": c["ok"],
            "expected": c["expected"],
            "unexpected": c["unexpected"],
            "answers": dict(sorted(answers[kind].items())),
        }  # fmt: skip
        for kind, c in sorted(by_kind.items(), key=lambda kv: -sum(kv[1].values()))
    }
    unexpected_5xx = sum(1 for r in records if r[3] is not None and r[3] >= 500 and r[4] == "unexpected")
    connection_errors = sum(1 for r in records if r[3] is None and r[4] == "unexpected")
    minutes = []
    for m in range(int(max(duration, 1) + 59) // 60):
        row: dict[str, Any] = {"minute": m + 1, "from_s": m * 60, "warmup": (m + 1) * 60 <= warmup}
        for kind in ("id", "upload"):
            ms = [r[2] for r in records if r[1] == kind and r[3] == 200 and m * 60 <= r[0] < (m + 1) * 60]
            row[kind] = {"n": len(ms), "p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95), "p99_ms": pct(ms, 99),
                         "max_ms": round(max(ms), 1) if ms else None}  # fmt: skip
        window = [v for t, v in soak.rss if m * 60 <= t < (m + 1) * 60]
        row["rss_median_mb"] = round(statistics.median(window) / MiB, 1) if window else None
        row["requests"] = sum(1 for r in records if m * 60 <= r[0] < (m + 1) * 60)
        minutes.append(row)
    tens = []  # searches by id every 10 s: where in a minute a slow tail came from
    for m in range(int(max(duration, 1) + 9) // 10):
        ms = [r[2] for r in records if r[1] == "id" and r[3] == 200 and m * 10 <= r[0] < (m + 1) * 10]
        tens.append({"from_s": m * 10, "n": len(ms), "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99)})
    w = min(60.0, (duration - warmup) / 2)  # a minute, or half of what follows the warm-up in a short run
    first = [v for t, v in soak.rss if warmup <= t < warmup + w]
    last = [v for t, v in soak.rss if duration - w <= t <= duration]
    growth = (statistics.median(last) - statistics.median(first)) / MiB if first and last else None
    rss_values = [v for _, v in soak.rss]
    after_burst = None  # the burst's memory that stays: median of the minute from 10 s after it ended
    if soak.burst and soak.burst.get("rss_samples"):
        end = soak.burst["rss_samples"][-1][0]
        window = [v for t, v in soak.rss if end + 10 <= t < end + 70]
        after_burst = statistics.median(window) if window else None
    id_p99 = [row["id"]["p99_ms"] for row in minutes if row["id"]["p99_ms"] is not None]
    id_p99_after = [r["id"]["p99_ms"] for r in minutes if r["id"]["p99_ms"] is not None and not r["warmup"]]
    burst = soak.burst or {}
    goals = {
        "no_unexpected_5xx": {"goal": "0 unexpected 5xx", "value": unexpected_5xx, "pass": unexpected_5xx == 0},
        "rss_growth": {"goal": f"RSS growth after warm-up < {GOALS['rss_growth_mb']:.0f} MB",
                       "value": None if growth is None else round(growth * MiB / 1e6, 1),
                       "pass": growth is not None and growth * MiB / 1e6 < GOALS["rss_growth_mb"]},
        "burst_rss": {"goal": "burst: server RSS < 1 GB", "value": burst.get("rss_peak_mb"),
                      "pass": burst.get("rss_peak_mb") is not None and burst["rss_peak_mb"] < GOALS["burst_rss_mb"]},
        "burst_health": {"goal": f"burst: /health < {GOALS['burst_health_ms']:.0f} ms",
                         "value": burst.get("health_max_ms"),
                         "pass": burst.get("health_max_ms") is not None
                         and burst["health_max_ms"] < GOALS["burst_health_ms"]},
        "id_p99": {"goal": f"p99 of id searches < {GOALS['id_p99_ms']:.0f} ms in every minute",
                   "value": max(id_p99) if id_p99 else None,
                   "pass": bool(id_p99) and max(id_p99) < GOALS["id_p99_ms"],
                   "worst_minute": 1 + [r["id"]["p99_ms"] for r in minutes].index(max(id_p99)) if id_p99 else None,
                   "after_warmup": max(id_p99_after) if id_p99_after else None},
    }  # fmt: skip
    return {
        "requests": len(records),
        "kinds": kinds,
        "unexpected_5xx": unexpected_5xx,
        "connection_errors": connection_errors,
        "unexpected_examples": sorted({f"{r[1]}: {r[5]}" for r in records if r[4] == "unexpected"})[:30],
        "minutes": minutes,
        "id_every_10s": tens,
        "rss": {
            "start_mb": round(rss_values[0] / MiB, 1) if rss_values else None,
            "end_mb": round(rss_values[-1] / MiB, 1) if rss_values else None,
            "max_mb": round(max(rss_values) / MiB, 1) if rss_values else None,
            "first_minute_after_warmup_median_mb": round(statistics.median(first) / MiB, 1) if first else None,
            "last_minute_median_mb": round(statistics.median(last) / MiB, 1) if last else None,
            "window_s": w,
            "minute_after_burst_median_mb": None if after_burst is None else round(after_burst / MiB, 1),
            "growth_since_burst_mb": None
            if after_burst is None or not last
            else round((statistics.median(last) - after_burst) / 1e6, 1),
            "growth_mib": None if growth is None else round(growth, 1),
            "growth_mb": None if growth is None else round(growth * MiB / 1e6, 1),
            "samples": [(round(t, 1), round(v / MiB, 1)) for t, v in soak.rss],
        },
        "burst": soak.burst,
        "reindex": soak.reindex,
        "slow_clients": soak.slow,
        "goals": goals,
    }


def fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def print_report(result: dict[str, Any]) -> None:
    s = result["summary"]
    cfg = result["config"]
    print()
    print(f"soak: {cfg['duration_s']:g} s against {cfg['index_images']:,} images ({cfg['index']}), {cfg['clients']} "
          f"clients + hostile tasks; {s['requests']:,} requests")  # fmt: skip
    head = f"{'kind':<18}{'requests':>9}{'ok':>9}{'expected':>9}{'unexpected':>11}  answers"
    print(head)
    print("-" * len(head))
    for kind, k in s["kinds"].items():
        ans = ", ".join(f"{a} x{n}" for a, n in k["answers"].items() if not a.startswith("ok:"))
        print(f"{kind:<18}{k['requests']:>9,}{k['ok']:>9,}{k['expected']:>9,}{k['unexpected']:>11,}  {ans}")
    print()
    print(f"{'minute':<7}{'requests':>9}{'RSS MiB':>9} | {'id n':>6}{'p50':>7}{'p95':>7}{'p99':>7} | "
          f"{'upload n':>8}{'p50':>7}{'p95':>7}{'p99':>7}")  # fmt: skip
    for row in s["minutes"]:
        i, u = row["id"], row["upload"]
        warm = "(w)" if row["warmup"] else "   "
        print(f"{row['minute']:<3}{warm} {row['requests']:>9,}{fmt(row['rss_median_mb']):>9} | "
              f"{i['n']:>6}{fmt(i['p50_ms']):>7}{fmt(i['p95_ms']):>7}{fmt(i['p99_ms']):>7} | "
              f"{u['n']:>8}{fmt(u['p50_ms']):>7}{fmt(u['p95_ms']):>7}{fmt(u['p99_ms']):>7}")  # fmt: skip
    r = s["rss"]
    print(f"\nserver RSS: start {fmt(r['start_mb'])} MiB, max {fmt(r['max_mb'])}, end {fmt(r['end_mb'])}; "
          f"first minute after warm-up {fmt(r['first_minute_after_warmup_median_mb'])}, "
          f"last minute {fmt(r['last_minute_median_mb'])} -> growth {fmt(r['growth_mb'])} MB; "
          f"minute after the burst {fmt(r['minute_after_burst_median_mb'])} MiB, "
          f"growth since {fmt(r['growth_since_burst_mb'])} MB")  # fmt: skip
    b = s["burst"]
    if b:
        print(f"burst of {b['uploads']} at t={b['t_s']:g} s: {b['statuses']}; RSS {b['rss_before_mb']} -> peak "
              f"{b['rss_peak_mb']} MiB; /health x{b['health_requests']} during it: p50 {b['health_p50_ms']} ms, "
              f"p99 {b['health_p99_ms']} ms, max {b['health_max_ms']} ms "
              f"(before it: max {b['health_baseline_max_ms']} ms; "
              f"timed in the load generator's event loop: max {b['health_inloop_max_ms']} ms)")  # fmt: skip
    for e in s["reindex"]:
        print(f"re-index {e['cycle']} at t={e['t_s']:g} s: index {e['index_s']} s (exit {e['index_rc']}), reloaded "
              f"after {e['reloaded_after_s']} s, removed ids 404 after {e.get('removed_404_after_s')} s: "
              f"{e.get('removed_probes')}")  # fmt: skip
    if s["unexpected_examples"]:
        print("unexpected:", "; ".join(s["unexpected_examples"]))
    print(f"server reloads: {result.get('server_reloads')} for {len(s['reindex'])} re-indexes")
    print(f"connection errors (unexpected): {s['connection_errors']}; unexpected 5xx: {s['unexpected_5xx']}")
    m = result["machine"]
    print(f"load average before {m['loadavg_at_start']}, after {m.get('loadavg_at_end')}")
    print("\ngoals:")
    for g in s["goals"].values():
        extra = f" (minute {g['worst_minute']}; after the warm-up: {g['after_warmup']})" if "worst_minute" in g else ""
        print(f"  {'PASS' if g['pass'] else 'FAIL'}  {g['goal']}: {g['value']}{extra}")


# ------------------------------------------------------------------------------------------- main
def start_server(index: Path, port: int, thumbs: Path, log: Path) -> subprocess.Popen:
    """``lookalike serve`` in a child process; its output goes to ``log`` (a pipe nobody reads could fill)."""
    cmd = cli("serve", str(index), "--host", "127.0.0.1", "--port", str(port), "--cache-dir", str(thumbs))
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def server_reloads(base: str) -> float | None:
    """How many times the server loaded the index again (``lookalike_index_reloads`` in ``/metrics``)."""
    import re

    import httpx

    try:
        text = httpx.get(base + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    found = re.search(r"^lookalike_index_reloads (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def wait_healthy(base: str, proc: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: the server exited with code {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"error: the server did not answer /health within {timeout:.0f} s")


def probe_health(port: int, every: float = 0.05, limit: float = 120.0) -> None:
    """Time ``GET /health`` every ``every`` seconds on one keep-alive connection until stdin has a line (or
    ``limit`` seconds); print ``[[time.monotonic(), ms, status], ...]`` as JSON. Run in a process of its own."""
    import select
    import socket

    request = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    out: list[tuple[float, float, int | None]] = []
    sock: socket.socket | None = None
    buf = b""
    stop = time.monotonic() + limit
    while time.monotonic() < stop and not select.select([sys.stdin], [], [], 0)[0]:
        t = time.monotonic()
        status = None
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                buf = b""
            sock.sendall(request)
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = int(header(head + b"\r\n", b"content-length") or 0)
            while len(buf) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
            buf = buf[length:]
            status = int(head.split(b" ", 2)[1])
        except (OSError, ValueError):
            if sock is not None:
                sock.close()
            sock = None
        out.append((t, (time.monotonic() - t) * 1000, status))
        time.sleep(max(0.0, every - (time.monotonic() - t)))
    if sock is not None:
        sock.close()
    print(json.dumps(out))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probe-health"]:
        probe_health(int(argv[1]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="a quick run: --images generated pictures, not CIFAR-10")
    ap.add_argument("--images", type=int, default=3000, help="with --small: how many pictures (default 3,000)")
    ap.add_argument("--data", type=Path, default=serve_load.DEFAULT_DATA, help="the CIFAR-10 JPEG tarball")
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=serve_load.DEFAULT_CACHE,
        help="where the images, the index and the big payloads are kept (as serve_load.py)",
    )
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of traffic (default 600)")
    ap.add_argument("--warmup", type=float, help="seconds before RSS growth is measured (default 60; --small: 10)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent back-to-back clients (default 8)")
    ap.add_argument("--mix", default=DEFAULT_MIX, help=f"their request kinds and weights (default {DEFAULT_MIX})")
    ap.add_argument("--bad-every", type=float, default=1.0, help="seconds between bad uploads (default 1)")
    ap.add_argument(
        "--reindex-every", type=float, help="seconds between re-indexes (default 120; --small: 20; 0: none)"
    )
    ap.add_argument("--churn", type=int, default=3, help="files removed and added by each re-index (default 3)")
    ap.add_argument("--burst-at", type=float, help="second of the burst (default: half the duration)")
    ap.add_argument("--burst", type=int, default=16, help="uploads in the burst (default 16)")
    ap.add_argument("--no-hostile", action="store_true", help="leave out the bad uploads and slow clients")
    ap.add_argument("-k", type=int, default=10, help="results per search")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    if args.warmup is None:
        args.warmup = 10.0 if args.small else 60.0
    if args.reindex_every is None:
        args.reindex_every = 20.0 if args.small else 120.0
    if args.burst_at is None:
        args.burst_at = max(args.warmup + 5, args.duration / 2)
    if not (10 <= args.duration <= 3600 and 1 <= args.clients <= 200 and 0 <= args.warmup < args.duration
            and 1 <= args.burst <= 64 and 1 <= args.churn <= 50 and args.bad_every >= 0.05):  # fmt: skip
        raise SystemExit("error: need 10-3600 s, 1-200 clients, a warm-up shorter than the run, 1-64 burst uploads")
    mix = {}
    for part in args.mix.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in NORMAL_KINDS:
            raise SystemExit(f"error: --mix: unknown kind {name.strip()!r} (use {', '.join(NORMAL_KINDS)})")
        mix[name.strip()] = float(weight)

    folder, index_dir, removed_dir = prepare(args)
    from lookalike.search import Index

    idx = Index.load(index_dir)
    ids = {i: idx.path_of(i) for i in idx.entries}
    n_images = len(idx)
    del idx
    rng = random.Random(args.seed)
    jpegs = [i for i, p in ids.items() if p.suffix.lower() in (".jpg", ".jpeg")]
    good = [(ids[i].name, ids[i].read_bytes()) for i in rng.sample(jpegs, min(64, len(jpegs)))]
    print("preparing the hostile uploads and the burst's pictures ...", flush=True)
    bad = make_payloads(args.cache_dir / "soak-payloads", good)

    with tempfile.TemporaryDirectory(prefix="lookalike-soak-") as tmp:
        work = Path(tmp)
        port = serve_load.free_port()
        base = f"http://127.0.0.1:{port}"
        log = work / "server.log"
        info = serve_load.machine_info()
        proc = start_server(index_dir, port, work / "thumbs", log)
        try:
            t0 = time.perf_counter()
            wait_healthy(base, proc, log)
            print(f"server (pid {proc.pid}) up in {time.perf_counter() - t0:.1f} s at {base}; {args.duration:g} s of "
                  f"traffic, {args.clients} clients, re-index every {args.reindex_every:g} s, burst at "
                  f"{args.burst_at:g} s", flush=True)  # fmt: skip
            soak = Soak(args, port, proc.pid, folder, index_dir, removed_dir, ids, good, bad, work)
            cpu0 = (serve_load.cpu_seconds(proc.pid), serve_load.cpu_seconds(os.getpid()),
                    serve_load.busy_cpu_seconds(), time.monotonic())  # fmt: skip
            asyncio.run(soak.run(mix))
            cpu1 = (serve_load.cpu_seconds(proc.pid), serve_load.cpu_seconds(os.getpid()),
                    serve_load.busy_cpu_seconds(), time.monotonic())  # fmt: skip
            alive = proc.poll() is None
            reloads = server_reloads(base)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        server_log = log.read_text(errors="replace")
    info["loadavg_at_end"] = list(os.getloadavg())
    summary = summarise(soak, args.warmup, args.duration)
    result = {
        "machine": info,
        "config": {
            "small": args.small,
            "index": f"{args.images} generated" if args.small else "cifar10 train",
            "index_images": n_images,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "clients": args.clients,
            "mix": args.mix,
            "bad_every_s": args.bad_every,
            "reindex_every_s": args.reindex_every,
            "churn": args.churn,
            "burst_at_s": args.burst_at,
            "burst": args.burst,
            "k": args.k,
            "hostile": not args.no_hostile,
            "seed": args.seed,
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},  # the server inherits it
            "command": "python benchmarks/soak.py " + " ".join(argv),
        },  # fmt: skip
        "server_alive_at_end": alive,
        "server_reloads": reloads,  # more than the re-indexes: a reload can come between a run's commits
        "server_log_tail": server_log[-3000:],
        "server_log_lines": server_log.count("\n"),
        "cpu": serve_load.cpu_report(cpu0, cpu1, len(soak.records)),
        "summary": summary,
        "all_pass": all(g["pass"] for g in summary["goals"].values()) and alive,
    }
    print_report(result)
    if not alive:
        print("the server process had exited before the end of the run (FAIL)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"results written to {args.json}")
    return 0 if result["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
