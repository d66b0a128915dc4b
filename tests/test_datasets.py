"""Tests for lookalike.datasets, offline: small files in the real formats served from 127.0.0.1."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import shutil
import socket
import struct
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import datasets
from lookalike.datasets import (
    DATASETS,
    default_cache_dir,
    export_dataset,
    load_dataset,
    load_demo_dataset,
)
from lookalike.errors import LookalikeError

CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR_PER_BATCH = 20  # the real batches hold 10,000 records
CIFAR_BATCHES = [f"data_batch_{i}.bin" for i in range(1, 6)]
MNIST_TRAIN = 30
MNIST_TEST = 10
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


# --------------------------------------------------------------------------------------------------
# Small files in the real formats
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FakeData:
    """What the served files hold, to compare decoded arrays with."""

    root: Path  # the directory holding the generated files
    cifar: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images (n,32,32,3), labels)
    cifar_first_record: bytes  # the raw first record of data_batch_1.bin
    mnist: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images (n,28,28), labels)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _cifar_record(label: int, image: np.ndarray) -> bytes:
    """Encode one record as the CIFAR-10 binary docs describe: label, then R, G, B planes."""
    return bytes([label]) + image[:, :, 0].tobytes() + image[:, :, 1].tobytes() + image[:, :, 2].tobytes()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_cifar_archive(
    path: Path, rng: np.random.Generator, *, batches: list[str] | None = None
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], bytes]:
    """Write a small cifar-10-binary.tar.gz with the real member layout."""
    names = CIFAR_BATCHES + ["test_batch.bin"] if batches is None else batches
    arrays: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    first_record = b""
    with tarfile.open(path, "w:gz") as tar:
        directory = tarfile.TarInfo("cifar-10-batches-bin")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        meta = "\n".join(DATASETS["cifar10"].classes) + "\n\n"
        _add_member(tar, "cifar-10-batches-bin/batches.meta.txt", meta.encode())
        _add_member(tar, "cifar-10-batches-bin/readme.html", b"<html>not read</html>")
        for name in names:
            labels = rng.permutation(np.arange(CIFAR_PER_BATCH) % 10).astype(np.int64)
            images = rng.integers(0, 256, size=(CIFAR_PER_BATCH, 32, 32, 3), dtype=np.uint8)
            records = [_cifar_record(int(label), image) for label, image in zip(labels, images, strict=True)]
            if name == "data_batch_1.bin":
                first_record = records[0]
            _add_member(tar, f"cifar-10-batches-bin/{name}", b"".join(records))
            arrays["test" if name == "test_batch.bin" else "train"].append((images, labels))
    out = {
        split: (np.concatenate([i for i, _ in parts]), np.concatenate([lab for _, lab in parts]))
        for split, parts in arrays.items()
        if parts
    }
    return out, first_record


def idx_images(images: np.ndarray, magic: int = 2051) -> bytes:
    n, rows, cols = images.shape
    return gzip.compress(struct.pack(">IIII", magic, n, rows, cols) + images.tobytes())


def idx_labels(labels: np.ndarray, magic: int = 2049) -> bytes:
    return gzip.compress(struct.pack(">II", magic, labels.shape[0]) + labels.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeData:
    root = tmp_path_factory.mktemp("fake-datasets")
    rng = np.random.default_rng(1234)
    cifar, first_record = make_cifar_archive(root / CIFAR_ARCHIVE, rng)
    mnist = {}
    for split, n in (("train", MNIST_TRAIN), ("test", MNIST_TEST)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.int64)
        images_name, labels_name = MNIST_FILES[split]
        (root / images_name).write_bytes(idx_images(images))
        (root / labels_name).write_bytes(idx_labels(labels))
        mnist[split] = (images, labels)
    return FakeData(root=root, cifar=cifar, cifar_first_record=first_record, mnist=mnist)


# --------------------------------------------------------------------------------------------------
# A local HTTP server
# --------------------------------------------------------------------------------------------------


class Server:
    """ThreadingHTTPServer on 127.0.0.1, serving ``root``; records the paths requested."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

            def do_GET(self) -> None:
                requests.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)


