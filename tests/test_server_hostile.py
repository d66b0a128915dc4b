"""The server against hostile or careless clients and a changing index folder (issue 13): files swapped
under the index, expensive uploads, slow clients, HEAD probes, and `lookalike index` run while serving."""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lookalike.server import create_app

from .conftest import make_class_images


def png(size: tuple[int, int] = (20, 20), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def upload(client: TestClient, data: bytes, **fields):
    return client.post("/api/search", files={"image": ("q.png", data, "image/png")},
                       data={k: str(v) for k, v in fields.items()})  # fmt: skip


def assert_one_line_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and "\n" not in response.text.strip()
    return body["error"]


def wait_for(predicate, timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.fixture
def own_index(trained_model_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private folder of 8 images and its index (tests here change both)."""
    from lookalike.search import Index

    folder = tmp_path / "images"
    make_class_images(folder, per_class=4, seed=3)
    Index.build(folder, trained_model_dir, tmp_path / "index", num_workers=0)
    return folder, tmp_path / "index"


@pytest.fixture
def own_client(own_index: tuple[Path, Path], tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(own_index[1], cache_dir=tmp_path / "cache", warm_up=False, reload_interval=0)
    with TestClient(app) as client:
        yield client


# ------------------------------------------------------------------------------- files by id only
def _path_of(client: TestClient, id_: int) -> Path:
    return client.app.state.lookalike.index.path_of(id_)  # type: ignore[attr-defined]


def test_original_file_is_served_from_the_checked_file(own_client: TestClient) -> None:
    path = _path_of(own_client, 1)
    r = own_client.get("/api/images/1")
    assert r.status_code == 200 and r.content == path.read_bytes()
    assert r.headers["content-length"] == str(path.stat().st_size)
    assert r.headers["content-type"] == ("image/png" if path.suffix == ".png" else "image/jpeg")
    assert r.headers["cache-control"] == "public, max-age=3600"
    assert own_client.get("/thumbs/1").status_code == 200


@pytest.mark.parametrize("route", ["/api/images", "/thumbs"])
def test_a_symlink_to_a_file_outside_the_root_is_not_served(own_client: TestClient, tmp_path: Path, route: str) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    for id_ in (2, 3):  # a link to a text file, and to a real image outside the root
        path = _path_of(own_client, id_)
        target = secret if id_ == 2 else tmp_path / ("outside" + path.suffix)
        if id_ == 3:
            shutil.copy2(path, target)
        path.unlink()
        path.symlink_to(target)
        r = own_client.get(f"{route}/{id_}")
        assert r.status_code == 404 and r.json() == {"error": "not found"}
        assert b"root:" not in r.content


@pytest.mark.parametrize("route", ["/api/images", "/thumbs"])
def test_a_file_with_other_content_is_not_served(own_client: TestClient, route: str) -> None:
    path = _path_of(own_client, 4)
    st = path.stat()
    path.write_bytes(path.read_bytes() + b"more")  # another size
    assert own_client.get(f"{route}/4").status_code == 404
    path = _path_of(own_client, 5)
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))  # the same size, another mtime
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert own_client.get(f"{route}/5").status_code == 404
    assert own_client.get(f"{route}/6").status_code == 200  # the others are still served


@pytest.mark.parametrize("route", ["/api/images", "/thumbs"])
def test_a_fifo_swapped_in_is_404_and_does_not_hang(own_client: TestClient, route: str) -> None:
    path = _path_of(own_client, 7)
    path.unlink()
    os.mkfifo(path)
    with ThreadPoolExecutor(1) as pool:
        r = pool.submit(own_client.get, f"{route}/7").result(timeout=10)
    assert r.status_code == 404 and r.json() == {"error": "not found"}
    assert own_client.get("/health").status_code == 200


# ----------------------------------------------------------------------------------- admission
def test_limiter_slots_budget_and_wait() -> None:
    from lookalike.server.admission import Limiter

    async def scenario() -> None:
        slots = Limiter(2)
        a, b = await slots.acquire(), await slots.acquire()
        t0 = time.monotonic()
        assert await slots.acquire(wait=0.1) is None and time.monotonic() - t0 >= 0.09  # full: refused after the wait
        waiting = asyncio.create_task(slots.acquire(wait=5))
        await asyncio.sleep(0.05)
        slots.release(a)
        assert await asyncio.wait_for(waiting, 1) == 0  # woken by the release
        slots.release(b)
        slots.release(0)
        assert slots.active == 0 and slots.refused == 1

        memory = Limiter(4, budget=100)
        big = await memory.acquire(80)
        assert await memory.acquire(30, wait=0) is None  # 110 > 100
        small = await memory.acquire(20, wait=0)
        assert small == 20 and memory.used == 100
        memory.release(big)
        memory.release(small)
        huge = await memory.acquire(10_000)  # above the whole budget: charged as the budget, runs alone
        assert huge == 100 and await memory.acquire(1, wait=0) is None
        memory.release(huge)
        assert memory.used == 0 and memory.active == 0

    asyncio.run(scenario())


@pytest.fixture
def slow_decodes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Uploads that decode slowly (in a worker thread: they look big) and count how many decode at once."""
    from lookalike.server.routes import search as search_routes

    real = search_routes.decode_upload
    seen = {"now": 0, "most": 0}
    lock = threading.Lock()

    def slow(*args, **kwargs):
        with lock:
            seen["now"] += 1
            seen["most"] = max(seen["most"], seen["now"])
        try:
            time.sleep(0.8)
            return real(*args, **kwargs)
        finally:
            with lock:
                seen["now"] -= 1

    monkeypatch.setattr(search_routes, "decode_upload", slow)
    monkeypatch.setattr(search_routes, "decode_cost", lambda data, draft_size=None: 50 * 1024 * 1024)
    return seen


def test_uploads_beyond_the_limit_get_503_with_retry_after(
    built_index_dir: Path, tmp_path: Path, slow_decodes: dict[str, int]
) -> None:
    app = create_app(built_index_dir, cache_dir=tmp_path, warm_up=False, reload_interval=0,
                     max_uploads=2, max_decodes=2, admission_wait=0.2)  # fmt: skip
    with TestClient(app) as client, ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda i: upload(client, png(seed=i), k=2), range(5)))
        statuses = sorted(r.status_code for r in answers)
        assert statuses.count(200) >= 2 and statuses.count(503) >= 1, statuses
        assert set(statuses) <= {200, 503}
        for r in answers:
            if r.status_code == 503:
                assert "busy" in assert_one_line_error(r, 503)
                assert int(r.headers["retry-after"]) >= 1
        assert slow_decodes["most"] <= 2
        assert upload(client, png(), k=2).status_code == 200  # free again
        metrics = client.get("/metrics").text
        assert "lookalike_uploads_refused " in metrics and "lookalike_uploads_active 0" in metrics


def test_decodes_are_bounded_by_slots_and_memory(
    built_index_dir: Path, tmp_path: Path, slow_decodes: dict[str, int]
) -> None:
    # 50 MiB per decode (the patched estimate), a budget of 64 MiB: one at a time although 2 slots are free
    app = create_app(built_index_dir, cache_dir=tmp_path, warm_up=False, reload_interval=0, max_uploads=4,
                     max_decodes=2, decode_memory_bytes=64 * 1024 * 1024, admission_wait=2.0)  # fmt: skip
    with TestClient(app) as client, ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda i: upload(client, png(seed=i), k=2), range(3)))
        statuses = sorted(r.status_code for r in answers)
        assert slow_decodes["most"] == 1
        assert statuses.count(200) >= 2 and set(statuses) <= {200, 503}, statuses  # the third may wait too long


