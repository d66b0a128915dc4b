"""The web server: every route and every error, through FastAPI's TestClient (the lifespan runs)."""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lookalike.errors import LookalikeError
from lookalike.server import ServerSettings, create_app

from .conftest import one_error_line, run_cli, tree_snapshot

TOKEN = "s3cret-token"


# ----------------------------------------------------------------------------------------- helpers
def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (40, 30), mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (size[1], size[0], channels) if channels else (size[1], size[0])
    im = Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8))  # RGB, RGBA or L from the shape
    if mode == "P":
        im = im.convert("P")
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def png_with_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with almost no data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def assert_one_line_error(response, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "\n" not in response.text.strip()
    body = response.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"]
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    return body["error"]


def upload(client: TestClient, data: bytes, name: str = "query.png", content_type: str = "image/png", **fields):
    form = {key: str(value) for key, value in fields.items()}
    return client.post("/api/search", files={"image": (name, data, content_type)}, data=form)


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def served(built_index_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A client of the app serving ``built_index_dir``; the index folder is byte-identical afterwards."""
    before = tree_snapshot(built_index_dir)
    cache = tmp_path_factory.mktemp("thumb-cache")
    app = create_app(built_index_dir, cache_dir=cache)
    with TestClient(app) as client:
        client.cache_dir = cache  # type: ignore[attr-defined]
        yield client
    assert tree_snapshot(built_index_dir) == before


@pytest.fixture(scope="module")
def index(built_index_dir: Path):
    from lookalike.search import Index

    return Index.load(built_index_dir)


# ------------------------------------------------------------------------------------- the basics
def test_import_is_lazy_and_settings_are_checked() -> None:
    import subprocess
    import sys

    code = "import sys, lookalike.server; print('fastapi' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
    with pytest.raises(LookalikeError, match="max-k"):
        ServerSettings(max_k=0)
    with pytest.raises(LookalikeError, match="token"):
        ServerSettings(token="  ")


def test_health_info_and_page(served: TestClient, index) -> None:
    r = served.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "images": 24}
    info = served.get("/api/info").json()
    assert info["images"] == 24 and info["labels"] == 2
    assert info["indexed_at"] == index.manifest["created"]
    assert info["model"]["fingerprint"] == index.model.fingerprint[:12]
    assert info["model"]["preset"] == index.model.preset
    assert index.model.architecture in info["extractor"] and f"{index.model.embedding_dim}-d" in info["extractor"]
    assert info["folder"] == index.root.name and str(index.root) not in json.dumps(info)
    page = served.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert 'src="/static/app.js"' in page.text and 'href="/static/style.css"' in page.text
    again = served.get("/", headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        r = served.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    # no external URLs anywhere in the page: it works offline
    for text in (page.text, served.get("/static/app.js").text, served.get("/static/style.css").text):
        assert not re.search(r"https?://", text), "the page must not reference other hosts"


def test_docs_and_schema(served: TestClient) -> None:
    docs = served.get("/docs")
    assert docs.status_code == 200
    # Swagger UI comes from the swagger-ui-bundle package, not a CDN: the page works offline.
    assert "cdn" not in docs.text.lower() and "/docs-assets/swagger-ui-bundle.js" in docs.text
    asset = served.get("/docs-assets/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.content) > 100_000
    schema = served.get("/openapi.json").json()
    assert {"get", "post"} <= set(schema["paths"]["/api/search"])
    for path in ("/api/images", "/api/images/{image_id}", "/thumbs/{image_id}", "/health", "/metrics", "/api/info"):
        assert path in schema["paths"], path
    assert "413" in schema["paths"]["/api/search"]["post"]["responses"]


# ------------------------------------------------------------------------------------------ search
def test_upload_search_matches_the_library(served: TestClient, index, class_folder: Path) -> None:
    query = class_folder / "warm" / "warm_03.png"
    r = upload(served, query.read_bytes(), k=5)
    assert r.status_code == 200, r.text
    body = r.json()
    expected = index.search(query, k=5)
    assert [h["id"] for h in body["hits"]] == [h.id for h in expected]
    assert np.allclose([h["score"] for h in body["hits"]], [h.score for h in expected], atol=1e-5)
    assert body["hits"][0]["path"] == "warm/warm_03.png" and body["hits"][0]["score"] > 0.999
    assert body["k"] == 5 and body["metric"] == "cosine" and body["notice"] is None
    assert body["query"] == {"kind": "upload", "format": "PNG", "width": 24, "height": 24,
                             "bytes": query.stat().st_size, "id": None, "path": None, "label": None,
                             "thumbnail": None}  # fmt: skip
    hit = body["hits"][0]
    assert hit["rank"] == 1 and hit["label"] == "warm"
    assert re.fullmatch(r"/thumbs/\d+\?v=[0-9a-f]{12}", hit["thumbnail"]) and hit["image"] == f"/api/images/{hit['id']}"
    assert all(not h["path"].startswith("/") for h in body["hits"])  # relative paths only


def test_upload_of_jpeg_and_odd_modes(served: TestClient, index, class_folder: Path) -> None:
    jpeg = class_folder / "cool" / "cool_00.jpg"
    r = upload(served, jpeg.read_bytes(), name="x.jpg", content_type="image/jpeg", k=3, metric="euclidean")
    assert r.status_code == 200, r.text
    expected = index.search(jpeg, k=3, metric="euclidean")
    assert [h["id"] for h in r.json()["hits"]] == [h.id for h in expected]
    scores = [h["score"] for h in r.json()["hits"]]
    assert scores == sorted(scores) and r.json()["score"].startswith("euclidean")
    for fmt, mode in (("PNG", "RGBA"), ("PNG", "P"), ("GIF", "P"), ("WEBP", "RGB"), ("BMP", "L"), ("TIFF", "RGB")):
        r = upload(served, image_bytes(fmt, mode=mode), name="q", content_type="application/octet-stream", k=2)
        assert r.status_code == 200, (fmt, mode, r.text)
        assert len(r.json()["hits"]) == 2


def test_search_by_id(served: TestClient, index) -> None:
    r = served.get("/api/search", params={"id": 5, "k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [h["id"] for h in body["hits"]] == [h.id for h in index.search(5, k=4)]
    assert body["hits"][0]["id"] == 5
    assert body["query"]["kind"] == "id" and body["query"]["id"] == 5
    assert body["query"]["path"] == index.entries[5].path
    body = served.get("/api/search", params={"id": 5, "k": 4, "exclude_self": "true"}).json()
    assert 5 not in [h["id"] for h in body["hits"]] and len(body["hits"]) == 4
    assert [h["id"] for h in body["hits"]] == [h.id for h in index.search(5, k=4, exclude_self=True)]


def test_k_is_clamped_with_a_notice(served: TestClient, built_index_dir: Path, tmp_path: Path) -> None:
    body = served.get("/api/search", params={"id": 0, "k": 1000}).json()
    assert body["k"] == 24 and len(body["hits"]) == 24 and "k clamped to 24" in body["notice"]
    body = served.get("/api/search", params={"id": 0, "k": 0}).json()
    assert body["k"] == 1 and len(body["hits"]) == 1 and "at least 1" in body["notice"]
    body = served.get("/api/search", params={"id": 0}).json()
    assert body["k"] == 12 and body["notice"] is None
    with TestClient(create_app(built_index_dir, cache_dir=tmp_path, max_k=3, warm_up=False)) as small:
        body = upload(small, image_bytes(), k=50).json()
        assert body["k"] == 3 and len(body["hits"]) == 3 and "the most this server returns is 3" in body["notice"]
        assert small.get("/api/info").json()["max_k"] == 3


def test_concurrent_searches_are_batched_and_correct(served: TestClient, index) -> None:
    expected = {i: [h.id for h in index.search(i, k=3, exclude_self=True)] for i in range(24)}

    def one(i: int) -> list[int]:
        r = served.get("/api/search", params={"id": i, "k": 3, "exclude_self": "1"})
        assert r.status_code == 200, r.text
        return [h["id"] for h in r.json()["hits"]]

    with ThreadPoolExecutor(8) as pool:
        got = dict(zip(range(24), pool.map(one, range(24))))
    assert got == expected
    metrics = served.get("/metrics").text
    assert re.search(r"^lookalike_search_batch_size_count \d+$", metrics, re.M)


def test_search_json_is_what_jsonresponse_writes(served: TestClient, index, monkeypatch: pytest.MonkeyPatch) -> None:
    """The search JSON is written by hand (hits are most of the bytes): byte for byte what FastAPI's
    JSONResponse would write for the same content, for awkward paths and labels too."""
    import dataclasses

    from lookalike.catalog import Entries
    from lookalike.search import Hit
    from lookalike.server.app import json_text

    for r in (served.get("/api/search", params={"id": 3, "k": 5}), upload(served, image_bytes(), k=4)):
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert r.content == json_text(r.json()).encode("utf-8")
    state = served.app.state.lookalike  # type: ignore[attr-defined]
    odd = {'a "quoted"\\back/slash\n.png': 'é "x"\u2028', "plain.png": None}
    rows = {e.id: e for e in index.entries.rows()}
    rows.update(
        {i: dataclasses.replace(rows[i], path=path, label=label) for i, (path, label) in enumerate(odd.items())}
    )
    monkeypatch.setattr(state.index, "entries", Entries.of(rows.values()))
    for i, (path, label) in enumerate(odd.items()):
        for score in (0.123456789, -1.0, 1e-30, 2.5):
            hit = Hit(i + 1, i, Path("/x"), score, label)
            assert state.hit_json(hit) == json_text(state.hit_out(hit))
            assert json.loads(state.hit_json(hit))["path"] == path
    with pytest.raises(ValueError):  # not JSON, as before
        state.hit_json(Hit(1, 0, Path("/x"), float("nan"), None))


def test_engine_uses_its_thread_count_and_restores_the_process_settings(index) -> None:
    import asyncio

    import torch
    from threadpoolctl import threadpool_info

    from lookalike.server.engine import SearchEngine, default_threads

    def blas_threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    seen: list[tuple[int, list[int]]] = []
    real = index.search_batch

    def spy(*args, **kwargs):
        seen.append((torch.get_num_threads(), blas_threads()))
        return real(*args, **kwargs)

    async def run(engine: SearchEngine) -> list:
        await engine.start(warm_up=False)
        try:
            return await asyncio.gather(engine.search(1, 3), engine.search(2, 3, exclude_self=True))
        finally:
            await engine.stop()

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    blas_before = blas_threads()
    try:
        index.search_batch = spy
        got = asyncio.run(run(SearchEngine(index, threads=1)))
    finally:
        del index.search_batch
        after = torch.get_num_threads(), blas_threads()
        torch.set_num_threads(before)
    assert [[h.id for h in hits] for hits in got] == [
        [h.id for h in index.search(1, k=3)],
        [h.id for h in index.search(2, k=3, exclude_self=True)],
    ]
    assert seen and all(s == (1, [1] * len(blas_before)) for s in seen)
    assert after == (2, blas_before)  # torch's and BLAS's settings restored
    assert default_threads() >= 1


def test_start_up_objects_are_frozen_while_serving(built_index_dir: Path, tmp_path: Path) -> None:
    import gc

    before = gc.get_freeze_count()  # another server of this module may be running (then it froze its own)
    with TestClient(create_app(built_index_dir, cache_dir=tmp_path, warm_up=False)) as client:
        assert client.get("/api/search", params={"id": 1, "k": 2}).status_code == 200
        assert gc.get_freeze_count() > before  # the index, model and libraries are out of the collector's sight
        state = client.app.state.lookalike  # type: ignore[attr-defined]
        assert gc.is_tracked(state.index.entries) and not any(o is state.index.entries for o in gc.get_objects())
    # given back when the last server stops
    assert gc.get_freeze_count() == 0 if before == 0 else gc.get_freeze_count() > 0


@pytest.mark.parametrize(("cores", "threads"), [({0}, 1), ({0, 1}, 1), (set(range(8)), 7)])
def test_default_threads_leave_a_core_to_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, cores: set[int], threads: int
) -> None:
    import os

    from lookalike.server.engine import default_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cores, raising=False)
    assert default_threads() == threads


# ------------------------------------------------------------------------------------- bad input
def test_upload_errors(served: TestClient, class_folder: Path) -> None:
    assert_one_line_error(
        upload(served, b"hello, not a picture", name="a.txt", content_type="text/plain"), 415, "not an image"
    )
    assert_one_line_error(upload(served, image_bytes("PPM"), name="a.ppm"), 415, "unsupported image type PPM")
    assert_one_line_error(upload(served, b""), 400, "empty upload")
    png = (class_folder / "warm" / "warm_01.png").read_bytes()
    assert_one_line_error(upload(served, png[: len(png) // 2]), 400, "truncated or corrupt PNG")
    jpeg = image_bytes("JPEG", size=(64, 64))
    assert_one_line_error(upload(served, jpeg[: len(jpeg) * 2 // 3], content_type="image/jpeg"), 400, "truncated")
    assert_one_line_error(upload(served, png_with_header_only(100_000, 100_000)), 400, "refused", "pixels")
    assert_one_line_error(upload(served, png_with_header_only(9_000, 9_000)), 400, "refused", "81,000,000")
    r = served.post("/api/search", data={"k": "3"})
    assert_one_line_error(r, 400, "image", "missing")
    assert_one_line_error(upload(served, png, metric="hamming"), 400, "metric must be cosine or euclidean")
    assert_one_line_error(upload(served, png, k="many"), 400, "k:")
    assert_one_line_error(served.get("/api/search", params={"id": "abc"}), 400, "id:")
    assert_one_line_error(served.get("/api/search"), 400, "id: missing")


def test_upload_size_cap(built_index_dir: Path, tmp_path: Path) -> None:
    app = create_app(built_index_dir, cache_dir=tmp_path, max_upload_bytes=4096, warm_up=False)
    big = image_bytes("BMP", size=(64, 64))  # about 12 KiB
    small = image_bytes("PNG", size=(8, 8))
    with TestClient(app) as client:
        assert upload(client, small).status_code == 200
        # just over the cap: the whole body fits the multipart allowance, the file itself does not
        assert_one_line_error(upload(client, big, name="a.bmp"), 413, "upload too large", "4 KiB")
        # a body far over the cap, announced by Content-Length: refused before it is read
        huge = b"\0" * (200 * 1024)
        assert_one_line_error(upload(client, huge, name="a.bin"), 413, "upload too large")
        # the same without Content-Length (chunked): refused while it is read
        boundary = "lookalike-test-boundary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.bin"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + huge
            + f"\r\n--{boundary}--\r\n".encode()
        )
        r = client.post(
            "/api/search",
            content=iter([body[:1000], body[1000:]]),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert_one_line_error(r, 413, "upload too large")
        assert client.get("/health").status_code == 200  # and the server goes on


def test_small_pixel_limit(built_index_dir: Path, tmp_path: Path) -> None:
    with TestClient(create_app(built_index_dir, cache_dir=tmp_path, max_pixels=100, warm_up=False)) as client:
        assert_one_line_error(upload(client, image_bytes(size=(20, 20))), 400, "refused", "20x20")
        assert upload(client, image_bytes(size=(10, 10))).status_code == 200


TRAVERSALS = [
    "/api/images/..%2F..%2Fetc%2Fpasswd",
    "/api/images/%2e%2e%2fmanifest.json",
    "/thumbs/..%2Fmanifest.json",
    "/thumbs/..%5C..%5Cmanifest.json",
    "/api/images/0%00.png",
    "/static/..%2F__init__.py",
    "/static/%2e%2e/app.py",
    "/api/search?id=..%2F..%2Fetc%2Fpasswd",
    "/api/search?id=0&metric=..%2F..%2Fetc%2Fpasswd",
    "/api/images?page=..%2F2",
    "/thumbs/0?v=../../catalog.sqlite",
    "/api/info?x=%2Fetc%2Fpasswd",
    "/api/images/-1",
    "/api/images/1e3",
    "/api/images/manifest.json",
    "/thumbs/99999",
    "/nothing/here",
]


@pytest.mark.parametrize("url", TRAVERSALS)
def test_paths_in_parameters_get_404_and_reveal_nothing(served: TestClient, built_index_dir: Path, url: str) -> None:
    r = served.get(url)
    assert r.status_code == 404, (url, r.status_code, r.text)
    assert r.json() == {"error": "not found"}
    assert str(built_index_dir) not in r.text


def test_paths_in_form_fields_get_404(served: TestClient) -> None:
    r = upload(served, image_bytes(), metric="../../etc/passwd")
    assert r.status_code == 404 and r.json() == {"error": "not found"}
    r = upload(served, image_bytes(), k="../../etc/passwd")
    assert r.status_code == 404 and r.json() == {"error": "not found"}


def test_unknown_ids_and_methods(served: TestClient) -> None:
    assert_one_line_error(served.get("/api/search", params={"id": 999}), 404, "not found")
    assert_one_line_error(served.get("/api/search", params={"id": -3}), 404, "not found")
    assert_one_line_error(served.delete("/api/search"), 405, "method not allowed")


# ------------------------------------------------------------------------------ images and thumbs
def test_original_files_and_thumbnails(served: TestClient, index) -> None:
    r = served.get("/api/images/3")
    assert r.status_code == 200 and r.content == index.path_of(3).read_bytes()
    assert r.headers["content-type"] in ("image/png", "image/jpeg")
    url = served.get("/api/search", params={"id": 3, "k": 1}).json()["hits"][0]["thumbnail"]
    r = served.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"  # 24 px images: PNG thumbnails
    assert "immutable" in r.headers["cache-control"]
    thumb = Image.open(io.BytesIO(r.content))
    assert thumb.size == (24, 24)  # never enlarged
    etag = r.headers["etag"]
    again = served.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert "no-cache" in served.get("/thumbs/3").headers["cache-control"]  # without ?v= revalidate
    cached = list(served.cache_dir.iterdir())  # type: ignore[attr-defined]
    assert any(p.name.startswith("3-") for p in cached)
    assert served.get("/thumbs/3").content == r.content  # from the cache


def test_big_images_get_jpeg_thumbnails(trained_model_dir: Path, tmp_path: Path) -> None:
    from lookalike.search import Index

    folder = tmp_path / "images"
    (folder / "a").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(folder / "a" / f"{i}.jpg")
    Index.build(folder, trained_model_dir, tmp_path / "index", num_workers=0)
    with TestClient(create_app(tmp_path / "index", cache_dir=tmp_path / "cache", warm_up=False)) as client:
        r = client.get("/thumbs/1")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(r.content)).size == (160, 120)
        # an indexed file that disappeared: 404, and the answer names no path
        (folder / "a" / "2.jpg").unlink()
        for url in ("/thumbs/2", "/api/images/2"):
            r = client.get(url)
            assert r.status_code == 404 and r.json() == {"error": "not found"}


def test_browse_pages(served: TestClient) -> None:
    body = served.get("/api/images", params={"page": 2, "per_page": 10}).json()
    assert body["page"] == 2 and body["pages"] == 3 and body["total"] == 24 and body["per_page"] == 10
    assert [im["id"] for im in body["images"]] == list(range(10, 20))
    assert body["images"][0]["thumbnail"].startswith("/thumbs/10?v=")
    body = served.get("/api/images", params={"page": 9, "per_page": 10}).json()
    assert body["page"] == 3 and len(body["images"]) == 4 and "out of range" in body["notice"]
    body = served.get("/api/images", params={"per_page": 10_000}).json()
    assert body["per_page"] == 200 and len(body["images"]) == 24


# ------------------------------------------------------------------------------ token and metrics
def test_bearer_token(built_index_dir: Path, tmp_path: Path) -> None:
    with TestClient(create_app(built_index_dir, cache_dir=tmp_path, token=TOKEN, warm_up=False)) as client:
        assert client.get("/health").status_code == 200
        for url in ("/", "/api/info", "/api/search?id=0", "/api/images", "/api/images/0", "/thumbs/0", "/metrics",
                    "/docs", "/openapi.json", "/static/app.js"):  # fmt: skip
            r = client.get(url)
            assert_one_line_error(r, 401, "token")
            assert r.headers["www-authenticate"] == "Bearer"
        assert_one_line_error(upload(client, image_bytes()), 401, "token")
        wrong = {"Authorization": "Bearer nope"}
        assert client.get("/api/info", headers=wrong).status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/api/info", headers=good).json()["token_required"] is True
        assert upload(client, image_bytes(), k=2).status_code == 401
        r = client.post("/api/search", files={"image": ("q.png", image_bytes())}, data={"k": "2"}, headers=good)
        assert r.status_code == 200 and len(r.json()["hits"]) == 2
        # a browser opens /?token=...: the token moves into a same-site cookie, then the page works
        r = client.get(f"/?token={TOKEN}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
        assert client.get("/").status_code == 200
        assert client.get("/thumbs/0").status_code == 200
        assert "private" in client.get("/thumbs/0").headers["cache-control"]
        client.cookies.clear()
        assert client.get("/").status_code == 401
        assert client.get("/?token=wrong").status_code == 401


def test_metrics_text(served: TestClient) -> None:
    served.get("/health")
    served.get("/api/search", params={"id": 1, "k": 2})
    served.get("/api/images/99999")
    r = served.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = r.text
    assert text.endswith("\n")
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*",?)*\})? -?[0-9.e+Inf-]+$')
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$", line), line
        else:
            assert sample.match(line), line
    assert 'lookalike_http_requests_total{method="GET",route="/health",status="200"}' in text
    assert 'lookalike_http_requests_total{method="GET",route="/api/images/{image_id}",status="404"}' in text
    assert "lookalike_index_images 24" in text
    assert re.search(r'^lookalike_searches_total\{kind="id"\} \d+$', text, re.M)
    # the histogram of /api/search: cumulative buckets ending in +Inf == count
    buckets = [
        int(v)
        for v in re.findall(
            r'^lookalike_http_request_duration_seconds_bucket\{route="/api/search",le="[^"]+"\} (\d+)$', text, re.M
        )
    ]
    count = int(re.search(r'^lookalike_http_request_duration_seconds_count\{route="/api/search"\} (\d+)$', text,
                          re.M).group(1))  # fmt: skip
    assert buckets == sorted(buckets) and buckets[-1] == count > 0
    assert '_bucket{route="/api/search",le="+Inf"}' in text


# --------------------------------------------------------------------------- the index folder
def test_never_writes_into_the_index_dir(built_index_dir: Path, tmp_path: Path) -> None:
    """Even when told to cache thumbnails inside the index folder, the server writes elsewhere."""
    before = tree_snapshot(built_index_dir)
    app = create_app(built_index_dir, cache_dir=built_index_dir / "thumbs", warm_up=False)
    with TestClient(app) as client:
        for i in range(24):
            assert client.get(f"/thumbs/{i}").status_code == 200
        assert upload(client, image_bytes()).status_code == 200
        assert client.get("/metrics").status_code == 200
        used = client.app.state.lookalike.thumbs.directory  # type: ignore[attr-defined]
    assert tree_snapshot(built_index_dir) == before
    assert not str(used.resolve()).startswith(str(built_index_dir.resolve()))
    shutil.rmtree(used, ignore_errors=True)
    # an unwritable cache folder (a file is in the way): a temporary folder is used instead
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    with TestClient(create_app(built_index_dir, cache_dir=blocker / "sub", warm_up=False)) as client:
        assert client.get("/thumbs/0").status_code == 200
        thumbs = client.app.state.lookalike.thumbs  # type: ignore[attr-defined]
        assert thumbs.directory != blocker / "sub" and thumbs.directory.is_dir()
        shutil.rmtree(thumbs.directory, ignore_errors=True)


def test_served_copy_of_an_index_is_unchanged(built_index_dir: Path, tmp_path: Path) -> None:
    """A read-only index folder (as a shared mount would be) serves fine."""
    copy = tmp_path / "ro-index"
    shutil.copytree(built_index_dir, copy)
    for p in [copy, *copy.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        before = tree_snapshot(copy)
        with TestClient(create_app(copy, cache_dir=tmp_path / "cache", warm_up=False)) as client:
            assert client.get("/api/search", params={"id": 2, "k": 3}).status_code == 200
            assert upload(client, image_bytes()).status_code == 200
        assert tree_snapshot(copy) == before
    finally:
        for p in [copy, *copy.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


# ------------------------------------------------------------------------------------------- CLI
def test_cli_serve_wires_the_options(built_index_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    seen = {}

    def fake_run(self, sockets=None):  # noqa: ANN001 - uvicorn.Server.run's signature
        seen["port"] = sockets[0].getsockname()[1]
        with TestClient(self.config.app) as client:
            seen["info"] = client.get("/api/info", headers={"Authorization": f"Bearer {TOKEN}"}).json()
            seen["no_token"] = client.get("/api/info").status_code

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    monkeypatch.setenv("LOOKALIKE_TOKEN", TOKEN)
    result = run_cli("serve", built_index_dir, "--port", "0", "--max-k", "7", "--max-upload-mb", "2",
                     "--cache-dir", tmp_path / "cache")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"at http://127.0.0.1:{seen['port']}/" in result.output and "serving 24 images" in result.output
    assert seen["info"]["max_k"] == 7 and seen["info"]["max_upload_bytes"] == 2 * 1024 * 1024
    assert seen["no_token"] == 401


def test_cli_serve_errors(built_index_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    assert "not a lookalike index" in one_error_line(run_cli("serve", tmp_path))
    assert "--max-k" in one_error_line(run_cli("serve", built_index_dir, "--max-k", "0"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert "cannot listen" in one_error_line(run_cli("serve", built_index_dir, "--port", str(port)))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    line = one_error_line(run_cli("serve", built_index_dir))
    assert "fastapi" in line and 'pip install "lookalike[serve]"' in line