def _patch_checksums(monkeypatch: pytest.MonkeyPatch, name: str, md5s: dict[str, str]) -> None:
    info = DATASETS[name]
    files = tuple(dataclasses.replace(f, md5=md5s.get(f.filename, f.md5)) for f in info.files)
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(info, files=files))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never touch the real cache, the real mirrors or a proxy."""
    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.delenv("LOOKALIKE_DATASETS_MIRROR", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture
def server(fake: FakeData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """Serve a fresh copy of the fake files; the registry's checksums and the mirror point at it."""
    www = tmp_path / "www"
    shutil.copytree(fake.root, www)
    md5s = {path.name: _md5(path.read_bytes()) for path in www.iterdir()}
    _patch_checksums(monkeypatch, "cifar10", md5s)
    _patch_checksums(monkeypatch, "mnist", md5s)
    srv = Server(www)
    monkeypatch.setenv("LOOKALIKE_DATASETS_MIRROR", srv.url)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def _closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# --------------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------------


def test_cifar_download_decodes_binary_records(server: Server, fake: FakeData, cache: Path) -> None:
    calls: list[tuple[int, int | None]] = []
    train = load_dataset("cifar10", "train", cache_dir=cache, progress=lambda d, t: calls.append((d, t)))

    images, labels = fake.cifar["train"]
    assert train.name == "cifar10" and train.split == "train"
    assert len(train) == 5 * CIFAR_PER_BATCH
    assert train.images.dtype == np.uint8 and train.images.shape == (100, 32, 32, 3)
    assert train.labels.dtype == np.int64 and train.labels.shape == (100,)
    np.testing.assert_array_equal(train.labels, labels)
    np.testing.assert_array_equal(train.images, images)
    assert train.classes == list(DATASETS["cifar10"].classes)
    assert train.source == f"downloaded from {server.url}{CIFAR_ARCHIVE}"

    # Read one pixel straight from the raw record: label, 1024 R, 1024 G, 1024 B, row-major.
    record = fake.cifar_first_record
    row, col = 3, 7
    offset = row * 32 + col
    assert train.labels[0] == record[0]
    assert tuple(train.images[0, row, col]) == (
        record[1 + offset],
        record[1 + 1024 + offset],
        record[1 + 2048 + offset],
    )

    size = (fake.root / CIFAR_ARCHIVE).stat().st_size
    assert calls and calls[-1] == (size, size)
    assert server.requests == [f"/{CIFAR_ARCHIVE}"]

    test = load_dataset("cifar10", "test", cache_dir=cache)
    np.testing.assert_array_equal(test.images, fake.cifar["test"][0])
    np.testing.assert_array_equal(test.labels, fake.cifar["test"][1])
    assert server.requests == [f"/{CIFAR_ARCHIVE}"]  # the archive holds both splits


def test_second_load_uses_cache_without_network(server: Server, fake: FakeData, cache: Path) -> None:
    first = load_dataset("cifar10", cache_dir=cache)
    server.stop()

    again = load_dataset("cifar10", cache_dir=cache)
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.labels, first.labels)
    assert again.source.startswith("cache ")

    # Without the decoded .npy files, the verified archive in the cache is decoded again, offline.
    for npy in (cache / "cifar10").glob("*.npy"):
        npy.unlink()
    decoded = load_dataset("cifar10", "test", cache_dir=cache, download=False)
    np.testing.assert_array_equal(decoded.images, fake.cifar["test"][0])
    assert decoded.source.startswith("cache ")
    assert server.requests == [f"/{CIFAR_ARCHIVE}"]


def test_damaged_cached_file_is_downloaded_again(server: Server, fake: FakeData, cache: Path) -> None:
    (cache / "cifar10").mkdir(parents=True)
    (cache / "cifar10" / CIFAR_ARCHIVE).write_bytes(b"truncated")
    data = load_dataset("cifar10", cache_dir=cache)
    np.testing.assert_array_equal(data.images, fake.cifar["train"][0])
    assert server.requests == [f"/{CIFAR_ARCHIVE}"]