def test_health_and_id_searches_stay_fast_while_uploads_decode(
    built_index_dir: Path, tmp_path: Path, slow_decodes: dict[str, int]
) -> None:
    app = create_app(built_index_dir, cache_dir=tmp_path, warm_up=False, reload_interval=0,
                     max_uploads=2, max_decodes=1, admission_wait=1.0)  # fmt: skip
    with TestClient(app) as client, ThreadPoolExecutor(4) as pool:
        assert client.get("/health").status_code == 200
        busy = [pool.submit(upload, client, png(seed=i), k=2) for i in range(3)]
        assert wait_for(lambda: slow_decodes["now"] >= 1, timeout=5)
        for _ in range(5):
            t0 = time.perf_counter()
            assert client.get("/health").status_code == 200
            assert client.head("/health").status_code == 200
            assert client.get("/api/search", params={"id": 1, "k": 3}).status_code == 200
            assert time.perf_counter() - t0 < 0.5
        statuses = sorted(f.result(timeout=30).status_code for f in busy)
        assert statuses[0] == 200 and set(statuses) <= {200, 503}


# ------------------------------------------------------------------------------------------ HEAD
def test_head_on_get_routes(built_index_dir: Path, tmp_path: Path) -> None:
    app = create_app(built_index_dir, cache_dir=tmp_path, warm_up=False, reload_interval=0, token="t0ken")
    with TestClient(app) as client:
        get, head = client.get("/health"), client.head("/health")  # no token needed, as for GET
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))
        assert head.headers["content-type"] == "application/json"
        auth = {"Authorization": "Bearer t0ken"}
        for url in ("/api/info", "/api/images/0", "/thumbs/0", "/", "/metrics", "/api/search?id=1"):
            r = client.head(url, headers=auth)
            assert r.status_code == 200 and r.content == b"", url
        assert client.head("/api/info").status_code == 401
        assert client.head("/api/images/99999", headers=auth).status_code == 404
        metrics = client.get("/metrics", headers=auth).text
        assert 'lookalike_http_requests_total{method="HEAD",route="/health",status="200"}' in metrics
        schema = client.get("/openapi.json", headers=auth).json()
        assert "head" not in schema["paths"]["/health"]


