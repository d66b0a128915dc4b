"""Property-based fuzzing with Hypothesis (issue 13, section 4): the decoding policy against mutated real
files of every accepted format, and the web service against fuzzed multipart bodies, query parameters and
paths.

Each property runs twice: a bounded, derandomized run in the default suite (reproducible in CI), and a
run with many more examples under ``-m slow``. The examples per run are ``FUZZ_EXAMPLES`` below.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import zlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as _hypothesis_event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from PIL import Image, ImageCms, features
from PIL.PngImagePlugin import PngInfo

from lookalike.decoding import FORMATS, MAX_PIXELS, DecodedImage, decode_bytes, decode_cost, heif_available
from lookalike.errors import ImageDecodeError

from .conftest import make_class_images

# Pillow's decompression-bomb and corrupt-EXIF warnings: lookalike installs filters for them once per
# process, which pytest's per-test warning capture undoes after the first test (see the report on issue 13).
pytestmark = [
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning:PIL"),
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
]

# ------------------------------------------------------------------------------------------ profiles
KINDS = {"unreadable", "not-image", "unsupported", "too-large", "corrupt"}
# examples per test: (default run, -m slow); the default run of this file takes about 15-30 s on 2 cores
FUZZ_EXAMPLES = {"decode": (300, 5000), "http": (150, 2000)}  # the http tests send one request per example
_COMMON = dict(
    database=None,  # nothing written to .hypothesis/
    print_blob=True,  # a failure prints how to reproduce it
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile("lookalike-fuzz", derandomize=True, deadline=None, **_COMMON)  # reproducible in CI
settings.register_profile("lookalike-fuzz-slow", deadline=None, **_COMMON)  # new examples every run
PROFILES = [
    pytest.param("lookalike-fuzz", id="default"),
    pytest.param("lookalike-fuzz-slow", id="slow", marks=pytest.mark.slow),
]
DECODE_DEADLINE = timedelta(seconds=2)  # one decode of a small mutated file
FUZZ_MAX_PIXELS = MAX_PIXELS // 16
REQUEST_DEADLINE = timedelta(seconds=5)  # one request (a first thumbnail decodes its original)


def event(what: str) -> None:
    """Count an outcome (shown by ``--hypothesis-show-statistics``); a no-op outside a Hypothesis test."""
    with contextlib.suppress(InvalidArgument):
        _hypothesis_event(what)


def fuzz(profile: str, what: str, deadline: timedelta, **strategies):
    """``@given`` under the named profile (not loaded globally: other test files keep their settings)."""
    default, slow = FUZZ_EXAMPLES[what]
    examples = slow if profile.endswith("slow") else default

    def wrap(fn):
        chosen = settings(settings.get_profile(profile), deadline=deadline, max_examples=examples)
        return chosen(given(**strategies)(fn))

    return wrap


# ------------------------------------------------------------------------------------- seed files
def _pixels(w: int, h: int, seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 127 // max(w + h, 1)], -1)
    arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return arr[..., :channels] if channels > 1 else arr[..., 0]


def _save(im: Image.Image | list[Image.Image], fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    if isinstance(im, list):
        im[0].save(buf, format=fmt, save_all=True, append_images=im[1:], **kw)
    else:
        im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _build_seeds() -> dict[str, bytes]:
    rgb = Image.fromarray(_pixels(37, 23, 0))
    big = Image.fromarray(_pixels(160, 96, 1))
    frames = [Image.fromarray(_pixels(30, 20, s)) for s in (2, 3, 4)]
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    seeds = {
        "jpeg": _save(rgb, "JPEG", quality=90),
        "jpeg-progressive": _save(big, "JPEG", quality=85, progressive=True),
        "jpeg-exif-icc": _save(big, "JPEG", exif=exif.tobytes(), icc_profile=srgb),
        "jpeg-grey": _save(rgb.convert("L"), "JPEG"),
        "jpeg-cmyk": _save(rgb.convert("CMYK"), "JPEG"),
        "png": _save(rgb, "PNG"),
        "png-rgba": _save(rgb.convert("RGBA"), "PNG"),
        "png-palette-trns": _save(palette, "PNG", transparency=0),
        "png-16bit": _save(Image.fromarray(_pixels(29, 17, 5, 1).astype(np.uint16) * 257), "PNG"),
        "png-icc": _save(big, "PNG", icc_profile=srgb),
        "apng": _save(frames, "PNG", duration=50, loop=0),
        "gif": _save(palette, "GIF"),
        "gif-animated": _save([f.convert("P") for f in frames], "GIF", duration=50, loop=0),
        "bmp": _save(rgb, "BMP"),
        "bmp-palette": _save(palette, "BMP"),
        "tiff": _save(rgb, "TIFF"),
        "tiff-lzw": _save(big, "TIFF", compression="tiff_lzw"),
        "tiff-float": _save(Image.fromarray(_pixels(21, 13, 6, 1).astype(np.float32) / 7), "TIFF"),
        "tiff-multipage": _save(frames, "TIFF"),
        "webp": _save(rgb, "WEBP", quality=80),
        "webp-lossless": _save(rgb.convert("RGBA"), "WEBP", lossless=True),
        "webp-animated": _save(frames, "WEBP", duration=50),
    }
    if features.check("avif"):
        seeds["avif"] = _save(rgb, "AVIF", quality=60, speed=10)
    if heif_available():  # registers pillow-heif's opener, which also writes HEIF
        seeds["heic"] = _save(rgb, "HEIF", quality=60)
    return seeds


SEEDS = _build_seeds()
SEED_NAMES = sorted(SEEDS)


def family(name: str) -> str:
    return name.split("-")[0]


FAMILIES = {fam: [n for n in SEED_NAMES if family(n) == fam] for fam in sorted({family(n) for n in SEED_NAMES})}


# ---------------------------------------------------------------------------- format-aware parsing
def png_chunks(data: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, total length, type) of each PNG chunk."""
    out, pos = [], 8
    while pos + 12 <= len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind = bytes(data[pos + 4 : pos + 8])
        if pos + 12 + n > len(data):
            break
        out.append((pos, 12 + n, kind))
        pos += 12 + n
    return out


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, total length, marker) of each JPEG segment before the scan."""
    out, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (n,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        out.append((pos, 2 + n, marker))
        if marker == 0xDA:
            break
        pos += 2 + n
    return out


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def size_fields(data: bytes, fam: str) -> list[tuple[int, str]]:
    """(offset, struct format) of the fields that store an image's width and height."""
    fields: list[tuple[int, str]] = []
    if fam in ("png", "apng"):
        for pos, _, kind in png_chunks(data):
            if kind == b"IHDR":
                fields += [(pos + 8, ">I"), (pos + 12, ">I")]
            elif kind == b"fcTL":
                fields += [(pos + 12, ">I"), (pos + 16, ">I")]
    elif fam == "jpeg":
        for pos, _, marker in jpeg_segments(data):
            if marker in _SOF:
                fields += [(pos + 5, ">H"), (pos + 7, ">H")]
    elif fam == "bmp":
        fields += [(18, "<i"), (22, "<i")]
    elif fam == "gif":
        fields += [(6, "<H"), (8, "<H")]
        flags = data[10] if len(data) > 10 else 0
        pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
        while pos < len(data):
            if data[pos] == 0x21:  # an extension: label, then sub-blocks
                pos += 2
                while pos < len(data) and data[pos]:
                    pos += data[pos] + 1
                pos += 1
            elif data[pos] == 0x2C:
                fields += [(pos + 5, "<H"), (pos + 7, "<H")]
                break
            else:
                break
    elif fam == "tiff" and len(data) >= 8:
        end = "<" if data[:2] == b"II" else ">"
        (ifd,) = struct.unpack(end + "I", data[4:8])
        if ifd + 2 <= len(data):
            (count,) = struct.unpack(end + "H", data[ifd : ifd + 2])
            for i in range(count):
                entry = ifd + 2 + 12 * i
                if entry + 12 > len(data):
                    break
                tag, typ = struct.unpack(end + "HH", data[entry : entry + 4])
                if tag in (256, 257):
                    fields.append((entry + 8, end + ("H" if typ == 3 else "I")))
    elif fam == "webp" and len(data) >= 30:
        kind = data[12:16]
        if kind == b"VP8X":
            fields += [(24, "<3"), (27, "<3")]  # 24-bit little-endian width-1, height-1
        elif kind == b"VP8 ":
            fields += [(26, "<H"), (28, "<H")]
        elif kind == b"VP8L":
            fields += [(21, "<I")]  # 14-bit width-1 and height-1 packed together
    elif fam in ("avif", "heic"):
        start = 0
        while (i := data.find(b"ispe", start)) >= 0:
            fields += [(i + 8, ">I"), (i + 12, ">I")]
            start = i + 4
    return [(off, fmt) for off, fmt in fields if off + _width(fmt) <= len(data)]


