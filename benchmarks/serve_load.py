#!/usr/bin/env python
"""A bounded load run against `lookalike serve` on 127.0.0.1: throughput, latency percentiles, errors.

    python benchmarks/serve_load.py                                  # 2,000 generated images, 50 clients, 30 s
    python benchmarks/serve_load.py --cifar --json benchmarks/results/serve_load.json   # 50,000 CIFAR-10 JPEGs
    python benchmarks/serve_load.py --index photos.index --clients 20 --duration 10

What it does:

1. **An index.** ``--index DIR`` serves an existing one. ``--cifar`` extracts the CIFAR-10 train JPEGs
   (``../shared/data/cifar10-jpg.tar.gz``, once, into ``--cache-dir``) and indexes all 50,000 (or
   ``--limit``) with an untrained ``default``-preset model at 32 px (speed does not depend on the
   weights), reused on later runs. Otherwise ``--images N`` small generated pictures are indexed the
   same way in a temporary folder.
2. **A server.** ``python -m lookalike.cli serve INDEX --port P`` in a child process (its thumbnail
   cache in a temporary folder), started and waited for through ``/health``.
3. **Load.** ``--clients`` concurrent clients (asyncio tasks, each with one keep-alive HTTP/1.1
   connection) send requests back to back for ``--warmup`` seconds (not counted) and then for
   ``--duration`` seconds, drawn from ``--mix``: ``upload`` (``POST /api/search`` with one of 64 indexed
   files, k=10), ``id`` (``GET /api/search?id=…&k=10``) and ``thumb`` (``GET /thumbs/{id}``, random
   ids: mostly made on demand, not cached). Every request has a 30 s timeout; the run stops by itself.
   Only 127.0.0.1 is ever contacted.

   The client (``--client``): ``raw`` (the default) writes each request as the bytes httpx would send
   (the same request line, headers and multipart body: the ``k`` field, then the file with its filename
   and guessed content type) on an ``asyncio`` stream and reads the whole response (status line, headers,
   a ``Content-Length`` or chunked body); ``httpx`` uses one httpx ``AsyncClient`` per task, as the first
   measurements did. Both time the same thing, from sending the request to reading the whole response,
   over the same request mix (each task draws its requests from the same seeded generator). The load
   generator shares the 2 cores with the server, so its own CPU counts: httpx spends about 1.4 ms of
   CPU a request here, the raw client a fraction of that, which leaves more of the machine to the server
   (the report shows both processes' CPU per request).
4. **Report.** Per kind and overall: requests, throughput, p50/p95/p99/max latency (client side, from
   sending the request to reading the whole response) and errors (any status other than 200, or a
   failed request); the server's own batch sizes from ``/metrics``; the goal (0 errors, p99 under
   250 ms) met or not. ``--json`` writes it all with the machine, versions and git commit.

The load generator shares the machine with the server (2 cores here), so the figures are for both
together, as a user on the same machine would see them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "lookalike-bench"
GOAL_P99_MS = 250.0
KINDS = ("upload", "id", "thumb")


# ------------------------------------------------------------------------------------------ index
def generate_images(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` small PNG/JPEG pictures (coloured blobs and stripes on noise) in 10 class folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    for i in range(n):
        cls = i % 10
        base = rng.uniform(0, 255, 3)
        arr = np.zeros((32, 32, 3)) + base * 0.3
        cy, cx, r = rng.uniform(8, 24), rng.uniform(8, 24), rng.uniform(4, 10)
        arr[((yy - cy) ** 2 + (xx - cx) ** 2) < r**2] = rng.uniform(0, 255, 3)
        if cls % 2:
            arr[(np.sin(xx / (2 + cls / 3)) > 0)] *= 0.5
        arr = np.clip(arr + rng.normal(0, 10, arr.shape), 0, 255).astype(np.uint8)
        sub = folder / f"class{cls}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(sub / (f"{i:06d}.jpg" if i % 2 else f"{i:06d}.png"), quality=90)


def extract_cifar(tarball: Path, cache: Path) -> Path:
    """The CIFAR-10 train folder, extracted once into ``cache/cifar10`` by speed.py's ``prepare_data``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lookalike_bench_speed", Path(__file__).with_name("speed.py"))
    assert spec is not None and spec.loader is not None
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    return speed.prepare_data(tarball, cache, None)


