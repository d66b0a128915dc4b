"""Issue 13, section 1: each hostile input or fault that was found breaking lookalike, as a test that
failed before its fix (special files, links out of the folder, non-UTF-8 names, locks kept by orphaned
workers, tracebacks instead of one line, silent skips, wrong colours)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.errors import LookalikeError

PY = sys.executable


def _png(path: Path, seed: int, size: int = 32) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its reaper is dead too
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------------------------------- the lock
def test_lock_dies_with_the_writer_even_while_its_decoding_workers_live(tmp_path: Path) -> None:
    """kill -9 of a writer whose DataLoader workers are busy: the index is writable again at once and
    no worker is left (before: an orphaned worker kept the flock for minutes)."""
    from lookalike.store import StoreWriter

    folder = tmp_path / "imgs"
    for i in range(40):
        _png(folder / f"{i:02d}.png", i)
    index_dir = tmp_path / "idx"
    subprocess.run([PY, "-m", "lookalike.cli", "index", str(folder), "-o", str(index_dir), "-e", "pixels"],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from lookalike.config import Preprocessing
        from lookalike.data import image_loader
        from lookalike.store import StoreWriter
        import lookalike.data as data
        writer = StoreWriter(Path({str(index_dir)!r}), 3072)
        slow = data.load_pixels
        def load_slowly(*a, **k):
            time.sleep(60)
            return slow(*a, **k)
        data.load_pixels = load_slowly
        paths = sorted(Path({str(folder)!r}).glob("*.png"))
        loader = image_loader(paths, Preprocessing(image_size=32), batch_size=4, num_workers=2)
        it = iter(loader)
        time.sleep(3)  # workers started and stuck in load_slowly
        kids = []
        for task in os.listdir("/proc/self/task"):
            kids += open(f"/proc/self/task/{{task}}/children").read().split()
        print(" ".join(kids), flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([PY, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]  # type: ignore[union-attr]
        assert workers, "no decoding worker started"
        with pytest.raises(LookalikeError, match="another lookalike process"):
            StoreWriter(index_dir, 3072)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 3
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(w) for w in workers), "a decoding worker outlived its killed parent"
        with StoreWriter(index_dir, 3072):  # free again
            pass
    finally:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------ the CLI on a folder
def _cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [PY, "-m", "lookalike.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env,
        errors="surrogateescape",
    )  # fmt: skip


@pytest.fixture()
def hostile_folder(tmp_path: Path) -> tuple[Path, Path]:
    """Five good images, and beside them: a FIFO, a link to /dev/zero, a 4 GiB sparse file, a link out of
    the folder, a dangling link, a link loop, and an image with a non-UTF-8 name."""
    root = tmp_path / "in"
    for i in range(5):
        _png(root / f"{i}.png", i)
    outside = _png(tmp_path / "secret" / "outside.png", 99)
    os.mkfifo(root / "fifo.jpg")
    os.symlink("/dev/zero", root / "zero.jpg")
    with open(root / "sparse.png", "wb") as fh:
        fh.truncate(4 << 30)
    os.symlink(outside, root / "out.png")
    os.symlink(root / "nothing.png", root / "dangling.png")
    os.symlink(root / "loop2.png", root / "loop1.png")
    os.symlink(root / "loop1.png", root / "loop2.png")
    _png(Path(os.fsdecode(bytes(root) + b"/bad_\xff.png")), 7)
    return root, outside


SKIPPED = {  # name -> what the skip line says
    "fifo.jpg": "not a regular file (FIFO)",
    "zero.jpg": "not a regular file (a link to a character device)",
    "sparse.png": "larger than the 256 MiB limit",
    "out.png": "outside the folder",
    "dangling.png": "broken symbolic link",
    "loop1.png": "symbolic link loop",
    "loop2.png": "symbolic link loop",
}


def test_index_skips_special_files_and_links_out_with_a_reason_each_and_never_hangs(hostile_folder, tmp_path):
    """Before: a FIFO blocked `index` forever, /dev/zero grew memory without end, the sparse file was read
    whole, links out of the folder were indexed, dangling and looping links were neither reported nor
    counted, and the non-UTF-8 name aborted the run after all the work."""
    from lookalike.search import Index

    root, outside = hostile_folder
    out = tmp_path / "idx"
    result = _cli("index", str(root), "-o", str(out), "-e", "pixels", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr
    for name, why in SKIPPED.items():
        line = next((ln for ln in result.stderr.splitlines() if f"/{name}: " in ln), None)
        assert line is not None and why in line, (name, result.stderr)
    assert f"skipped {len(SKIPPED)} files" in result.stdout
    index = Index.load(out)
    assert sorted(e.path for e in index.entries.values()) == sorted([f"{i}.png" for i in range(5)] + [
        os.fsdecode(b"bad_\xff.png")])  # fmt: skip
    # the choice to follow links out is explicit, recorded, and kept by later runs
    result = _cli("index", str(root), "-o", str(out), "--follow-symlinks", timeout=60)
    assert result.returncode == 0, result.stderr
    index = Index.load(out)
    assert index.follow_symlinks and index.id_of(root / "out.png") is not None
    assert f"skipped {len(SKIPPED) - 1} files" in result.stdout
    result = _cli("index", str(root), "-o", str(out), timeout=60)
    assert Index.load(out).id_of(root / "out.png") is not None


def test_a_non_utf8_name_is_indexed_searchable_and_kept_byte_exact(hostile_folder, tmp_path):
    from lookalike.search import Index

    root, _ = hostile_folder
    out = tmp_path / "idx"
    assert _cli("index", str(root), "-o", str(out), "-e", "pixels").returncode == 0
    bad = Path(os.fsdecode(bytes(root) + b"/bad_\xff.png"))
    index = Index.load(out)
    id_ = index.id_of(bad)
    assert id_ is not None and os.fsencode(index.path_of(id_)) == bytes(root) + b"/bad_\xff.png"
    hits = index.search(bad, k=1)
    assert hits[0].id == id_ and hits[0].score > 0.999
    with index.open_file(id_) as fh:
        assert fh.read() == bad.read_bytes()
    from fastapi.testclient import TestClient

    from lookalike.server import ServerSettings, create_app

    with TestClient(create_app(index, ServerSettings(warm_up=False, reload_interval=0))) as client:
        page = client.get("/api/images?per_page=200").json()
        shown = {img["id"]: img["path"] for img in page["images"]}
        assert shown[id_] == "bad_\\xff.png"  # valid JSON text, the byte written as \xff
        found = client.get(f"/api/search?id={id_}&k=1").json()
        assert found["hits"][0]["id"] == id_
        assert client.get(f"/api/images/{id_}").content == bad.read_bytes()
        assert client.get(f"/thumbs/{id_}").status_code == 200
    result = _cli("search", str(out), str(bad), "-k", "2")
    assert result.returncode == 0, result.stderr
    assert "bad_" in result.stdout
    result = _cli("remove", str(out), str(bad))
    assert result.returncode == 0, result.stderr
    assert Index.load(out).id_of(bad) is None


def test_open_file_serves_only_what_was_indexed(hostile_folder, tmp_path):
    """Before: the server opened the catalogued path at request time and followed a link swapped in."""
    from lookalike.search import Index

    root, outside = hostile_folder
    out = tmp_path / "idx"
    assert _cli("index", str(root), "-o", str(out), "-e", "pixels").returncode == 0
    index = Index.load(out)
    ids = {Path(e.path).name: e.id for e in index.entries.values()}
    with index.open_file(ids["0.png"]) as fh:
        assert fh.read() == (root / "0.png").read_bytes()
    (root / "1.png").unlink()
    os.symlink("/etc/passwd", root / "1.png")  # swapped for a link out of the folder
    assert index.open_file(ids["1.png"]) is None
    (root / "2.png").unlink()
    os.mkfifo(root / "2.png")  # swapped for a FIFO: refused without blocking
    assert index.open_file(ids["2.png"]) is None
    data = (root / "3.png").read_bytes()
    (root / "3.png").write_bytes(data[:-4] + b"\x00\x00\x00\x00")  # other content, other mtime
    os.utime(root / "3.png", ns=(0, 0))
    assert index.open_file(ids["3.png"]) is None
    os.symlink(root / "4.png", root / "inside.png")  # links inside the folder are fine
    assert index.open_file(ids["4.png"]) is not None


def test_add_says_why_it_skips_and_refuses_paths_that_climb_out(hostile_folder, tmp_path):
    """Before: `add dir/../../outside.png` was a silent no-op and `add` of a known-unreadable file
    printed `skipped 1` with no reason."""
    root, outside = hostile_folder
    out = tmp_path / "idx"
    assert _cli("index", str(root), "-o", str(out), "-e", "pixels").returncode == 0
    climb = f"{root.name}/../{outside.parent.name}/{outside.name}"
    result = _cli("add", str(out), climb, cwd=root.parent)
    assert result.returncode == 1 and "not inside the indexed folder" in result.stderr
    assert "Traceback" not in result.stderr
    for name in ("fifo.jpg", "out.png"):
        result = _cli("add", str(out), str(root / name))
        assert result.returncode == 0, result.stderr
        assert SKIPPED[name] in result.stderr and "skipped 1 file" in result.stdout
    (root / "junk.png").write_bytes(b"not a png at all")
    for _ in range(2):  # the second time it is known to be unreadable, and still says why
        result = _cli("add", str(out), str(root / "junk.png"))
        assert result.returncode == 0 and "junk.png: not an image file" in result.stderr, result.stderr


@pytest.mark.parametrize("command", ["index", "train"])
def test_an_output_that_cannot_be_a_folder_is_one_line(command, tmp_path):
    """Before: `-o afile/idx` and `-o /proc/idx` ended in tracebacks (FileExistsError, FileNotFoundError)."""
    folder = tmp_path / "imgs"
    for i in range(4):
        _png(folder / f"{i}.png", i)
    (tmp_path / "afile").write_text("x")
    extra = ["-e", "pixels"] if command == "index" else ["--epochs", "1", "--image-size", "16"]
    for target in (tmp_path / "afile" / "out", Path("/proc/lookalike-out")):
        result = _cli(command, str(folder), "-o", str(target), *extra)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


# ---------------------------------------------------------------------------------------- pixels
def _icc_profile(primaries: list[tuple[float, float, float]], gamma: float) -> bytes:
    """A minimal ICC v2 RGB matrix/TRC display profile (D50 white; primaries are the XYZ columns)."""
    import struct

    def s15(x: float) -> bytes:
        return struct.pack(">i", round(x * 65536))

    def xyz(v: tuple[float, float, float]) -> bytes:
        return b"XYZ \0\0\0\0" + b"".join(s15(c) for c in v)

    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    text = b"wide gamut test"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text) + 1) + text + b"\0" + b"\0" * 8 + b"\0\0\0" + b"\0" * 67
    d50 = (0.9642, 1.0, 0.8249)
    tags = [(b"desc", desc), (b"wtpt", xyz(d50)), (b"rXYZ", xyz(primaries[0])), (b"gXYZ", xyz(primaries[1])),
            (b"bXYZ", xyz(primaries[2])), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
            (b"cprt", b"text\0\0\0\0none\0\0\0\0")]  # fmt: skip
    offset = 128 + 4 + 12 * len(tags)
    table, blob = b"", b""
    for sig, data in tags:
        while len(data) % 4:
            data += b"\0"
        table += sig + struct.pack(">II", offset + len(blob), len(data))
        blob += data
    body = struct.pack(">I", len(tags)) + table + blob
    size = 128 + len(body)
    header = (struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + b"\0" * 12 + b"acsp" + b"APPL" + b"\0" * 4 + b"\0" * 8 + b"\0" * 8 + struct.pack(">I", 0)
              + b"".join(s15(c) for c in d50) + b"lcms" + b"\0" * 44)  # fmt: skip
    assert len(header) == 128
    return header + body


ADOBE_RGB_D50 = [(0.60974, 0.31111, 0.01947), (0.20528, 0.62567, 0.06087), (0.14919, 0.06322, 0.74457)]


def test_an_embedded_icc_profile_is_converted_to_srgb(tmp_path):
    """Before: an Adobe RGB JPEG decoded with a mean error of 33/255 against its sRGB original."""
    import io

    from PIL import ImageCms

    from lookalike.data import decode_image

    rng = np.random.default_rng(0)
    srgb = np.repeat(np.repeat(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), 8, 0), 8, 1)
    srgb[:32, :32] = (230, 20, 30)  # saturated colours move most between colour spaces
    srgb[32:, 32:] = (20, 200, 40)
    icc = _icc_profile(ADOBE_RGB_D50, 563 / 256)
    to_adobe = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                       "RGB", "RGB")  # fmt: skip
    adobe = ImageCms.applyTransform(Image.fromarray(srgb), to_adobe)
    path = tmp_path / "adobe.png"
    adobe.save(path, icc_profile=icc)
    raw = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert np.abs(raw - srgb).mean() > 8  # the file's own numbers are far from what it shows
    decoded = np.asarray(decode_image(path), dtype=np.float64)
    assert np.abs(decoded - srgb).mean() < 2.0
    jpeg = tmp_path / "adobe.jpg"
    adobe.save(jpeg, quality=95, subsampling=0, icc_profile=icc)
    assert np.abs(np.asarray(decode_image(jpeg), dtype=np.float64) - srgb).mean() < 4.0


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def grey_png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of ``width`` x ``height`` zeros: a few kB that decode to width*height pixels."""
    import struct
    import zlib

    row = b"\0" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def corrupt_exif_jpeg(seed: int) -> bytes:
    """A JPEG whose EXIF block promises 500 entries and holds one (Pillow warns 'Corrupt EXIF data')."""
    import io
    import struct

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 500) + b"\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00"
    app1 = b"\xff\xe1" + struct.pack(">H", len(tiff) + 8) + b"Exif\x00\x00" + tiff
    return data[:2] + app1 + data[2:]