def test_checksum_mismatch_raises_and_leaves_nothing(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "0" * 32
    _patch_checksums(monkeypatch, "cifar10", {CIFAR_ARCHIVE: wrong})
    actual = _md5((server.root / CIFAR_ARCHIVE).read_bytes())

    with pytest.raises(LookalikeError) as info:
        load_dataset("cifar10", cache_dir=cache)
    message = str(info.value)
    assert f"{server.url}{CIFAR_ARCHIVE}" in message
    assert wrong in message and actual in message
    assert "\n" not in message
    assert _files_under(cache) == []


def test_missing_file_on_server_is_a_clear_error(server: Server, cache: Path) -> None:
    (server.root / CIFAR_ARCHIVE).unlink()
    with pytest.raises(datasets.DownloadError, match=r"could not download http://127\.0\.0\.1:\d+/cifar") as info:
        load_dataset("cifar10", cache_dir=cache)
    assert "HTTP 404" in str(info.value)
    assert _files_under(cache) == []


def test_unreachable_server_is_a_clear_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = _closed_port_url()
    monkeypatch.setenv("LOOKALIKE_DATASETS_MIRROR", url)
    with pytest.raises(LookalikeError, match=f"could not download {url}train-images"):
        load_dataset("mnist", cache_dir=cache, timeout=2)
    assert _files_under(cache) == []


def test_silent_server_times_out(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # the kernel accepts the connection; nobody ever answers
        monkeypatch.setenv("LOOKALIKE_DATASETS_MIRROR", f"http://127.0.0.1:{listener.getsockname()[1]}/")
        start = time.monotonic()
        with pytest.raises(datasets.DownloadError, match=r"timed out after 0\.3 s"):
            load_dataset("cifar10", cache_dir=cache, timeout=0.3)
        assert time.monotonic() - start < 5
    assert _files_under(cache) == []


def test_cifar_label_out_of_range(server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = server.root / CIFAR_ARCHIVE
    with tarfile.open(path, "w:gz") as tar:
        for name in CIFAR_BATCHES + ["test_batch.bin"]:
            _add_member(tar, f"cifar-10-batches-bin/{name}", _cifar_record(10, np.zeros((32, 32, 3), np.uint8)))
    _patch_checksums(monkeypatch, "cifar10", {CIFAR_ARCHIVE: _md5(path.read_bytes())})
    with pytest.raises(LookalikeError, match=r"data_batch_1\.bin has label 10, out of range"):
        load_dataset("cifar10", cache_dir=cache)


def test_not_cached_with_download_off(cache: Path) -> None:
    with pytest.raises(LookalikeError, match="not in the cache .* downloading is off"):
        load_dataset("cifar10", cache_dir=cache, download=False)


def test_cifar_archive_missing_a_member(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    make_cifar_archive(server.root / CIFAR_ARCHIVE, np.random.default_rng(0), batches=CIFAR_BATCHES)
    _patch_checksums(monkeypatch, "cifar10", {CIFAR_ARCHIVE: _md5((server.root / CIFAR_ARCHIVE).read_bytes())})
    with pytest.raises(LookalikeError, match=r"corrupt CIFAR-10 archive .*missing .*test_batch\.bin"):
        load_dataset("cifar10", cache_dir=cache)


def test_cifar_archive_extra_members_are_never_extracted(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = server.root / CIFAR_ARCHIVE
    make_cifar_archive(path, np.random.default_rng(0))
    with tarfile.open(path, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]  # type: ignore[union-attr]
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
        _add_member(tar, "../escaped.txt", b"outside")
        _add_member(tar, "/tmp/absolute-lookalike-test.txt", b"outside")
    _patch_checksums(monkeypatch, "cifar10", {CIFAR_ARCHIVE: _md5(path.read_bytes())})

    assert len(load_dataset("cifar10", cache_dir=cache)) == 5 * CIFAR_PER_BATCH
    assert not (cache / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert {p.name for p in _files_under(cache)} == {
        CIFAR_ARCHIVE,
        "train_images.npy",
        "train_labels.npy",
        "test_images.npy",
        "test_labels.npy",
    }


# --------------------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------------------


def test_mnist_download_parses_idx(server: Server, fake: FakeData, cache: Path) -> None:
    train = load_dataset("mnist", "train", cache_dir=cache)
    assert train.images.dtype == np.uint8 and train.images.shape == (MNIST_TRAIN, 28, 28, 1)
    assert train.labels.dtype == np.int64
    np.testing.assert_array_equal(train.images[..., 0], fake.mnist["train"][0])
    np.testing.assert_array_equal(train.labels, fake.mnist["train"][1])
    assert train.classes == [str(i) for i in range(10)]
    assert train.source == f"downloaded from {server.url}"
    assert sorted(server.requests) == sorted(f"/{name}" for name in MNIST_FILES["train"])

    test = load_dataset("mnist", "test", cache_dir=cache)
    assert test.images.shape == (MNIST_TEST, 28, 28, 1)
    np.testing.assert_array_equal(test.images[..., 0], fake.mnist["test"][0])
    np.testing.assert_array_equal(test.labels, fake.mnist["test"][1])

    server.stop()
    assert load_dataset("mnist", "test", cache_dir=cache).source.startswith("cache ")


def _corrupt_bad_magic() -> bytes:
    return idx_images(np.zeros((3, 28, 28), np.uint8), magic=2049)


def _corrupt_truncated() -> bytes:
    return gzip.compress(struct.pack(">IIII", 2051, MNIST_TRAIN, 28, 28) + bytes(100))


def _corrupt_not_gzip() -> bytes:
    return b"this is not a gzip file at all"


def _corrupt_wrong_size() -> bytes:
    return idx_images(np.zeros((MNIST_TRAIN, 14, 14), np.uint8))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_corrupt_bad_magic, "magic number 2049, expected 2051"),
        (_corrupt_truncated, "header says"),
        (_corrupt_not_gzip, "not a valid gzip file"),
        (_corrupt_wrong_size, r"14×14, expected 28×28"),
    ],
    ids=["bad-magic", "truncated", "not-gzip", "wrong-size"],
)
def test_corrupt_idx_file_is_a_clear_error(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch, make: object, reason: str
) -> None:
    data = make()  # type: ignore[operator]
    name = MNIST_FILES["train"][0]
    (server.root / name).write_bytes(data)
    _patch_checksums(monkeypatch, "mnist", {name: _md5(data)})
    with pytest.raises(LookalikeError) as info:
        load_dataset("mnist", cache_dir=cache)
    message = str(info.value)
    assert message.startswith(f"corrupt MNIST file {cache / 'mnist' / name}")
    assert reason in message
    assert "\n" not in message


def test_idx_label_count_must_match(server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = MNIST_FILES["train"][1]
    data = idx_labels(np.zeros(MNIST_TRAIN - 1, np.int64))
    (server.root / name).write_bytes(data)
    _patch_checksums(monkeypatch, "mnist", {name: _md5(data)})
    with pytest.raises(LookalikeError, match=f"{name}: 29 labels for 30 images"):
        load_dataset("mnist", cache_dir=cache)


# --------------------------------------------------------------------------------------------------
# digits and the demo fallback
# --------------------------------------------------------------------------------------------------


def test_digits_are_scaled_to_uint8() -> None:
    from sklearn.datasets import load_digits

    digits = load_dataset("digits")
    assert len(digits) == 1797
    assert digits.images.shape == (1797, 8, 8, 1) and digits.images.dtype == np.uint8
    assert digits.labels.dtype == np.int64 and set(digits.labels.tolist()) == set(range(10))
    raw = load_digits()
    np.testing.assert_array_equal(digits.images[..., 0], np.rint(raw.images * 255 / 16).astype(np.uint8))
    assert digits.images.max() == 255
    assert digits.source == "scikit-learn's bundled digits"
    assert len(load_dataset("digits", "test")) == 1797


def test_demo_falls_back_to_digits_when_unreachable(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_DATASETS_MIRROR", _closed_port_url())
    start = time.monotonic()
    data, message = load_demo_dataset(cache_dir=cache, timeout=2)
    assert time.monotonic() - start < 10
    assert data.name == "digits" and data.split == "train" and len(data) == 1797
    assert "\n" not in message
    assert message.startswith("CIFAR-10 and MNIST could not be downloaded (")
    assert "using scikit-learn's bundled digits (1,797 8×8 grey images) instead." in message
    assert _files_under(cache) == []


def test_demo_offline_without_cache(cache: Path) -> None:
    data, message = load_demo_dataset(cache_dir=cache, download=False)
    assert data.name == "digits"
    assert message.startswith("CIFAR-10 and MNIST are not in the cache")
    assert "downloading is off" in message and "digits" in message


def test_demo_prefers_cifar_and_reports_the_cache(server: Server, cache: Path) -> None:
    data, message = load_demo_dataset(cache_dir=cache)
    assert data.name == "cifar10"
    assert message == f"Downloaded CIFAR-10 (100 32×32 colour images) into {cache / 'cifar10'}."
    server.stop()
    data, message = load_demo_dataset(cache_dir=cache)
    assert data.name == "cifar10"
    assert message == f"Using CIFAR-10 (100 32×32 colour images) from cache {cache / 'cifar10'}."


def test_demo_falls_back_to_mnist(server: Server, cache: Path) -> None:
    (server.root / CIFAR_ARCHIVE).unlink()
    data, message = load_demo_dataset(cache_dir=cache)
    assert data.name == "mnist" and len(data) == MNIST_TRAIN
    assert message.startswith("CIFAR-10 could not be downloaded (HTTP 404")
    assert "downloaded MNIST (30 28×28 grey images)" in message and message.endswith("instead.")


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def _png_files(out: Path) -> list[Path]:
    return sorted(out.rglob("*.png"))


def test_export_writes_balanced_class_folders(server: Server, fake: FakeData, cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "export" / "cifar"
    count = export_dataset("cifar10", out, limit=3, cache_dir=cache)
    assert count == 30
    files = _png_files(out)
    assert len(files) == 30
    classes = DATASETS["cifar10"].classes
    assert sorted(p.name for p in out.iterdir()) == sorted(classes)
    images, labels = fake.cifar["train"]
    for folder in out.iterdir():
        assert len(list(folder.iterdir())) == 3
    for path in files:
        index = int(path.stem.split("_")[1])
        assert path.stem == f"train_{index:05d}"
        assert classes[labels[index]] == path.parent.name
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (32, 32)
            np.testing.assert_array_equal(np.asarray(image), images[index])
    assert [p.name for p in out.parent.iterdir()] == ["cifar"]  # no temporary directory left


def test_export_refuses_a_non_empty_target(server: Server, cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(LookalikeError, match="not empty"):
        export_dataset("mnist", out, cache_dir=cache)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert server.requests == []  # refused before loading anything

    target = tmp_path / "a-file"
    target.write_text("x")
    with pytest.raises(LookalikeError, match="not a directory"):
        export_dataset("mnist", target, cache_dir=cache)


def test_export_grey_images_into_an_empty_directory(
    server: Server, fake: FakeData, cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mnist-out"
    out.mkdir()
    progress: list[tuple[int, int | None]] = []
    count = export_dataset("mnist", out, split="test", cache_dir=cache, progress=lambda d, t: progress.append((d, t)))
    assert count == MNIST_TEST == len(_png_files(out))
    assert progress[-1] == (MNIST_TEST, MNIST_TEST)
    images, labels = fake.mnist["test"]
    for path in _png_files(out):
        index = int(path.stem.split("_")[1])
        assert path.stem.startswith("test_") and path.parent.name == str(labels[index])
        with Image.open(path) as image:
            assert image.mode == "L"
            np.testing.assert_array_equal(np.asarray(image), images[index])


def test_export_failure_leaves_no_half_export(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_save = datasets._save_png
    calls = 0

    def flaky_save(image: np.ndarray, path: Path) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise OSError(28, "No space left on device")
        real_save(image, path)

    monkeypatch.setattr(datasets, "_save_png", flaky_save)
    parent = tmp_path / "exports"
    out = parent / "digits"
    with pytest.raises(LookalikeError, match=f"cannot export to {out}: No space left on device"):
        export_dataset("digits", out, limit=2)
    assert calls == 5
    assert list(parent.iterdir()) == []


def test_export_rejects_a_bad_limit(tmp_path: Path) -> None:
    with pytest.raises(LookalikeError, match="limit"):
        export_dataset("digits", tmp_path / "x", limit=0)


# --------------------------------------------------------------------------------------------------
# Registry, names and the cache location
# --------------------------------------------------------------------------------------------------


def test_unknown_dataset_or_split() -> None:
    with pytest.raises(LookalikeError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(LookalikeError, match="unknown split 'validation'"):
        load_dataset("digits", "validation")


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LOOKALIKE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "lookalike"


def test_registry_points_at_the_official_files(monkeypatch: pytest.MonkeyPatch) -> None:
    cifar = DATASETS["cifar10"]
    assert cifar.url(cifar.files[0]) == "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    assert cifar.files[0].md5 == "c32a1d4ab5d03f1284b67883e8d87530"
    mnist = DATASETS["mnist"]
    assert {f.filename: f.md5 for f in mnist.files} == {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    monkeypatch.setenv("LOOKALIKE_DATASETS_MIRROR", "file:///srv/mirror")
    assert mnist.url(mnist.files[0]) == "file:///srv/mirror/train-images-idx3-ubyte.gz"