def subset(train: Path, cache: Path, limit: int) -> Path:
    """A folder of hard links to the first ``limit / 10`` images of each class."""
    out = cache / f"cifar10-train-{limit}"
    if (out / ".complete").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    classes = sorted(d for d in train.iterdir() if d.is_dir())
    for c in classes:
        (out / c.name).mkdir(parents=True)
        for f in sorted(c.iterdir())[: limit // len(classes)]:
            try:
                os.link(f, out / c.name / f.name)
            except OSError:
                shutil.copy2(f, out / c.name / f.name)
    (out / ".complete").write_text("done")
    return out


def build_index(folder: Path, out: Path) -> None:
    from lookalike.models import Model
    from lookalike.search import Index

    t0 = time.perf_counter()
    print(f"indexing {folder} with an untrained default model (32 px) ...", flush=True)
    Index.build(folder, Model.from_preset("default", image_size=32), out, num_workers=1)
    print(f"indexed in {time.perf_counter() - t0:.1f} s", flush=True)


def prepare_index(args: argparse.Namespace, work: Path) -> Path:
    from lookalike.search import is_index_dir

    if args.index is not None:
        return args.index
    if args.cifar:
        if not args.data.is_file():
            raise SystemExit(f"error: {args.data}: CIFAR-10 tarball not found (give --data, or leave out --cifar)")
        train = extract_cifar(args.data, args.cache_dir)
        folder = train if args.limit is None else subset(train, args.cache_dir, args.limit)
        out = args.cache_dir / f"serve-load-index-{folder.name}"
        if not is_index_dir(out):
            build_index(folder, out)
        return out
    folder = work / "images"
    print(f"generating {args.images:,} images ...", flush=True)
    generate_images(folder, args.images)
    build_index(folder, work / "index")
    return work / "index"


# ----------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, port: int, cache: Path, token: str | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lookalike.cli", "serve", str(index), "--host", "127.0.0.1", "--port", str(port),
           "--cache-dir", str(cache)]  # fmt: skip
    env = dict(os.environ)
    if token:
        env["LOOKALIKE_TOKEN"] = token
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_healthy(base: str, proc: subprocess.Popen | None, timeout: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"error: the server exited with code {proc.returncode}: {proc.stderr.read().strip()}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"error: the server did not answer /health within {timeout:.0f} s")


# ------------------------------------------------------------------------------------------- load
def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in KINDS:
            raise SystemExit(f"error: --mix: unknown kind {name.strip()!r} (use {', '.join(KINDS)})")
        mix[name.strip()] = float(weight)
    if not mix or sum(mix.values()) <= 0:
        raise SystemExit("error: --mix needs a positive weight")
    return mix


REQUEST_TIMEOUT_S = 30.0
CLIENT_HEADERS = b"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nUser-Agent: httpx\r\n"


def multipart_body(fields: dict[str, str], name: str, data: bytes, boundary: str) -> bytes:
    """The multipart body httpx writes for ``data=fields, files={"image": (name, data)}``: fields first."""
    import mimetypes

    out = []
    for key, value in fields.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
               f"Content-Type: {kind}\r\n\r\n".encode())  # fmt: skip
    out += [data, f"\r\n--{boundary}--\r\n".encode()]
    return b"".join(out)


class ResponseError(Exception):
    """A response that is not well-formed HTTP/1.1."""


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one whole HTTP/1.1 response: ``(status, the server closes the connection)``."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ResponseError(lines[0][:80])
    status = int(parts[1])
    length, chunked, close = None, False, parts[0] == b"HTTP/1.0"
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        key = key.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif key == b"connection":
            close = b"close" in value.lower()
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            await reader.readexactly(size + 2)  # the chunk and its CRLF
            if size == 0:
                break
    elif length is not None:
        await reader.readexactly(length)
    elif status >= 200 and status not in (204, 304):
        await reader.read()  # the body runs to the end of the connection
        close = True
    return status, close


async def run_load(
    base: str, ids: list[int], payloads: list[tuple[str, bytes]], mix: dict[str, float], clients: int,
    warmup: float, duration: float, headers: dict[str, str], k: int, seed: int, client: str = "raw",
) -> dict[str, Any]:  # fmt: skip
    if client == "raw":
        return await run_load_raw(base, ids, payloads, mix, clients, warmup, duration, headers, k, seed)
    return await run_load_httpx(base, ids, payloads, mix, clients, warmup, duration, headers, k, seed)


