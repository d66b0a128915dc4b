"""Tests for lookalike._download and the VGG16 weights files, offline: a real HTTP server on 127.0.0.1.

The served "vgg16-397923af.pth" is a small ``torch.save`` file, so its SHA-256 does not start with
``397923af``: the low-level functions take the expected prefix as a parameter, and the one test of
:func:`fetch_vgg16_weights` end to end swaps the module's prefix for the fake file's.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lookalike import _download
from lookalike._download import ChecksumError, DownloadError, download, file_digest
from lookalike._fs import current_umask
from lookalike.errors import LookalikeError
from lookalike.models import vgg
from lookalike.models.vgg import ensure_weights_file, fetch_vgg16_weights, load_weights_file

NAME = "vgg16-397923af.pth"


# --------------------------------------------------------------------------------------------------
# Files and a server
# --------------------------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


TINY_STATE = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1.5, -2.0])}
TINY = _torch_bytes(TINY_STATE)


@dataclass
class Server:
    """A ThreadingHTTPServer answering from ``files``; every GET path is recorded in ``requests``.

    ``/<name>`` serves ``files[name]``; ``/truncated/<name>`` announces 1,000 bytes more than it sends and
    closes; anything else is a 404.
    """

    files: dict[str, bytes]
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        files, requests = self.files, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                truncated = self.path.startswith("/truncated/")
                name = self.path.removeprefix("/truncated/" if truncated else "/")
                if name not in files:
                    self.send_error(404, "Not Found")
                    return
                body = files[name]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body) + (1000 if truncated else 0)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never touch the real cache, a real mirror or a proxy."""
    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.delenv(vgg.WEIGHTS_MIRROR_ENV, raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server({NAME: TINY, "wrong-checksum.pth": TINY + b"tampered"})
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def mirror(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    """The server, with $LOOKALIKE_WEIGHTS_MIRROR pointing at it."""
    monkeypatch.setenv(vgg.WEIGHTS_MIRROR_ENV, server.url)
    return server


def _closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def _assert_same_tensors(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# download()
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "digest",
    [
        {"sha256": _sha256(TINY)},
        {"sha256_prefix": _sha256(TINY)[:8]},
        {"sha256_prefix": _sha256(TINY)[:8].upper()},
        {"md5": hashlib.md5(TINY, usedforsecurity=False).hexdigest()},
        {"sha256": _sha256(TINY), "md5": hashlib.md5(TINY, usedforsecurity=False).hexdigest()},
        {},
    ],
)
def test_download_writes_the_verified_file(server: Server, tmp_path: Path, digest: dict[str, str]) -> None:
    dest = tmp_path / NAME
    calls: list[tuple[int, int | None]] = []
    result = download(server.url + NAME, dest, progress=lambda d, t: calls.append((d, t)), **digest)
    assert result == dest
    assert dest.read_bytes() == TINY
    assert _files_under(tmp_path) == [dest]  # no part file left behind
    assert calls[0] == (0, len(TINY)) and calls[-1] == (len(TINY), len(TINY))
    assert dest.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    assert server.requests == [f"/{NAME}"]
    _assert_same_tensors(load_weights_file(dest), TINY_STATE)


def test_download_replaces_an_existing_file(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / NAME
    dest.write_bytes(b"old")
    download(server.url + NAME, dest, sha256=_sha256(TINY))
    assert dest.read_bytes() == TINY
    assert _files_under(tmp_path) == [dest]


def test_download_from_a_file_url(tmp_path: Path) -> None:
    source = tmp_path / "mirror" / NAME
    source.parent.mkdir()
    source.write_bytes(TINY)
    dest = tmp_path / "out.pth"
    download(source.as_uri(), dest, sha256_prefix=_sha256(TINY)[:8])
    assert dest.read_bytes() == TINY


def test_checksum_mismatch_deletes_the_part_file(server: Server, tmp_path: Path) -> None:
    url = server.url + "wrong-checksum.pth"
    actual = _sha256(TINY + b"tampered")
    expected = _sha256(TINY)[:8]
    dest = tmp_path / NAME
    with pytest.raises(ChecksumError) as info:
        download(url, dest, sha256_prefix=expected)
    message = str(info.value)
    assert message == f"checksum mismatch for {url}: expected sha256 starting with {expected}, got {actual}; " + (
        "the download was deleted"
    )
    assert isinstance(info.value, LookalikeError) and not isinstance(info.value, DownloadError)
    assert (info.value.expected, info.value.actual, info.value.algorithm) == (expected, actual, "sha256")
    assert _files_under(tmp_path) == []


def test_checksum_mismatch_leaves_an_existing_file_untouched(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / NAME
    dest.write_bytes(b"previous")
    with pytest.raises(ChecksumError, match="expected md5 0{32}, got"):
        download(server.url + NAME, dest, md5="0" * 32)
    assert dest.read_bytes() == b"previous"
    assert _files_under(tmp_path) == [dest]


def test_http_404_is_a_one_line_error(server: Server, tmp_path: Path) -> None:
    url = server.url + "missing.pth"
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "missing.pth", sha256_prefix="00")
    assert str(info.value) == f"could not download {url}: HTTP 404 Not Found"
    assert info.value.url == url and info.value.reason == "HTTP 404 Not Found"
    assert _files_under(tmp_path) == []


def test_truncated_response_is_refused(server: Server, tmp_path: Path) -> None:
    url = server.url + "truncated/" + NAME
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / NAME)  # no digest: the length check alone catches it
    size = len(TINY)
    assert str(info.value) == f"could not download {url}: the connection closed after {size:,} of {size + 1000:,} bytes"
    assert _files_under(tmp_path) == []


def test_refused_connection_names_the_url(tmp_path: Path) -> None:
    url = _closed_port_url() + NAME
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / NAME, sha256_prefix="397923af", timeout=2)
    message = str(info.value)
    assert message.startswith(f"could not download {url}: ") and "refused" in message.lower()
    assert "\n" not in message
    assert _files_under(tmp_path) == []


def test_silent_server_times_out(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # the kernel accepts the connection; nobody ever answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/{NAME}"
        start = time.monotonic()
        with pytest.raises(DownloadError, match=r"timed out after 0\.3 s$"):
            download(url, tmp_path / NAME, timeout=0.3)
        assert time.monotonic() - start < 5
    assert _files_under(tmp_path) == []


def test_unwritable_destination_folder(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "no-such-folder" / NAME
    with pytest.raises(LookalikeError, match=f"cannot write to directory {dest.parent}: No such file or directory"):
        download(server.url + NAME, dest)
    assert server.requests == []


@pytest.mark.parametrize(
    "digest",
    [{"sha256": "abc"}, {"sha256_prefix": ""}, {"sha256_prefix": "xyz"}, {"md5": "0" * 31}, {"sha256": "g" * 64}],
)
def test_malformed_digests_are_programming_errors(tmp_path: Path, digest: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="hex digits"):
        download("http://127.0.0.1:9/x", tmp_path / "x", **digest)
    assert _files_under(tmp_path) == []


def test_file_digest(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(3 * _download.CHUNK // 2)
    path.write_bytes(data)
    assert file_digest(path) == _sha256(data)
    assert file_digest(path, "md5") == hashlib.md5(data, usedforsecurity=False).hexdigest()


# --------------------------------------------------------------------------------------------------
# The weights cache
# --------------------------------------------------------------------------------------------------


def _ensure(cache: Path, **kwargs: object) -> Path:
    return ensure_weights_file(
        NAME, _sha256(TINY)[:8], base_url="http://192.0.2.1/never-used/", cache_dir=cache, timeout=5, **kwargs
    )


def test_weights_downloaded_into_the_cache(mirror: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = _ensure(cache)
    assert path == cache / "weights" / NAME
    assert _files_under(cache) == [path]
    assert mirror.requests == [f"/{NAME}"]
    _assert_same_tensors(load_weights_file(path), TINY_STATE)


def test_cached_weights_are_used_without_a_request(mirror: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _ensure(cache)
    mirror.stop()
    again = _ensure(cache, download=False)
    assert again == cache / "weights" / NAME
    assert _ensure(cache) == again  # download allowed but not needed
    assert mirror.requests == [f"/{NAME}"]


def test_corrupted_cache_is_downloaded_again(mirror: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cached = cache / "weights" / NAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(TINY[:-10])
    with pytest.raises(LookalikeError) as info:
        _ensure(cache, download=False)
    message = str(info.value)
    assert f"cached file {cached} is damaged" in message and "downloading is off" in message and "\n" not in message
    assert mirror.requests == []

    assert _ensure(cache) == cached
    assert cached.read_bytes() == TINY
    assert mirror.requests == [f"/{NAME}"]


def test_not_cached_and_download_off_is_one_clear_line(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(LookalikeError) as info:
        fetch_vgg16_weights(download=False, cache_dir=cache)
    message = str(info.value)
    assert message == (
        f"no VGG16 ImageNet weights in the cache: put {NAME} (published at "
        f"https://download.pytorch.org/models/{NAME}) in {cache / 'weights'}, pass a weights file, "
        "or allow downloading"
    )
    assert _files_under(cache) == []


def test_default_cache_is_lookalike_cache(mirror: Server, tmp_path: Path) -> None:
    path = ensure_weights_file(NAME, _sha256(TINY)[:8], base_url="http://192.0.2.1/")
    assert path == tmp_path / "default-cache" / "weights" / NAME


def test_wrong_checksum_download_leaves_no_cache_file(mirror: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError) as info:
        ensure_weights_file(
            "wrong-checksum.pth", _sha256(TINY)[:8], base_url="http://192.0.2.1/", cache_dir=cache, timeout=5
        )
    assert f"{mirror.url}wrong-checksum.pth" in str(info.value)
    assert _files_under(cache) == []


def test_published_prefix_is_checked(mirror: Server, tmp_path: Path) -> None:
    """The real constants: a file that is not torchvision's is refused, naming 397923af."""
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError) as info:
        fetch_vgg16_weights(cache_dir=cache, timeout=5)
    message = str(info.value)
    assert f"checksum mismatch for {mirror.url}{NAME}: expected sha256 starting with 397923af" in message
    assert _sha256(TINY) in message
    assert _files_under(cache) == []


def test_refused_weights_download_names_the_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = _closed_port_url() + "models"
    monkeypatch.setenv(vgg.WEIGHTS_MIRROR_ENV, base)
    with pytest.raises(DownloadError, match=f"^could not download {base}/{NAME}: "):
        fetch_vgg16_weights(cache_dir=tmp_path / "cache", timeout=2)
    assert _files_under(tmp_path / "cache") == []


# --------------------------------------------------------------------------------------------------
# fetch_vgg16_weights end to end, and reading weights files
# --------------------------------------------------------------------------------------------------


def _meta_vgg16_bytes() -> bytes:
    """A full torchvision vgg16 state dict on the meta device: the real keys and shapes in a few KB."""
    shapes = vgg.vgg16_fc1_shapes()
    shapes.update({"classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,)})
    shapes.update({"classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,)})
    return _torch_bytes({key: torch.empty(shape, device="meta") for key, shape in shapes.items()})


def test_fetch_vgg16_weights_downloads_checks_and_filters(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _meta_vgg16_bytes()
    server.files[NAME] = data
    monkeypatch.setattr(vgg, "VGG16_WEIGHTS_SHA256_PREFIX", _sha256(data)[:8])
    monkeypatch.setenv(vgg.WEIGHTS_MIRROR_ENV, server.url)
    cache = tmp_path / "cache"
    calls: list[tuple[int, int | None]] = []

    state = fetch_vgg16_weights(cache_dir=cache, timeout=5, progress=lambda d, t: calls.append((d, t)))
    assert list(state) == list(vgg.VGG16_FC1_KEYS)
    assert {k: tuple(v.shape) for k, v in state.items()} == vgg.vgg16_fc1_shapes()
    assert calls[-1] == (len(data), len(data))
    assert (cache / "weights" / NAME).read_bytes() == data

    again = fetch_vgg16_weights(cache_dir=cache, download=False)
    assert list(again) == list(state)
    assert server.requests == [f"/{NAME}"]


def test_explicit_file_wins_over_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "my-vgg16.pth"
    path.write_bytes(_meta_vgg16_bytes())
    state = fetch_vgg16_weights(path, download=False, cache_dir=tmp_path / "empty-cache")
    assert list(state) == list(vgg.VGG16_FC1_KEYS)
    assert _files_under(tmp_path / "empty-cache") == []


def test_explicit_file_that_is_not_vgg16(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pth"
    path.write_bytes(TINY)
    with pytest.raises(LookalikeError, match=f"^{path}: not a torchvision VGG16 state dict: 'features.0.weight'"):
        fetch_vgg16_weights(path)


def test_explicit_file_missing(tmp_path: Path) -> None:
    with pytest.raises(LookalikeError, match=f"weights file {tmp_path / 'nope.pth'} does not exist"):
        fetch_vgg16_weights(tmp_path / "nope.pth")


def test_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file(TINY_STATE, str(path))
    _assert_same_tensors(dict(sorted(load_weights_file(path).items())), dict(sorted(TINY_STATE.items())))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(LookalikeError, match=f"^cannot load weights file {bad}: ") as info:
        load_weights_file(bad)
    assert "\n" not in str(info.value)


def test_wrapped_state_dict_is_unwrapped(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pth"
    path.write_bytes(_torch_bytes({"epoch": 3, "state_dict": TINY_STATE}))
    _assert_same_tensors(load_weights_file(path), TINY_STATE)


def _never_called(marker: str) -> None:
    """What unpickling the payload below would run."""
    Path(marker).touch()


class Payload:
    """A pickled object that runs code when it is unpickled (plain pickle would call ``_never_called``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return _never_called, (str(self.marker),)


class Thing:
    """A plain custom class: pickled by reference to ``tests.test_download.Thing``."""

    def __init__(self) -> None:
        self.value = 1


def test_pickled_objects_are_refused_by_weights_only(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / NAME
    path.write_bytes(_torch_bytes({"w": torch.zeros(2), "payload": Payload(marker)}))
    with pytest.raises(LookalikeError) as info:
        load_weights_file(path)
    message = str(info.value)
    assert message.startswith(f"cannot load weights file {path}: it holds objects other than tensors")
    assert "weights_only" in message and "_never_called" in message
    assert "\n" not in message
    assert not marker.exists()

    plain = tmp_path / "plain-object.pth"
    plain.write_bytes(_torch_bytes({"w": torch.zeros(2), "obj": Thing()}))
    with pytest.raises(LookalikeError, match="it holds objects other than tensors") as info:
        fetch_vgg16_weights(plain)
    assert "Thing" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not a torch file at all", "not a readable torch.save file"),
        (b"junk", "not a readable torch.save file"),
        (b"", "not a readable torch.save file"),
        (TINY[: len(TINY) // 2], "not a readable torch.save file"),
        (_torch_bytes([torch.zeros(2)]), "it does not hold a state dict of named tensors"),
        (_torch_bytes({}), "it does not hold a state dict of named tensors"),
    ],
)
def test_unreadable_pth_is_a_one_line_error(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(LookalikeError) as info:
        load_weights_file(path)
    message = str(info.value)
    assert message.startswith(f"cannot load weights file {path}: {reason}")
    assert "\n" not in message