def _width(fmt: str) -> int:
    return 3 if fmt.endswith("3") else struct.calcsize(fmt)


def _put(data: bytearray, off: int, fmt: str, value: int) -> None:
    n = _width(fmt)
    if fmt.endswith("3"):
        data[off : off + 3] = (value & 0xFFFFFF).to_bytes(3, "little")
        return
    signed = fmt[-1].islower()
    bits = 8 * n
    value &= (1 << bits) - 1
    if signed and value >= 1 << (bits - 1):
        value -= 1 << bits
    data[off : off + n] = struct.pack(fmt, value)


def _fix_png_crcs(data: bytearray) -> None:
    for pos, n, kind in png_chunks(bytes(data)):
        body = data[pos + 4 : pos + n - 4]
        data[pos + n - 4 : pos + n] = struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        del kind


def header_length(fam: str, data: bytes) -> int:
    if fam in ("png", "apng"):
        chunks = png_chunks(data)
        return chunks[0][0] + chunks[0][1] if chunks else 8
    return {"jpeg": 2, "gif": 13, "bmp": 54, "tiff": 8, "webp": 12}.get(fam, 32)


# ------------------------------------------------------------------------------------- mutations
HUGE = st.sampled_from([0, 1, 2, 255, 4096, 16383, 16384, 65535, 65536, 2**24 - 1, 2**31 - 1, 2**31, 2**32 - 1])
SIZE_VALUE = st.one_of(HUGE, st.integers(0, 2**32 - 1), st.integers(1, 20000))


def _pos(draw, data: bytearray, end: bool = False) -> int:
    return draw(st.integers(0, len(data) if end else max(len(data) - 1, 0)))