async def run_load_raw(
    base: str, ids: list[int], payloads: list[tuple[str, bytes]], mix: dict[str, float], clients: int,
    warmup: float, duration: float, headers: dict[str, str], k: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """The load with one raw asyncio HTTP/1.1 keep-alive connection per client (see the module docstring)."""
    from urllib.parse import urlsplit

    url = urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    common = f"Host: {url.netloc}\r\n".encode() + CLIENT_HEADERS
    common += b"".join(f"{key}: {value}\r\n".encode() for key, value in headers.items())
    boundary = "3db1e6279daf4c843b45acef7ebe717a"
    uploads = []
    for name, data in payloads:
        body = multipart_body({"k": str(k)}, name, data, boundary)
        uploads.append(b"POST /api/search HTTP/1.1\r\n" + common + f"Content-Length: {len(body)}\r\n"
                       f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode() + body)  # fmt: skip
    kinds, weights = list(mix), list(mix.values())
    records: list[tuple[str, float, bool]] = []  # kind, seconds, ok
    failures: dict[str, int] = {}
    t_start = time.monotonic()
    t_count = t_start + warmup
    t_end = t_count + duration

    async def one_client(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while True:
            now = time.monotonic()
            if now >= t_end:
                break
            kind = rng.choices(kinds, weights)[0]
            if kind == "upload":
                request = uploads[rng.randrange(len(uploads))]
            elif kind == "id":
                request = f"GET /api/search?id={rng.choice(ids)}&k={k} HTTP/1.1\r\n".encode() + common + b"\r\n"
            else:
                request = f"GET /thumbs/{rng.choice(ids)} HTTP/1.1\r\n".encode() + common + b"\r\n"
            t0 = time.perf_counter()
            ok = False
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    assert reader is not None
                    writer.write(request)
                    status, close = await read_response(reader)
                ok = status == 200
                reason = f"HTTP {status}"
            except (OSError, EOFError, TimeoutError, ValueError, asyncio.LimitOverrunError, ResponseError) as exc:
                reason = type(exc).__name__
                close = True
            seconds = time.perf_counter() - t0
            if close and writer is not None:
                writer.close()
                reader = writer = None
            if now >= t_count:
                records.append((kind, seconds, ok))
                if not ok:
                    failures[f"{kind}: {reason}"] = failures.get(f"{kind}: {reason}", 0) + 1
        if writer is not None:
            writer.close()

    await asyncio.gather(*(one_client(n) for n in range(clients)))
    wall = time.monotonic() - t_count
    return {"records": records, "failures": failures, "seconds": wall}


async def run_load_httpx(
    base: str, ids: list[int], payloads: list[tuple[str, bytes]], mix: dict[str, float], clients: int,
    warmup: float, duration: float, headers: dict[str, str], k: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """The load with one httpx ``AsyncClient`` (one keep-alive connection) per client."""
    import httpx

    kinds, weights = list(mix), list(mix.values())
    records: list[tuple[str, float, bool]] = []  # kind, seconds, ok
    failures: dict[str, int] = {}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    t_start = time.monotonic()
    t_count = t_start + warmup
    t_end = t_count + duration

    async def client(n: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(seed * 1000 + n)
        while True:
            now = time.monotonic()
            if now >= t_end:
                return
            kind = rng.choices(kinds, weights)[0]
            t0 = time.perf_counter()
            ok = False
            try:
                if kind == "upload":
                    name, data = payloads[rng.randrange(len(payloads))]
                    r = await http.post("/api/search", files={"image": (name, data)}, data={"k": str(k)})
                elif kind == "id":
                    r = await http.get("/api/search", params={"id": rng.choice(ids), "k": k})
                else:
                    r = await http.get(f"/thumbs/{rng.choice(ids)}")
                await r.aread()
                ok = r.status_code == 200
                reason = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            seconds = time.perf_counter() - t0
            if now >= t_count:
                records.append((kind, seconds, ok))
                if not ok:
                    failures[f"{kind}: {reason}"] = failures.get(f"{kind}: {reason}", 0) + 1

    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)

    async def one_client(n: int) -> None:
        # a client of its own per task (one keep-alive connection each): one shared pool of 50
        # connections costs httpx several times more CPU per request than the server spends on it
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout, headers=headers) as http:
            await client(n, http)

    await asyncio.gather(*(one_client(n) for n in range(clients)))
    wall = time.monotonic() - t_count
    return {"records": records, "failures": failures, "seconds": wall}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarise(records: list[tuple[str, float, bool]], seconds: float) -> dict[str, Any]:
    out = {}
    for kind in (*KINDS, "all"):
        rows = [r for r in records if kind == "all" or r[0] == kind]
        if not rows:
            continue
        ms = [r[1] * 1000 for r in rows]
        out[kind] = {
            "requests": len(rows),
            "per_second": round(len(rows) / seconds, 1),
            "p50_ms": round(percentile(ms, 50), 2),
            "p95_ms": round(percentile(ms, 95), 2),
            "p99_ms": round(percentile(ms, 99), 2),
            "max_ms": round(max(ms), 2),
            "mean_ms": round(statistics.fmean(ms), 2),
            "errors": sum(1 for r in rows if not r[2]),
        }
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by a process (Linux ``/proc``), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float | None:
    """Non-idle CPU seconds of the whole machine so far (``/proc/stat``), or None elsewhere."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def server_batches(base: str, headers: dict[str, str]) -> dict[str, float] | None:
    import httpx

    try:
        text = httpx.get(base + "/metrics", headers=headers, timeout=10).text
    except httpx.HTTPError:
        return None
    total = re.search(r"^lookalike_search_batch_size_sum (\S+)$", text, re.M)
    count = re.search(r"^lookalike_search_batch_size_count (\S+)$", text, re.M)
    if not total or not count or float(count.group(1)) == 0:
        return None
    return {"batches": float(count.group(1)), "mean_batch": round(float(total.group(1)) / float(count.group(1)), 2)}


def machine_info() -> dict[str, Any]:
    import httpx

    import lookalike

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = None
    versions = {}
    for dist in ("fastapi", "uvicorn", "starlette", "httpx", "torch", "numpy", "pillow"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:  # noqa: BLE001
            versions[dist] = None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "lookalike_version": lookalike.__version__,
        "httpx_version": httpx.__version__,
        "versions": versions,
        "git_commit": commit,
        "loadavg_at_start": list(os.getloadavg()),
    }


def cpu_report(before: tuple, after: tuple, requests: float) -> dict[str, Any] | None:
    """CPU used during the run by the server, by this load generator, and by everything else."""
    if any(v is None for v in (*before, *after)) or requests <= 0:
        return None
    wall = after[3] - before[3]
    server, client, busy = after[0] - before[0], after[1] - before[1], after[2] - before[2]
    return {
        "wall_s": round(wall, 2),
        "server_cores": round(server / wall, 2),
        "client_cores": round(client / wall, 2),
        "other_cores": round(max(0.0, busy - server - client) / wall, 2),
        "server_cpu_ms_per_request": round(server * 1000 / requests, 2),
        "client_cpu_ms_per_request": round(client * 1000 / requests, 2),
    }


def print_report(result: dict[str, Any]) -> None:
    cfg = result["config"]
    print()
    print(f"{cfg['clients']} clients ({cfg.get('client', 'httpx')}) for {cfg['duration_s']:g} s (after "
          f"{cfg['warmup_s']:g} s warm-up) against {cfg['index_images']:,} images; mix {cfg['mix']}")  # fmt: skip
    head = f"{'kind':<8}{'requests':>10}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}"
    print(head)
    print("-" * len(head))
    for kind, s in result["summary"].items():
        print(f"{kind:<8}{s['requests']:>10,}{s['per_second']:>9.1f}{s['p50_ms']:>9.1f}{s['p95_ms']:>9.1f}"
              f"{s['p99_ms']:>9.1f}{s['max_ms']:>9.1f}{s['errors']:>8}")  # fmt: skip
    if result.get("failures"):
        print("failures:", ", ".join(f"{k} x{v}" for k, v in result["failures"].items()))
    if result.get("server"):
        print(f"server: {result['server']['batches']:,.0f} search batches, mean size {result['server']['mean_batch']}")
    cpu = result.get("cpu")
    if cpu:
        print(f"cpu: server {cpu['server_cores']} cores ({cpu['server_cpu_ms_per_request']} ms a request), "
              f"load generator {cpu['client_cores']} cores ({cpu['client_cpu_ms_per_request']} ms a request), "
              f"other processes {cpu['other_cores']} cores")  # fmt: skip
    total = result["summary"].get("all", {})
    met = result["goal_met"]
    print(f"goal (0 errors, p99 < {GOAL_P99_MS:.0f} ms): {'met' if met else 'NOT met'} "
          f"({total.get('errors', '?')} errors, p99 {total.get('p99_ms', float('nan')):.1f} ms)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--index", type=Path, help="serve this existing index")
    src.add_argument("--cifar", action="store_true", help="index the CIFAR-10 train JPEGs (50,000; see --limit)")
    src.add_argument("--images", type=int, default=2000, help="generated images to index (default 2,000)")
    ap.add_argument("--url", help="load a server that is already running (127.0.0.1 only; needs --index, its index)")
    ap.add_argument("--limit", type=int, help="with --cifar: index only this many (split evenly over classes)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the CIFAR-10 JPEG tarball")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where CIFAR-10 and its index are kept")
    ap.add_argument("--clients", type=int, default=50, help="concurrent clients")
    ap.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    ap.add_argument("--mix", default="upload=0.5,id=0.3,thumb=0.2", help="request kinds and their weights")
    ap.add_argument("-k", type=int, default=10, help="results per search")
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw",
                    help="load generator: raw asyncio HTTP/1.1 (lean, the default) or httpx")  # fmt: skip
    ap.add_argument("--token", help="start the server with this bearer token (and send it)")
    ap.add_argument("--server-pid", type=int, help="with --url: the server's process id, to report its CPU use")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    if not (1 <= args.clients <= 1000 and 0 < args.duration <= 600 and 0 <= args.warmup <= 60):
        raise SystemExit("error: need 1-1000 clients, a duration of at most 600 s and a warm-up of at most 60 s")
    mix = parse_mix(args.mix)
    if args.url is not None:
        from urllib.parse import urlsplit

        if args.index is None:
            raise SystemExit("error: --url needs --index (the index that server serves)")
        if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("error: --url must be a server on this machine (127.0.0.1, localhost or [::1])")

    with tempfile.TemporaryDirectory(prefix="lookalike-load-") as tmp:
        work = Path(tmp)
        index_dir = prepare_index(args, work)
        from lookalike.search import Index

        idx = Index.load(index_dir)
        ids = sorted(idx.entries)
        rng = random.Random(args.seed)
        payloads = [(p.name, p.read_bytes()) for p in (idx.path_of(i) for i in rng.sample(ids, min(64, len(ids))))]
        n_images = len(idx)
        del idx
        if args.url is not None:
            base = args.url.rstrip("/")
            proc = None
        else:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            proc = start_server(index_dir, port, work / "thumbs", args.token)
        try:
            t0 = time.perf_counter()
            wait_healthy(base, proc)
            print(f"server up in {time.perf_counter() - t0:.1f} s at {base}; "
                  f"load: {args.clients} clients, {args.warmup:g} + {args.duration:g} s", flush=True)  # fmt: skip
            headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
            info = machine_info()
            server_pid = proc.pid if proc is not None else args.server_pid
            cpu0 = (cpu_seconds(server_pid) if server_pid else None, cpu_seconds(os.getpid()), busy_cpu_seconds(),
                    time.monotonic())  # fmt: skip
            load = asyncio.run(run_load(base, ids, payloads, mix, args.clients, args.warmup, args.duration,
                                        headers, args.k, args.seed, args.client))  # fmt: skip
            cpu1 = (cpu_seconds(server_pid) if server_pid else None, cpu_seconds(os.getpid()), busy_cpu_seconds(),
                    time.monotonic())  # fmt: skip
            server = server_batches(base, headers)
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    summary = summarise(load["records"], load["seconds"])
    total = summary.get("all", {})
    result = {
        "machine": info,
        "config": {
            "clients": args.clients,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "mix": args.mix,
            "k": args.k,
            "client": args.client,
            "index_images": n_images,
            "index": "cifar10 train" if args.cifar else str(args.index) if args.index else f"{args.images} generated",
        },  # fmt: skip
        "summary": summary,
        "failures": load["failures"],
        "server": server,
        "cpu": cpu_report(cpu0, cpu1, len(load["records"]) * (args.duration + args.warmup) / args.duration),
        "goal_met": bool(total) and total["errors"] == 0 and total["p99_ms"] < GOAL_P99_MS,
    }
    print_report(result)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