def test_library_warnings_never_reach_the_terminal(tmp_path):
    """Before: DecompressionBombWarning, "Corrupt EXIF data" and numpy's RuntimeWarning for a NaN TIFF
    were printed raw, without a file name. Now: the bomb is a skip with its reason, the rest decode."""
    folder = tmp_path / "imgs"
    _png(folder / "ok.png", 0)
    (folder / "exif.jpg").write_bytes(corrupt_exif_jpeg(1))
    nan = np.full((16, 16), np.nan, dtype=np.float32)
    nan[4:8] = 0.5
    Image.fromarray(nan, mode="F").save(folder / "nan.tif")
    Image.fromarray(np.full((16, 16), np.nan, dtype=np.float32), mode="F").save(folder / "allnan.tif")
    (folder / "bomb.png").write_bytes(grey_png_bomb(10_000, 9_000))  # over Pillow's warning size, under its error
    env = {**os.environ, "PYTHONWARNINGS": "default", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([PY, "-W", "default", "-m", "lookalike.cli", "index", str(folder), "-o",
                             str(tmp_path / "idx"), "-e", "pixels"], capture_output=True, text=True, env=env,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "EXIF" not in result.stderr, result.stderr
    assert "bomb.png: refused: 10000x9000 = 90,000,000 pixels" in result.stderr
    assert "skipped 1 file" in result.stdout


def test_heic_needs_its_plugin_and_says_so(tmp_path, monkeypatch):
    import io

    import lookalike.decoding as decoding

    heic_header = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64
    monkeypatch.setattr(decoding, "heif_available", lambda: False)
    with pytest.raises(LookalikeError, match=r"pillow-heif .*lookalike\[heif\]") as exc:
        decoding.decode_bytes(heic_header, name="IMG_0001.HEIC")
    assert exc.value.kind == "unsupported"
    monkeypatch.undo()
    if not decoding.heif_available():
        pytest.skip("pillow-heif is not installed: HEIC decoding itself is not tested")
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "HEIF", quality=95)
    decoded = decoding.decode_bytes(buf.getvalue(), name="x.heic")
    assert decoded.format == "HEIC" and decoded.image.size == (32, 32)


def test_duplicates_writes_non_utf8_names_byte_exact(hostile_folder, tmp_path):
    """Before: `duplicates --csv` died with UnicodeEncodeError on a name that is not UTF-8."""
    import json

    root, _ = hostile_folder
    bad = Path(os.fsdecode(bytes(root) + b"/bad_\xff.png"))
    copy = Path(os.fsdecode(bytes(root) + b"/copy_\xfe.png"))
    copy.write_bytes(bad.read_bytes())
    out = tmp_path / "idx"
    assert _cli("index", str(root), "-o", str(out), "-e", "pixels").returncode == 0
    result = _cli("duplicates", str(out), "--csv", str(tmp_path / "d.csv"), "--json", str(tmp_path / "d.json"))
    assert result.returncode == 0, result.stderr
    csv_bytes = (tmp_path / "d.csv").read_bytes()
    assert b"/bad_\xff.png" in csv_bytes and b"/copy_\xfe.png" in csv_bytes  # the files' own bytes
    assert json.dumps(str(copy))[1:-1] in (tmp_path / "d.json").read_text()  # escaped: \udcfe, read back exactly


def test_truncated_avif_is_corrupt_and_warnings_stay_off_after_a_catch_warnings_block():
    """Found by the fuzz tests: a truncated AVIF was 'not an image' (415) where a truncated PNG is corrupt
    (400); and Pillow's warnings came back once any caller's catch_warnings block had ended."""
    import io
    import warnings

    from PIL import features

    from lookalike.decoding import decode_bytes
    from lookalike.errors import ImageDecodeError

    if features.check("avif"):
        buf = io.BytesIO()
        Image.new("RGB", (37, 23), (200, 30, 30)).save(buf, "AVIF", quality=60)
        with pytest.raises(ImageDecodeError, match="corrupt AVIF") as exc:
            decode_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        assert exc.value.kind == "corrupt"
    png = io.BytesIO()
    Image.new("RGB", (40, 40)).save(png, "PNG")
    with warnings.catch_warnings():
        decode_bytes(png.getvalue())  # the filters are installed inside the block, then restored away
    with warnings.catch_warnings(record=True) as caught:  # the filters as they are now, recorded
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = 1000  # 1,600 pixels: Pillow warns
        try:
            decode_bytes(png.getvalue())
        finally:
            Image.MAX_IMAGE_PIXELS = old
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