def m_flip(draw, data: bytearray, fam: str) -> bytearray:
    if not data:
        return data
    start = _pos(draw, data)
    for i in range(start, min(len(data), start + draw(st.integers(1, 16)))):
        data[i] ^= draw(st.integers(1, 255))
    return data


def m_overwrite(draw, data: bytearray, fam: str) -> bytearray:
    start = _pos(draw, data, end=True)
    junk = draw(st.binary(min_size=1, max_size=64))
    data[start : start + len(junk)] = junk
    return data


def m_truncate(draw, data: bytearray, fam: str) -> bytearray:
    return data[: _pos(draw, data, end=True)]


def m_splice(draw, data: bytearray, fam: str) -> bytearray:
    at = header_length(fam, data) if draw(st.booleans()) else _pos(draw, data, end=True)
    return data[:at] + draw(st.binary(min_size=1, max_size=256)) + data[at:]


def m_delete(draw, data: bytearray, fam: str) -> bytearray:
    start = _pos(draw, data, end=True)
    del data[start : start + draw(st.integers(1, 64))]
    return data


def m_size(draw, data: bytearray, fam: str) -> bytearray:
    fields = size_fields(bytes(data), fam)
    if not fields:
        return m_overwrite(draw, data, fam)
    for off, fmt in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=len(fields), unique=True)):
        _put(data, off, fmt, draw(SIZE_VALUE))
    if fam in ("png", "apng") and draw(st.booleans()):
        _fix_png_crcs(data)  # so that the new size gets past the checksums
    return data


def m_duplicate(draw, data: bytearray, fam: str) -> bytearray:
    spans: list[tuple[int, int]] = []
    if fam in ("png", "apng"):
        spans = [(pos, n) for pos, n, _ in png_chunks(bytes(data))]
    elif fam == "jpeg":
        spans = [(pos, n) for pos, n, _ in jpeg_segments(bytes(data))]
    if spans:
        pos, n = draw(st.sampled_from(spans))
    else:
        pos = _pos(draw, data)
        n = draw(st.integers(1, 256))
    piece = data[pos : pos + n]
    return data[: pos + n] + piece * draw(st.integers(1, 3)) + data[pos + n :]


MUTATIONS = [m_flip, m_overwrite, m_truncate, m_splice, m_delete, m_size, m_duplicate]


@st.composite
def mutated_image(draw) -> bytes:
    """A real file of an accepted format, changed by zero to four mutations."""
    name = draw(st.sampled_from(FAMILIES[draw(st.sampled_from(sorted(FAMILIES)))]))  # each format as often
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(0, 4))):
        data = draw(st.sampled_from(MUTATIONS))(draw, data, family(name))
    return bytes(data)


SIGNATURES = [b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"\xff\xd8\xff", b"\xff\xd8\xff\xe0",
              b"GIF89a", b"GIF87a", b"BM", b"BM\x00\x00\x00\x00\x00\x00\x00\x00", b"II*\x00", b"MM\x00*",
              b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF\x00\x00\x00\x00WEBPVP8L", b"\x00\x00\x00\x1cftypavif",
              b"\x00\x00\x00\x18ftypheic", b"\x00\x00\x00\x18ftypmif1", b"\x00\x00\x00\x0cjP  \r\n\x87\n",
              b"\x00\x00\x01\x00", b"%PDF-1.4", b"<svg", b"P6\n"]  # fmt: skip
header_then_random = st.builds(lambda sig, tail: sig + tail, st.sampled_from(SIGNATURES), st.binary(max_size=512))
ANY_IMAGE_BYTES = st.one_of(*[mutated_image()] * 6, header_then_random, st.binary(max_size=256))