# -------------------------------------------------------------------------------- slow clients
@pytest.fixture(scope="module")
def live_server(built_index_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    from lookalike.server.background import serve_in_background

    app = create_app(built_index_dir, cache_dir=tmp_path_factory.mktemp("cache"), warm_up=False, reload_interval=0,
                     header_timeout=0.6, body_timeout=1.0, keep_alive_timeout=3)  # fmt: skip
    with serve_in_background(app) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        yield host, int(port)


def _read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection; and how long that took."""
    sock.settimeout(timeout)
    t0 = time.monotonic()
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {timeout} s")
    except ConnectionResetError:
        pass
    return data, time.monotonic() - t0


def test_a_half_sent_request_head_is_cut_off(live_server: tuple[str, int]) -> None:
    with socket.create_connection(live_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        data, took = _read_until_closed(sock, timeout=5)
    assert took < 3 and data.startswith(b"HTTP/1.1 408"), data
    with socket.create_connection(live_server) as sock:  # nothing sent at all
        data, took = _read_until_closed(sock, timeout=5)
    assert took < 3 and data == b""


def test_a_head_trickled_byte_by_byte_is_cut_off(live_server: tuple[str, int]) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    with socket.create_connection(live_server) as sock:
        t0 = time.monotonic()
        try:
            for byte in head:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
                if time.monotonic() - t0 > 5:
                    pytest.fail("the server accepted a head trickled for 5 s")
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert time.monotonic() - t0 < 3


def test_a_trickled_body_gets_408(live_server: tuple[str, int]) -> None:
    boundary = "b0undary"
    with socket.create_connection(live_server) as sock:
        sock.sendall(
            b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
            + f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
            + f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'.encode()
        )
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < 5:
                sock.sendall(b"x")
                time.sleep(0.2)
                sock.settimeout(0.01)
                try:
                    if sock.recv(1, socket.MSG_PEEK):
                        break
                except TimeoutError:
                    pass
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, _ = _read_until_closed(sock, timeout=5)
        took = time.monotonic() - t0
    assert took < 4, took
    assert data.startswith(b"HTTP/1.1 408"), data
    assert b'{"error":"request body timeout' in data


def test_normal_clients_are_unaffected(live_server: tuple[str, int]) -> None:
    import http.client

    conn = http.client.HTTPConnection(*live_server, timeout=10)
    for pause in (0.0, 0.4, 0.4):  # keep-alive: idle less than the deadlines between requests
        time.sleep(pause)
        conn.request("GET", "/health")
        r = conn.getresponse()
        assert r.status == 200 and r.read()
    conn.request("HEAD", "/health")
    r = conn.getresponse()
    assert r.status == 200 and r.read() == b"" and int(r.getheader("content-length")) > 0
    body = png()
    boundary = "b0undary"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + body
        + f"\r\n--{boundary}--\r\n".encode()
    )
    conn.request("POST", "/api/search", body=form,
                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    r = conn.getresponse()
    assert r.status == 200 and b'"hits"' in r.read()
    conn.close()


def test_uvicorn_config_carries_the_deadlines(built_index_dir: Path) -> None:
    from lookalike.server.transport import DeadlineH11Protocol, uvicorn_config

    config = uvicorn_config(create_app(built_index_dir, header_timeout=3, body_timeout=7, keep_alive_timeout=2))
    assert issubclass(config.http, DeadlineH11Protocol)
    assert (config.http.header_timeout, config.http.body_timeout, config.timeout_keep_alive) == (3.0, 7.0, 2)


# ------------------------------------------------------------------------------------- reloading
def test_the_server_reloads_a_changed_index(own_index: tuple[Path, Path], tmp_path: Path) -> None:
    from lookalike.search import Index

    folder, index_dir = own_index
    app = create_app(index_dir, cache_dir=tmp_path / "cache", warm_up=False, reload_interval=0.1)
    with TestClient(app) as client:
        before = client.get("/api/info").json()
        assert before["images"] == 8 and before["loaded_at"].endswith("Z")
        gone = 3
        gone_path = client.app.state.lookalike.index.entries[gone].path  # type: ignore[attr-defined]
        assert client.get("/api/search", params={"id": gone}).status_code == 200
        time.sleep(1.1)  # loaded_at has a resolution of a second

        Index.load(index_dir).remove([folder / gone_path])  # another process would do the same
        assert wait_for(lambda: client.get("/health").json()["images"] == 7)
        assert client.get("/api/search", params={"id": gone}).status_code == 404
        for id_ in client.get("/api/images").json()["images"]:
            assert id_["id"] != gone
        for i in (0, 1, 2, 4):
            hits = client.get("/api/search", params={"id": i, "k": 7}).json()["hits"]
            assert gone not in [h["id"] for h in hits] and len(hits) == 7
        after = client.get("/api/info").json()
        assert after["loaded_at"] > before["loaded_at"] and after["images"] == 7
        assert client.get(f"/thumbs/{gone}").status_code == 404

        new = folder / "cool" / "new_one.png"
        Image.fromarray(np.random.default_rng(9).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(new)
        Index.load(index_dir).add([new])
        assert wait_for(lambda: client.get("/health").json()["images"] == 8)
        body = client.post("/api/search", files={"image": ("q.png", new.read_bytes(), "image/png")},
                           data={"k": "1"}).json()  # fmt: skip
        assert body["hits"][0]["path"] == "cool/new_one.png" and body["hits"][0]["score"] > 0.999
        assert client.get(f"/api/images/{body['hits'][0]['id']}").content == new.read_bytes()
        reloads = re.search(r"^lookalike_index_reloads (\S+)$", client.get("/metrics").text, re.M)
        assert reloads and float(reloads.group(1)) >= 2  # more when a reload caught a run between its commits


def test_requests_keep_the_index_they_began_with(own_index: tuple[Path, Path], tmp_path: Path) -> None:
    """A reload is one assignment: a request holding the old state finishes on it, new ones see the new."""
    from lookalike.search import Index

    folder, index_dir = own_index
    app = create_app(index_dir, cache_dir=tmp_path / "cache", warm_up=False, reload_interval=0)
    with TestClient(app) as client:
        state = client.app.state.lookalike  # type: ignore[attr-defined]
        old = state.current
        Index.load(index_dir).remove([folder / old.index.entries[0].path])
        assert client.portal.call(state.check_for_update) is False  # changed: wait one check for it to settle
        assert client.portal.call(state.check_for_update) is True
        assert state.current is not old and 0 not in state.current.index.entries and 0 in old.index.entries
        hits = client.portal.call(lambda: state.engine.search(0, 3, index=old.index))
        assert hits[0].id == 0  # the old index still answers the requests that hold it
        assert client.get("/api/search", params={"id": 0}).status_code == 404
        assert client.portal.call(state.check_for_update) is False  # nothing new


def test_a_failed_reload_keeps_the_old_index(own_index: tuple[Path, Path], tmp_path: Path) -> None:
    folder, index_dir = own_index
    app = create_app(index_dir, cache_dir=tmp_path / "cache", warm_up=False, reload_interval=0)
    with TestClient(app) as client:
        state = client.app.state.lookalike  # type: ignore[attr-defined]
        (index_dir / "catalog.sqlite").write_bytes(b"not a database")
        assert client.portal.call(state.check_for_update) is False
        assert client.portal.call(state.check_for_update) is False  # the reload failed, with a warning
        assert client.get("/health").json()["images"] == 8
        assert client.get("/api/search", params={"id": 1}).status_code == 200


def test_a_reload_waits_for_an_indexing_run_to_finish(own_index: tuple[Path, Path], tmp_path: Path) -> None:
    """Found by the soak: a reload between two commits of `lookalike index` served a partial index and
    logged "an indexing run was interrupted" although the run was going on. Now it waits for the run's end."""
    import json

    from lookalike.catalog import Catalog

    folder, index_dir = own_index
    app = create_app(index_dir, cache_dir=tmp_path / "cache", warm_up=False, reload_interval=0.1)
    manifest_path = index_dir / "manifest.json"
    with TestClient(app) as client:
        assert client.get("/health").json()["images"] == 8
        manifest = json.loads(manifest_path.read_text())
        manifest["complete"] = False  # what a run under way has written
        manifest_path.write_text(json.dumps(manifest))
        db = Catalog.open(index_dir / "catalog.sqlite", readonly=False)
        db.apply(delete_ids=[3])  # a commit of the run
        db.close()
        time.sleep(1.0)  # ten checks
        assert client.get("/health").json()["images"] == 8  # still the state from before the run
        manifest["complete"] = True
        manifest_path.write_text(json.dumps(manifest))
        assert wait_for(lambda: client.get("/health").json()["images"] == 7)