# ---------------------------------------------------------------------------------------- decoding
def check_decode(data: bytes, channels: int, draft_size: int | None, max_pixels: int) -> None:
    cost = decode_cost(data, draft_size=draft_size)
    assert isinstance(cost, int) and cost >= 0
    assert isinstance(decode_cost(data), int) and decode_cost(data) >= 0
    try:  # the time it takes is bounded by the test's deadline
        out = decode_bytes(data, channels, draft_size=draft_size, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        event(f"refused: {exc.kind}")  # counts shown by --hypothesis-show-statistics
        assert exc.kind in KINDS, exc.kind
        assert isinstance(exc.reason, str) and exc.reason.strip(), repr(exc.reason)
        assert "\n" not in exc.reason and "\r" not in exc.reason, repr(exc.reason)
        assert "\n" not in str(exc), repr(str(exc))
        return
    event(f"decoded: {out.format}")
    assert isinstance(out, DecodedImage)
    assert out.image.mode == ("RGB" if channels == 3 else "L"), out.image.mode
    w, h = out.image.size
    assert w > 0 and h > 0 and out.width > 0 and out.height > 0
    assert max(w, h) <= max(out.width, out.height) and w * h <= out.width * out.height, (out.image.size, out)
    assert out.format in set(FORMATS.values())
    out.image.tobytes()  # the pixels are really there


def test_every_seed_decodes() -> None:
    """The unmutated seeds are accepted, in every format this Pillow writes (the fuzz starts from them)."""
    names = {family(n) for n in SEEDS}
    assert {"jpeg", "png", "apng", "gif", "bmp", "tiff", "webp"} <= names
    for name, data in SEEDS.items():
        for channels in (1, 3):
            out = decode_bytes(data, channels, draft_size=16)
            assert out.image.mode == ("RGB" if channels == 3 else "L"), name
            assert out.width > 0 and out.height > 0


@pytest.mark.parametrize("profile", PROFILES)
def test_decode_bytes_never_fails_otherwise(profile: str) -> None:
    """decode_bytes returns an RGB/L image no larger than the header says, or refuses with a known kind and
    a one-line reason; nothing else escapes, and a decode takes at most DECODE_DEADLINE."""

    @fuzz(
        profile,
        "decode",
        DECODE_DEADLINE,
        data=ANY_IMAGE_BYTES,
        channels=st.sampled_from([1, 3]),
        draft_size=st.sampled_from([None, 16, 32, 224]),
        # a 16th of MAX_PIXELS, so that what is accepted decodes well within the deadline (an image at the full
        # limit takes up to ~1.5 s here: that cost is the policy's, and the server budgets it); the check is the same
        max_pixels=st.sampled_from([FUZZ_MAX_PIXELS, FUZZ_MAX_PIXELS, 4096]),
    )
    def prop(data: bytes, channels: int, draft_size: int | None, max_pixels: int) -> None:
        check_decode(data, channels, draft_size, max_pixels)

    prop()


# Failures the fuzzing found, as minimal reproducers (issue 13): each failed before its fix.
def _avif_without_primary_item() -> bytes:
    return _save(Image.new("RGB", (37, 23), (200, 30, 30)), "AVIF", quality=60, speed=10).replace(b"pitm", b"\0itm", 1)


def _heic_claiming(width: int, height: int) -> bytes:
    data = _save(Image.new("RGB", (37, 23), (200, 30, 30)), "HEIF", quality=60)
    i = data.index(b"ispe")
    return data[: i + 8] + struct.pack(">II", width, height) + data[i + 16 :]


_FOUND_BUGS = [  # found by the decode fuzz: the AVIF and HEIF decoders raise RuntimeError
    pytest.param(_avif_without_primary_item, "corrupt", id="avif-no-primary-item",
                 marks=pytest.mark.skipif(not features.check("avif"), reason="this Pillow does not write AVIF")),
    pytest.param(lambda: _heic_claiming(100_000, 100_000), "too-large", id="heic-huge-ispe",
                 marks=pytest.mark.skipif(not heif_available(), reason="pillow-heif is not installed")),
]  # fmt: skip


@pytest.mark.parametrize(("make", "kind"), _FOUND_BUGS)
def test_a_decoder_runtime_error_is_a_refusal(make, kind: str) -> None:
    """Before: RuntimeError escaped decode_bytes (and the upload was a 500)."""
    with pytest.raises(ImageDecodeError) as info:
        decode_bytes(make(), 3, draft_size=32)
    assert info.value.kind == kind


# -------------------------------------------------------------------------------------- the server
SECRET = b"LOOKALIKE-FUZZ-SECRET-7f3a9c"  # in a file outside the indexed folder (and linked from inside it)
_NEVER_SHOWN: list[bytes] = []  # set by the fixture: absolute paths of the folders the server uses
UPLOAD_LIMIT = 8 * 1024  # small, so that bodies over the cap are cheap to make


def _passwd_line() -> bytes | None:
    try:
        line = Path("/etc/passwd").read_bytes().splitlines()[0]
    except (OSError, IndexError):
        return None
    return line if len(line) >= 8 else None


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A tiny ``pixels`` index of 6 images, served with warm-up and reloads off; a secret file outside the
    folder, with a symbolic link to it inside (which indexing skips)."""
    from fastapi.testclient import TestClient

    from lookalike.search import Index
    from lookalike.server import ServerSettings, create_app

    tmp = tmp_path_factory.mktemp("fuzz")
    _NEVER_SHOWN[:] = [str(tmp).encode()]
    folder = tmp / "images"
    make_class_images(folder, per_class=3, size=20, seed=7)
    secret = tmp / "secret.png"
    info = PngInfo()
    info.add_text("secret", SECRET.decode())
    Image.new("RGB", (8, 8), (1, 2, 3)).save(secret, pnginfo=info)
    (tmp / "secret.txt").write_bytes(SECRET + b"\n")
    try:
        os.symlink(secret, folder / "warm" / "leak.png")
        os.symlink(tmp / "secret.txt", folder / "cool" / "leak.txt")
    except OSError:
        pass
    index = Index.build(folder, "pixels", tmp / "index", num_workers=0)
    assert len(index) == 6  # the links to files outside the folder are skipped
    app = create_app(
        index,
        ServerSettings(warm_up=False, reload_interval=0, max_upload_bytes=UPLOAD_LIMIT, cache_dir=tmp / "thumbs"),
    )
    files = {p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}
    with TestClient(app, follow_redirects=False, raise_server_exceptions=False) as client:  # a 500 is a status
        yield {"client": client, "index": index, "files": files, "valid": SEEDS["png"], "ids": sorted(index.entries)}


def assert_clean(response, allowed: set[int]) -> None:
    """The status is one the server uses (never 500), errors are one line of JSON, nothing leaks."""
    status = response.status_code
    event(f"status {status}")
    assert status in allowed, (status, response.text[:300])
    body = response.content
    assert SECRET not in body
    for text in _NEVER_SHOWN:  # the server's own folders: no message names them
        assert text not in body, (text, body[:300])
    passwd = _passwd_line()
    assert passwd is None or passwd not in body
    if status >= 400:
        assert response.headers["content-type"].startswith("application/json"), response.headers
        assert b"\n" not in body.strip(), body[:300]
        payload = response.json()
        assert set(payload) == {"error"}, payload
        assert isinstance(payload["error"], str) and payload["error"] and "\n" not in payload["error"], payload
    elif 300 <= status < 400:
        location = response.headers.get("location", "")
        assert (
            location.startswith("/") and not location.startswith("//") or location.startswith("http://testserver/")
        ), location


@pytest.mark.parametrize(("make", "kind"), _FOUND_BUGS)
def test_a_decoder_runtime_error_is_a_400_upload(fuzz_server: dict, make, kind: str) -> None:
    r = fuzz_server["client"].post("/api/search", files={"image": ("q.avif", make(), "image/avif")})
    assert_clean(r, {400})


def assert_idle(server: dict) -> None:
    """No upload or decode slot was leaked: a plain upload still works."""
    client = server["client"]
    state = client.app.state.lookalike
    assert state.uploads.active == 0 and state.decodes.active == 0
    r = client.post("/api/search", files={"image": ("q.png", server["valid"], "image/png")})
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------------ multipart
UPLOAD_STATUSES = {200, 400, 404, 413, 415, 503}  # the server answers validation errors 400, never 422

WEIRD_STRINGS = ["", " ", "..", "../", "../../etc/passwd", "..\\..\\x", "%2e%2e", "%2e%2e%2f", "\x00",
                 "a\x00b", "/etc/passwd", "C:\\x", "\r\n", "\"", "'", ";", "=", "é", "🙂", "\u202e", "\ufeff",
                 "x" * 300, "y" * 5000, "9" * 5000, "-1", "0", "1", "3", "1e9", "1.5", "nan", "inf", "-inf",
                 "true", "false", "None", "null", "[]", "{}", "cosine", "euclidean", "COSINE", "cosine ",
                 "%00", "%2F", "%5C", "....//", ".", "~", "$HOME", "{{7*7}}", "<script>"]  # fmt: skip
WEIRD_TEXT = st.one_of(
    st.sampled_from(WEIRD_STRINGS),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=40),
)
FIELD_NAMES = ["image", "image", "image", "k", "metric", "Image", "image[]", "images", "file", "", "image\x00",
               'im"age', "image ", "k\r\n", "🙂"]  # fmt: skip
FIELD_NAME = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=20))
FILENAME = st.one_of(st.none(), st.sampled_from(["q.png", "q.jpg", ""]), WEIRD_TEXT)
CONTENT_TYPE = st.one_of(
    st.none(),
    st.sampled_from(["image/png", "image/jpeg", "image/webp", "application/octet-stream", "text/plain", "image/svg+xml",
                     "multipart/form-data", "", "image/png; charset=utf-8", "image/*", "x/y; a=\"b", "text/html"]),
    st.text(max_size=30),
)  # fmt: skip


VALID_UPLOADS = [SEEDS["png"], SEEDS["jpeg"], SEEDS["gif"], SEEDS["webp"], SEEDS["bmp"]]
NORMAL_CONTENT_TYPES = ["image/png", "image/jpeg", "application/octet-stream"]


def _disposition(name: str, filename: str | None, style: str) -> str:
    header = f'name="{name}"' if style != "bare" else f"name={name}"
    if filename is not None:
        if style == "star":
            header += f"; filename*=UTF-8''{quote(filename, safe='')}"
        elif style == "bare":
            header += f"; filename={filename}"
        else:
            header += f'; filename="{filename}"'
    return header


@st.composite
def part(draw, clean: bool, name: str | None = None) -> bytes:
    """One part (headers, blank line, payload). ``clean``: a well-formed part a browser could send, with
    fuzzed values; otherwise anything goes in the headers too."""
    if name is None:
        name = draw(st.sampled_from(["image", "k", "metric"]) if clean else FIELD_NAME)
    if name in ("k", "metric") and (clean or draw(st.booleans())):
        payload = draw(WEIRD_TEXT).encode("utf-8", "surrogatepass")
        filename = None
    else:
        payload = draw(st.one_of(st.sampled_from(VALID_UPLOADS), ANY_IMAGE_BYTES))
        names = st.one_of(st.sampled_from(["q.png", "photo.jpg"]), FILENAME.filter(bool))
        filename = draw(names if clean else FILENAME)
    if draw(st.integers(0, 15)) == 0:  # over the upload limit
        payload += draw(st.binary(min_size=16, max_size=64)) * (UPLOAD_LIMIT // 16 + 1)
    if clean:
        lines = ["Content-Disposition: form-data; " + _disposition(name, filename, "quoted")]
        if filename is not None:
            lines.append("Content-Type: " + draw(st.sampled_from(NORMAL_CONTENT_TYPES) | CONTENT_TYPE.filter(bool)))
    else:
        disposition = draw(st.sampled_from(["form-data", "form-data", "attachment", "", "FORM-DATA"]))
        style = draw(st.sampled_from(["quoted", "bare", "star"]))
        lines = [f"Content-Disposition: {disposition}; " + _disposition(name, filename, style)]
        if not draw(st.integers(0, 9)):
            lines = []
        ctype = draw(CONTENT_TYPE)
        if ctype is not None:
            lines.append(f"Content-Type: {ctype}")
        if draw(st.integers(0, 5)) == 0:
            lines.append(draw(st.sampled_from(["Content-Transfer-Encoding: base64", "X-Junk: 1", "no colon", ":"])))
    head = "\r\n".join(lines).encode("utf-8", "surrogatepass")
    return head + b"\r\n\r\n" + payload


BOUNDARIES = ["fuzzboundary", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "a", "-", "x" * 70, "x" * 200, "with space",
              'quo"te', "é", "", "--", "a;b=c"]  # fmt: skip
BOUNDARY = st.one_of(st.sampled_from(BOUNDARIES), st.text(min_size=1, max_size=30))
OTHER_TYPES = ["application/x-www-form-urlencoded", "text/plain", "application/json", "multipart/mixed", "image/png",
               ""]  # fmt: skip


def _encode_parts(boundary: bytes, parts: list[bytes], eol: bytes = b"\r\n", close: bool = True) -> bytes:
    body = b"".join(b"--" + boundary + eol + p.replace(b"\r\n", eol) + eol for p in parts)
    return body + (b"--" + boundary + b"--" + eol if close else b"")


@st.composite
def clean_multipart(draw) -> tuple[bytes, bytes]:
    """A well-formed body with one image part (sometimes none, or two) and fuzzed k, metric, file name,
    content type and file."""
    boundary = draw(st.sampled_from(["fuzzboundary", "----WebKitFormBoundary7MA4YWxkTrZu0gW"]))
    parts = [draw(part(clean=True, name="image"))]
    parts += draw(st.lists(part(clean=True), max_size=3))
    parts = draw(st.permutations(parts))
    return f"multipart/form-data; boundary={boundary}".encode(), _encode_parts(boundary.encode(), parts)


@st.composite
def broken_multipart(draw) -> tuple[bytes, bytes]:
    """A more or less broken body: odd boundaries, wrong or missing ones, other types, random bytes,
    bare LF line ends, no closing delimiter, cut mid-part."""
    boundary = draw(BOUNDARY)
    shape = draw(st.sampled_from(["normal"] * 5 + ["wrong-boundary", "no-boundary", "other-type", "raw", "empty"]))
    if shape == "raw":
        body = draw(st.binary(max_size=2048))
    elif shape == "empty":
        body = b""
    else:
        parts = draw(st.lists(st.one_of(part(clean=False), part(clean=True)), max_size=4))
        body = draw(st.sampled_from([b"", b"", b"preamble\r\n"])) + _encode_parts(
            boundary.encode("utf-8", "surrogatepass"),
            parts,
            eol=b"\r\n" if draw(st.integers(0, 5)) else b"\n",
            close=bool(draw(st.integers(0, 4))),
        )
        if draw(st.integers(0, 2)) == 0:  # cut mid-part
            body = body[: draw(st.integers(0, len(body)))]
    if shape == "wrong-boundary":
        boundary = boundary + "x"
    quoted = f'"{boundary}"' if draw(st.booleans()) else boundary
    ctype = {
        "no-boundary": "multipart/form-data",
        "other-type": draw(st.sampled_from(OTHER_TYPES)) + draw(st.sampled_from(["", "; boundary=" + quoted])),
    }.get(shape, f"multipart/form-data; boundary={quoted}")
    if draw(st.integers(0, 9)) == 0:
        ctype = draw(st.text(max_size=60))
    return ctype.encode("utf-8", "surrogatepass"), body


multipart_request = st.one_of(clean_multipart(), broken_multipart())


@pytest.mark.parametrize("profile", PROFILES)
def test_upload_fuzz(fuzz_server: dict, profile: str) -> None:
    """POST /api/search with fuzzed multipart bodies: never a 500, errors are one line of JSON."""
    client = fuzz_server["client"]

    queries = st.sampled_from(["", "?k=2", "?metric=x"])

    @fuzz(profile, "http", REQUEST_DEADLINE, request=multipart_request, query=queries)
    def prop(request: tuple[bytes, bytes], query: str) -> None:
        ctype, body = request
        headers = {"content-type": ctype} if ctype else {}
        r = client.post("/api/search" + query, content=body, headers=headers)
        assert_clean(r, UPLOAD_STATUSES)
        if r.status_code == 200:
            assert isinstance(r.json()["hits"], list)

    prop()
    assert_idle(fuzz_server)


@pytest.mark.parametrize("profile", PROFILES)
def test_upload_fields_fuzz(fuzz_server: dict, profile: str) -> None:
    """Well-formed multipart (made by the HTTP client) with random fields, file names, types, k and metric."""
    client = fuzz_server["client"]
    field_value = st.one_of(WEIRD_TEXT, st.integers(-5, 200).map(str))

    @fuzz(
        profile,
        "http",
        REQUEST_DEADLINE,
        images=st.lists(
            st.tuples(
                st.sampled_from(["image", "image", "Image", "file", "k"]),
                st.text(max_size=30) | FILENAME.filter(lambda f: f is not None),
                st.one_of(st.just(SEEDS["png"]), st.just(SEEDS["jpeg"]), ANY_IMAGE_BYTES),
                st.sampled_from(["image/png", "image/jpeg", "text/plain", "application/octet-stream", ""]),
            ),
            max_size=3,
        ),
        fields=st.lists(
            st.tuples(st.sampled_from(["k", "metric", "k", "metric", "image", "other"]), field_value), max_size=4
        ),
    )
    def prop(images: list, fields: list) -> None:
        files = [(name, (fn, data, ct)) for name, fn, data, ct in images]
        data = {}
        for key, value in fields:  # httpx takes a list per key for repeats
            data.setdefault(key, []).append(value)
        try:
            r = client.post("/api/search", files=files or None, data=data or None)
        except (UnicodeEncodeError, ValueError, TypeError):  # the client refused to encode it: nothing was sent
            return
        assert_clean(r, UPLOAD_STATUSES)
        names = [name for name, *_ in images]
        plain = "image" not in data and not data.get("k") and data.get("metric") in (None, ["cosine"], ["euclidean"])
        if plain and names.count("image") == 1 and "k" not in names:
            # one real file (the client leaves an empty file name out, so such a part is a plain field)
            _, filename, payload, _ = images[names.index("image")]
            if filename and payload in (SEEDS["png"], SEEDS["jpeg"]):
                assert r.status_code == 200, r.text

    prop()
    assert_idle(fuzz_server)


# ------------------------------------------------------------------------------ queries and paths
GET_STATUSES = {200, 304, 307, 400, 404}


def _value(ids: list[int]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from([str(i) for i in ids]), WEIRD_TEXT)


def _raw_query(pairs: list[tuple[str, str]], encode: str) -> str:
    if encode == "quote":
        return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)
    if encode == "partial":
        return "&".join(f"{quote(k)}={quote(v, safe='/%.')}" for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in pairs)  # raw: the client encodes what it must


def _get(client, url: str, **kw):
    """The response, or None when the HTTP client refuses to send the URL (a control character, say: an
    HTTP server's parser refuses those before the app; their percent-encoded forms are fuzzed)."""
    import httpx

    try:
        return client.get(url, **kw)
    except (httpx.InvalidURL, UnicodeEncodeError, ValueError):
        return None


@pytest.mark.parametrize("profile", PROFILES)
def test_search_by_id_query_fuzz(fuzz_server: dict, profile: str) -> None:
    """GET /api/search with random id, k, metric, exclude_self and extra parameters."""
    client, ids = fuzz_server["client"], fuzz_server["ids"]
    keys = st.one_of(st.sampled_from(["id", "k", "metric", "exclude_self", "token", "page"]), WEIRD_TEXT)
    plausible = st.sampled_from(["1", "3", "12", "0", "-1", "101", "cosine", "euclidean", "true", "false", "1", "0"])
    one = st.tuples(keys, st.one_of(plausible, _value(ids)))
    valid_id = st.sampled_from(ids).map(lambda i: ("id", str(i)))
    pairs = st.one_of(  # mostly a real id and a few fuzzed parameters, sometimes anything at all
        st.builds(lambda first, rest: [first, *rest], valid_id, st.lists(one, max_size=4)).flatmap(st.permutations),
        st.lists(one, max_size=6),
    )

    @fuzz(profile, "http", REQUEST_DEADLINE, pairs=pairs, encode=st.sampled_from(["quote", "partial", "raw", "params"]))
    def prop(pairs: list[tuple[str, str]], encode: str) -> None:
        if encode == "params":
            r = _get(client, "/api/search", params=pairs)
        else:
            r = _get(client, "/api/search?" + _raw_query(pairs, encode))
        if r is None:
            return
        assert_clean(r, GET_STATUSES)
        if r.status_code == 200:
            body = r.json()
            assert body["query"]["id"] in ids and isinstance(body["hits"], list)

    prop()


@pytest.mark.parametrize("profile", PROFILES)
def test_image_pages_fuzz(fuzz_server: dict, profile: str) -> None:
    """GET /api/images with random page and per_page (and extras)."""
    client = fuzz_server["client"]
    number = st.one_of(st.integers(-(2**64), 2**64).map(str), WEIRD_TEXT)
    keys = st.one_of(st.sampled_from(["page", "per_page", "page", "per_page", "v"]), WEIRD_TEXT)

    @fuzz(profile, "http", REQUEST_DEADLINE, pairs=st.lists(st.tuples(keys, number), max_size=4),
          encode=st.sampled_from(["quote", "partial", "raw"]))  # fmt: skip
    def prop(pairs: list[tuple[str, str]], encode: str) -> None:
        r = _get(client, "/api/images?" + _raw_query(pairs, encode))
        if r is None:
            return
        assert_clean(r, GET_STATUSES)
        if r.status_code == 200:
            body = r.json()
            assert 1 <= body["page"] <= body["pages"] and body["total"] == len(fuzz_server["ids"])
            assert 1 <= body["per_page"] <= 200 and len(body["images"]) <= body["per_page"]

    prop()


HOSTILE_SEGMENTS = ["../secret.png", "..%2fsecret.png", "%2e%2e/secret.png", "%2e%2e%2fsecret.txt",
                   "images/warm/leak.png", "warm/leak.png", "..%252f..%252fetc%252fpasswd", "%c0%ae%c0%ae/",
                   "app.js", "../../../../etc/passwd", "..\\..\\etc\\passwd", "0/../1", "1%00", "0x1", "+1",
                   "01", "١", "1 ", " 1", "1.0", "1e0", "index.html", "style.css"]  # fmt: skip
PREFIXES = ["/api/images/", "/thumbs/", "/api/images/", "/thumbs/", "/static/", "/docs-assets/", "/api/search/", "/"]


@pytest.mark.parametrize("profile", PROFILES)
def test_file_paths_fuzz(fuzz_server: dict, profile: str) -> None:
    """GET /api/images/{x}, /thumbs/{x} and the static folders with random x: only indexed files (or the
    package's own assets) are ever sent."""
    client, ids, files = fuzz_server["client"], fuzz_server["ids"], fuzz_server["files"]
    segment = st.one_of(
        _value(ids),
        st.sampled_from(HOSTILE_SEGMENTS),
    )

    @fuzz(
        profile,
        "http",
        REQUEST_DEADLINE,
        prefix=st.sampled_from(PREFIXES),
        x=segment,
        encode=st.sampled_from(["raw", "quote", "quote-all"]),
        query=st.one_of(st.just(""), st.builds(lambda k, v: f"?{quote(k)}={quote(v)}", WEIRD_TEXT, WEIRD_TEXT)),
    )
    def prop(prefix: str, x: str, encode: str, query: str) -> None:
        path = {"raw": x, "quote": quote(x, safe="/%"), "quote-all": quote(x, safe="")}[encode]
        r = _get(client, prefix + path + query)
        if r is None:
            return
        assert_clean(r, GET_STATUSES)
        check_served_file(r.status_code, r.request.url.path, r.headers, r.content, files)

    prop()


def check_served_file(status: int, sent_path: str, headers, content: bytes, files: set[bytes]) -> None:
    """A 200 for an image route is an indexed file's bytes, or a thumbnail (the client may have removed dot
    segments, so the path that was sent decides the route)."""
    if status != 200:
        return
    if sent_path.startswith("/api/images/") and sent_path.count("/") == 3:
        assert content in files, (sent_path, len(content))
    if sent_path.startswith("/thumbs/") and sent_path.count("/") == 2:
        assert headers["content-type"] in ("image/png", "image/jpeg"), headers


class RawResponse:
    """What :func:`raw_get` returns: enough of httpx's Response for :func:`assert_clean`."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], content: bytes) -> None:
        self.status_code = status
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
        self.content = content
        self.text = content.decode("utf-8", "replace")

    def json(self):
        import json

        return json.loads(self.content)


def raw_get(client, target: bytes) -> RawResponse:
    """GET a request target exactly as given (no dot-segment removal, no re-encoding, as ``curl
    --path-as-is`` sends it), decoded into the ASGI scope the way uvicorn does."""
    from urllib.parse import unquote

    import anyio

    raw_path, _, query = target.partition(b"?")
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": unquote(raw_path.decode("ascii")), "raw_path": raw_path, "query_string": query,
        "root_path": "", "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }  # fmt: skip
    out: dict = {"body": b""}

    async def call() -> None:
        done = anyio.Event()
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                out["status"], out["headers"] = message["status"], message.get("headers", [])
            elif message["type"] == "http.response.body":
                out["body"] += message.get("body", b"")
                if not message.get("more_body", False):
                    done.set()

        try:
            await client.app(scope, receive, send)
        finally:
            done.set()

    client.portal.call(call)
    return RawResponse(out["status"], out["headers"], out["body"])


# What an HTTP/1.1 parser (h11) lets through in a request target: visible ASCII, no spaces.
TARGET_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
RAW_NAMES = ["..", "..", ".", "", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "..%2f", "..%2F", "%2f", "%5c", "..%5c",
               "%00", "%252e%252e", "%c0%ae%c0%ae", "etc", "passwd", "secret.png", "secret.txt", "images",
               "warm", "leak.png", "0", "1", "5", "app.js", "index.html", "style.css", "swagger-ui.css",
               "~", "%7e", "%20", "?", "#", "//", ";", "..;"]  # fmt: skip
RAW_SEGMENTS = st.one_of(
    st.sampled_from(RAW_NAMES),
    st.text(TARGET_CHARS, max_size=12),
)


@pytest.mark.parametrize("profile", PROFILES)
def test_raw_paths_fuzz(fuzz_server: dict, profile: str) -> None:
    """Request targets sent as they are (dot segments, encoded dots and slashes, stray bytes): never a 500,
    and never a file outside the indexed folder."""
    client, files = fuzz_server["client"], fuzz_server["files"]

    @fuzz(
        profile,
        "http",
        REQUEST_DEADLINE,
        prefix=st.sampled_from(PREFIXES + ["", "/api/", "/api/images"]),
        segments=st.lists(RAW_SEGMENTS, max_size=6),
        query=st.one_of(st.just(""), st.text(TARGET_CHARS, max_size=30).map(lambda q: "?" + q)),
    )
    def prop(prefix: str, segments: list[str], query: str) -> None:
        target = prefix + "/".join(segments) + query
        if not target.startswith("/"):
            target = "/" + target
        r = raw_get(client, target.encode("ascii"))
        assert_clean(r, GET_STATUSES)
        path = r.headers.get("location", "") if 300 <= r.status_code < 400 else target.partition("?")[0]
        check_served_file(r.status_code, path, r.headers, r.content, files)

    prop()
