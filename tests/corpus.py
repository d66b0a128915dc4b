"""A corpus of bad and odd input files, generated at run time, each with the outcome lookalike must give.

:func:`build_corpus` writes every kind of awkward file this project has met or can imagine (broken and
truncated files, decompression bombs, every Pillow mode, animations, EXIF orientations, colour profiles,
polyglots, formats that are not accepted, hostile and odd file names, links, special files) into one
folder, and returns a :class:`Case` per file saying what indexing it must do:

- ``indexed``: it is in the catalog. With a ``twin``, its decoded pixels equal those of a plain, upright
  reference file written beside it (``refs/``), within ``max_mean_error`` (0-255 units, mean absolute
  error at the pixels extractor's 32x32 input), and a search with it finds the twin in the top 2.
- ``skipped``: it is not in the catalog, it is recorded and reported as skipped, and its reason contains
  ``reason`` (lowercase; ``a|b`` means either substring).
- ``ignored``: it is never considered: not in the catalog, not skipped, not named in any output.

``lenient`` cases may be indexed or skipped (with any reason) but must never make a run slow or crash.
``upload`` is the HTTP status (or statuses) ``POST /api/search`` must answer with the file's bytes as the
upload, or None where the file has no bytes to upload (a FIFO, a dangling link, a 300 MiB file).
Cases that cannot be made here (HEIC without pillow-heif, an unreadable file when running as root) are
returned with ``unavailable`` set to why, and nothing written.

Everything is small (a few MB on disk; the 300 MiB file is sparse) and made in a couple of seconds.
Pictures are 32-64 px of seeded coloured blobs, different for every case, so search can tell them apart.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

EXPECTS = ("indexed", "skipped", "ignored")
MiB = 1 << 20


@dataclass
class Case:
    """One file of the corpus and the outcome it must have."""

    name: str  # short id, unique
    rel: str  # path relative to the corpus root, "/"-separated (non-UTF-8 bytes as os.fsdecode gives them)
    expect: str  # "indexed" | "skipped" | "ignored"
    twin: str | None = None  # rel of the reference file whose pixels this one's must equal (indexed only)
    max_mean_error: float = 0.0  # tolerance of that comparison, mean absolute error in 0-255 units
    reason: str | None = None  # skipped: lowercase substring(s) of the reason, "a|b" = either
    note: str = ""  # what the case is about
    lenient: bool = False  # indexed or skipped are both fine (never slow, never a crash)
    upload: int | tuple[int, ...] | None = None  # HTTP status(es) of POST /api/search with these bytes
    unavailable: str = ""  # why this case could not be made here (then nothing was written)

    @property
    def is_reference(self) -> bool:
        """A plain reference picture (the twin of another case), not a kind of odd input itself."""
        return self.name.startswith("ref:")

    def reason_matches(self, text: str) -> bool:
        """Whether a skip reason (or error message) says what this case expects."""
        if not self.reason:
            return True
        return any(part in text.lower() for part in self.reason.split("|"))

    def uploads(self) -> tuple[int, ...]:
        """The acceptable statuses of uploading the file (empty: not uploaded)."""
        if self.upload is None:
            return ()
        return self.upload if isinstance(self.upload, tuple) else (self.upload,)


# ------------------------------------------------------------------------------------------- pictures
def _seed(name: str) -> int:
    return zlib.crc32(name.encode("utf-8", "surrogateescape"))


def picture(name: str, size: tuple[int, int] = (48, 32)) -> Image.Image:
    """A smooth RGB picture (a gradient and a few saturated blobs), different for every ``name``."""
    rng = np.random.default_rng(_seed(name))
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (xx / max(w - 1, 1) * rng.uniform(0.2, 1) + yy / max(h - 1, 1) * rng.uniform(0.2, 1))[..., None] / 2
    arr = c0 * (1 - t) + c1 * t
    for _ in range(4):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(h * 0.15, h * 0.45), rng.uniform(w * 0.15, w * 0.45)
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        colour = rng.permutation([rng.uniform(200, 255), rng.uniform(0, 80), rng.uniform(0, 255)])
        arr[blob] = colour
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def grey(name: str, size: tuple[int, int] = (48, 32)) -> Image.Image:
    """The picture of ``name`` as 8-bit greyscale."""
    return picture(name, size).convert("L")


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def jpeg(im: Image.Image, **kwargs) -> bytes:
    """A high-quality 4:4:4 JPEG (so decoded pixels stay within a few levels of the picture)."""
    kwargs.setdefault("quality", 95)
    if im.mode in ("RGB", "YCbCr"):
        kwargs.setdefault("subsampling", 0)
    return encode(im, "JPEG", **kwargs)


def on_white(im: Image.Image) -> Image.Image:
    """An image with alpha composited onto white, as RGB (what decoding must give)."""
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


# ------------------------------------------------------------------------------------- raw file bytes
def png_chunk(kind: bytes, data: bytes, *, crc: int | None = None) -> bytes:
    value = zlib.crc32(kind + data) & 0xFFFFFFFF if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", value)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, data) chunks of a PNG file."""
    out, pos = [], len(PNG_SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return PNG_SIGNATURE + b"".join(png_chunk(k, d) for k, d in chunks)


def zeros_deflated(n: int, level: int = 9) -> bytes:
    """``n`` zero bytes, deflated (zlib), without holding them in memory."""
    comp = zlib.compressobj(level)
    block = b"\0" * MiB
    out = []
    for start in range(0, n, MiB):
        out.append(comp.compress(block[: min(MiB, n - start)]))
    out.append(comp.flush())
    return b"".join(out)


def png_bilevel_black(width: int, height: int) -> bytes:
    """A complete, valid 1-bit greyscale PNG of ``width`` x ``height`` black pixels (tiny when compressed)."""
    row = 1 + (width + 7) // 8  # filter byte + packed bits; all zero
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zeros_deflated(row * height))
        + png_chunk(b"IEND", b"")
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def png_rgb48(im: Image.Image) -> bytes:
    """A 16-bit-per-channel RGB PNG (colour type 2, depth 16) of an 8-bit RGB picture (x257)."""
    arr = np.asarray(im.convert("RGB")).astype(">u2") * 257
    h, w, _ = arr.shape
    raw = b"".join(b"\0" + arr[y].tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b"")
    )


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0/SOF2) is patched to claim ``width`` x ``height``."""
    out = bytearray(data)
    pos = 2
    while pos < len(out):
        marker = out[pos + 1]
        (length,) = struct.unpack(">H", out[pos + 2 : pos + 4])
        if marker in (0xC0, 0xC1, 0xC2):
            out[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
            return bytes(out)
        pos += 2 + length
    raise ValueError("no SOF marker")


def bmp_with_size(data: bytes, width: int, height: int) -> bytes:
    """A BMP whose BITMAPINFOHEADER is patched to claim ``width`` x ``height`` (the pixel data stays small)."""
    out = bytearray(data)
    out[18:26] = struct.pack("<ii", width, height)
    return bytes(out)


def gif_with_screen(data: bytes, width: int, height: int) -> bytes:
    """A GIF whose logical screen is patched to ``width`` x ``height``."""
    out = bytearray(data)
    out[6:10] = struct.pack("<HH", width, height)
    return bytes(out)


def gif_js_polyglot(im: Image.Image) -> bytes:
    """A file that is both a valid GIF and valid JavaScript: ``GIF89a/*...*/=alert(1);``.

    The logical screen width is the bytes ``/*`` (10799 px) and the height 10 px; the JavaScript comment
    closes in a GIF comment extension, and the script follows the GIF trailer.
    """
    gif = bytearray(encode(im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "GIF"))
    assert gif[:3] == b"GIF"
    gif[:6] = b"GIF89a"  # extensions need 89a
    gif[6:10] = b"/*" + struct.pack("<H", 10)
    flags = gif[10]
    header_end = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    comment = b"\x21\xfe" + bytes([4]) + b"*/=1" + b"\x00"  # GIF comment extension holding "*/=1"
    body = bytes(gif[:header_end]) + comment + bytes(gif[header_end:])
    return body + b";alert(document.domain);//"


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("readme.txt", "a ZIP archive appended to an image\n" * 20)
        zf.writestr("evil/../../x.sh", "#!/bin/sh\necho pwned\n")
    return buf.getvalue()


HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script><img src=x onerror=alert(1)></body></html>\n"
SVG = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="48" height="32">'
    b'<rect width="48" height="32" fill="red"/><script>alert(1)</script></svg>\n'
)
PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 48 32]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)


# --------------------------------------------------------------------------------------- ICC profiles
def _s15(v: float) -> bytes:
    return struct.pack(">i", int(round(v * 65536)))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + b"\0" * 4 + _s15(x) + _s15(y) + _s15(z)


def _desc(text: str) -> bytes:
    ascii_ = text.encode() + b"\0"
    return b"desc" + b"\0" * 4 + struct.pack(">I", len(ascii_)) + ascii_ + struct.pack(">IIHB", 0, 0, 0, 0) + b"\0" * 67


def matrix_shaper_icc(name: str, red, green, blue, gamma: float, white=(0.9642, 1.0, 0.8249)) -> bytes:
    """A minimal ICC v2 RGB display profile: D50-adapted primaries and one gamma curve for all channels."""
    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, int(round(gamma * 256))) + b"\0\0"
    tags = [
        (b"desc", _desc(name)), (b"cprt", b"text" + b"\0" * 4 + b"No copyright, use freely\0"),
        (b"wtpt", _xyz(*white)), (b"rXYZ", _xyz(*red)), (b"gXYZ", _xyz(*green)), (b"bXYZ", _xyz(*blue)),
        (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
    ]  # fmt: skip
    offset = 128 + 4 + 12 * len(tags)
    table, blobs = b"", b""
    for sig, data in tags:
        blobs += b"\0" * (-(offset + len(blobs)) % 4)
        table += sig + struct.pack(">II", offset + len(blobs), len(data))
        blobs += data
    body = struct.pack(">I", len(tags)) + table + blobs
    header = (
        struct.pack(">I", 128 + len(body)) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntr" + b"RGB " + b"XYZ "
        + b"\0" * 12 + b"acsp" + b"\0" * 24 + b"\0" * 4 + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48
    )  # fmt: skip
    assert len(header) == 128
    return header + body


# Adobe RGB (1998): its published D50-adapted primaries and gamma 563/256 (2.2).
ADOBE_RGB_ICC = matrix_shaper_icc(
    "Adobe RGB (1998) compatible (lookalike test corpus)",
    (0.60974, 0.31111, 0.01947), (0.20528, 0.62567, 0.06087), (0.14919, 0.06322, 0.74457), 563 / 256,
)  # fmt: skip


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def to_profile(im: Image.Image, icc: bytes) -> Image.Image:
    """sRGB pixels converted into the colour space of an ICC profile."""
    srgb = ImageCms.createProfile("sRGB")
    dest = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    return ImageCms.profileToProfile(im, srgb, dest, outputMode="RGB")


def saturated_picture(name: str, size: tuple[int, int] = (48, 32)) -> Image.Image:
    """Flat saturated areas, where a missing colour conversion shows most."""
    rng = np.random.default_rng(_seed(name))
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    colours = [(255, 0, 0), (0, 200, 0), (30, 60, 250), (250, 220, 0), (0, 220, 230), (200, 0, 200)]
    order = rng.permutation(len(colours))
    for k, (x0, y0) in enumerate([(0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2)]):
        arr[y0 : y0 + h // 2, x0 : x0 + w // 2] = colours[order[k]]
    return Image.fromarray(arr, "RGB")


# --------------------------------------------------------------------------------------- EXIF helpers
# What ImageOps.exif_transpose does for each orientation; the stored pixels are the inverse of it.
ORIENTATION_TO_UPRIGHT = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
UPRIGHT_TO_STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def exif_with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def stored_for_orientation(upright: Image.Image, orientation: int) -> Image.Image:
    op = UPRIGHT_TO_STORED[orientation]
    return upright if op is None else upright.transpose(op)


# ----------------------------------------------------------------------------------------- the corpus
class _Writer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cases: list[Case] = []

    def path(self, rel: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def add(self, case: Case, data: bytes | None = None) -> Case:
        if any(c.name == case.name for c in self.cases):
            raise ValueError(f"duplicate case name {case.name}")
        if data is not None and not case.unavailable:
            self.path(case.rel).write_bytes(data)
        self.cases.append(case)
        return case

    def ref(self, name: str, im: Image.Image) -> str:
        """Write the plain reference picture of case ``name`` (a lossless PNG) and return its rel."""
        rel = f"refs/{name}.png"
        self.add(Case(f"ref:{name}", rel, "indexed", note=f"reference picture of {name}", upload=200),
                 encode(im, "PNG"))  # fmt: skip
        return rel

    def image(self, name: str, rel: str, data: bytes, reference: Image.Image, tol: float, note: str, **kw) -> Case:
        """An indexed case whose pixels must equal ``reference`` (written to refs/) within ``tol``."""
        twin = self.ref(name, reference)
        kw.setdefault("upload", 200)
        return self.add(Case(name, rel, "indexed", twin=twin, max_mean_error=tol, note=note, **kw), data)

    def skipped(self, name: str, rel: str, data: bytes | None, reason: str, note: str, **kw) -> Case:
        return self.add(Case(name, rel, "skipped", reason=reason, note=note, **kw), data)

    def ignored(self, name: str, rel: str, data: bytes | None, note: str, **kw) -> Case:
        return self.add(Case(name, rel, "ignored", note=note, **kw), data)


def outside_folder(root: Path) -> Path:
    """The folder beside the corpus holding the targets of links that leave it."""
    return root.parent / f"{root.name}-outside"


def build_corpus(root: Path, *, heavy: bool = False, special_files: bool = True) -> list[Case]:
    """Write the corpus into ``root`` (created; should be empty) and return its cases.

    Args:
        root: the folder to fill. Link targets outside it go to :func:`outside_folder` (``root`` + ``-outside``).
        heavy: add the cases that cost real time or memory to decode (a 64,000,000-pixel image exactly at
            the limit, an 8-bit 20000x20000 PNG).
        special_files: add the FIFO and the link to /dev/zero (which block or never end when read naively).

    Returns:
        Every case, references included (``Case.is_reference``); unavailable ones have ``unavailable`` set.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    w = _Writer(root)
    _broken(w)
    _polyglots(w)
    _bombs(w, heavy)
    _sizes(w)
    _modes(w)
    _frames(w)
    _exif_and_icc(w)
    _formats(w)
    _names(w)
    _ignored(w)
    _links(w, special_files)
    return w.cases


def _broken(w: _Writer) -> None:
    w.skipped("zero_byte", "broken/empty.jpg", b"", "empty|not an image", "a zero-byte file", upload=400)
    full = jpeg(picture("truncated_jpeg", (64, 64)), quality=90)
    w.skipped("truncated_jpeg", "broken/truncated.jpg", full[: len(full) // 2], "truncated|corrupt",
              "the first half of a JPEG", upload=400)  # fmt: skip
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    full = encode(noise, "PNG")
    w.skipped("truncated_png", "broken/truncated.png", full[: len(full) // 2], "truncated|corrupt",
              "the first half of a PNG (its IDAT cut short, no IEND)", upload=400)  # fmt: skip
    w.skipped("truncated_png_header", "broken/header_only.png", full[:20], "truncated|corrupt|not an image",
              "the PNG signature and half an IHDR chunk", upload=(400, 415))  # fmt: skip
    im = picture("jpeg_trailing_garbage")
    w.image("jpeg_trailing_garbage", "broken/trailing_garbage.jpg", jpeg(im) + os.urandom(4096), im, 4,
            "4 KiB of random bytes after the JPEG's EOI marker")  # fmt: skip

    chunks = png_chunks(encode(picture("png_bad_crc_ihdr"), "PNG"))
    data = PNG_SIGNATURE + b"".join(png_chunk(k, d, crc=0xDEADBEEF if k == b"IHDR" else None) for k, d in chunks)
    w.skipped("png_bad_crc_ihdr", "broken/bad_crc_ihdr.png", data, "crc|corrupt", "the IHDR chunk's CRC is wrong",
              upload=400)  # fmt: skip
    chunks = png_chunks(encode(picture("png_bad_crc_idat"), "PNG"))
    data = PNG_SIGNATURE + b"".join(png_chunk(k, d, crc=0xDEADBEEF if k == b"IDAT" else None) for k, d in chunks)
    w.add(Case("png_bad_crc_idat", "broken/bad_crc_idat.png", "skipped", reason="crc|corrupt", lenient=True,
               upload=(200, 400), note="the IDAT chunk's CRC is wrong (pixels intact; Pillow does not check "
               "IDAT CRCs, libpng does): indexed or skipped"), data)  # fmt: skip
    im = picture("png_no_iend")
    data = PNG_SIGNATURE + b"".join(png_chunk(k, d) for k, d in png_chunks(encode(im, "PNG")) if k != b"IEND")
    w.skipped("png_no_iend", "broken/no_iend.png", data, "truncated",
              "a complete PNG without its IEND chunk: decoded strictly, as truncated", upload=400)  # fmt: skip
    w.skipped("text_as_jpg", "broken/text.jpg", b"this is not a JPEG, just text\n" * 20, "not an image",
              "a text file named .jpg", upload=415)  # fmt: skip
    w.skipped("html_as_png", "broken/page.png", HTML, "not an image|unsupported", "an HTML page named .png",
              upload=415)  # fmt: skip
    w.skipped("svg_as_png", "broken/vector.png", SVG, "not an image|unsupported", "an SVG drawing named .png",
              upload=415)  # fmt: skip
    w.skipped("pdf_as_jpg", "broken/document.jpg", PDF, "not an image|unsupported", "a PDF named .jpg", upload=415)
    w.skipped("random_as_gif", "broken/random.gif", np.random.default_rng(2).bytes(3000), "not an image",
              "3000 random bytes named .gif", upload=415)  # fmt: skip
    full = encode(picture("truncated_gif", (64, 64)).convert("P", palette=Image.Palette.ADAPTIVE), "GIF")
    w.skipped("truncated_gif", "broken/truncated.gif", full[: len(full) // 2], "truncated|corrupt",
              "the first half of a GIF", upload=400)  # fmt: skip
    full = encode(picture("truncated_webp", (64, 64)), "WEBP", quality=90)
    w.skipped("truncated_webp", "broken/truncated.webp", full[: len(full) // 2], "truncated|corrupt",
              "the first half of a WebP", upload=400)  # fmt: skip
    w.skipped("bad_name_skipped", "broken/bad\nname.jpg", b"not a JPEG either\n" * 10, "not an image",
              "an unreadable file with a newline in its name: still reported on one line", upload=415)  # fmt: skip


def _polyglots(w: _Writer) -> None:
    im = picture("jpeg_zip")
    w.image("jpeg_zip", "polyglot/with_zip.jpg", jpeg(im) + zip_bytes(), im, 4, "a JPEG with a ZIP archive appended")
    im = picture("png_zip")
    w.image("png_zip", "polyglot/with_zip.png", encode(im, "PNG") + zip_bytes(), im, 0.5,
            "a PNG with a ZIP archive appended")  # fmt: skip
    im = picture("jpeg_html")
    w.image("jpeg_html", "polyglot/with_html.jpg", jpeg(im) + HTML, im, 4, "a JPEG with an HTML page appended")
    im = picture("jpeg_php_comment")
    data = jpeg(im, comment=b"<?php system($_GET['c']); ?><script>alert(1)</script>")
    w.image("jpeg_php_comment", "polyglot/php_comment.jpg", data, im, 4, "PHP and a script in a JPEG COM segment")
    w.add(Case("gif_js", "polyglot/gif_js.gif", "indexed", upload=200,
               note="a GIF that is also valid JavaScript (GIF89a/*...*/=alert(1)): 10799x10 logical screen"),
          gif_js_polyglot(picture("gif_js", (32, 10))))  # fmt: skip


def _bombs(w: _Writer, heavy: bool) -> None:
    w.skipped("png_bomb_20000", "bombs/png_20000.png", png_bilevel_black(20000, 20000), "pixels",
              "a valid 1-bit 20000x20000 PNG (400 M pixels) in 50 KB", upload=400)  # fmt: skip
    w.skipped("png_bomb_9000", "bombs/png_9000.png", png_bilevel_black(9000, 9000), "pixels",
              "a valid 1-bit 9000x9000 PNG: 81 M pixels, over the 64 M limit but under Pillow's own bomb check",
              upload=400)  # fmt: skip
    w.skipped("png_header_100000", "bombs/header_100000.png", png_header_only(100000, 100000), "pixels",
              "a PNG header claiming 100000x100000 with almost no data", upload=400)  # fmt: skip
    small = jpeg(picture("jpeg_header"))
    w.skipped("jpeg_header_65000", "bombs/jpeg_65000.jpg", jpeg_with_size(small, 65000, 65000), "pixels",
              "a JPEG frame header claiming 65000x65000", upload=400)  # fmt: skip
    w.skipped("jpeg_header_9000", "bombs/jpeg_9000.jpg", jpeg_with_size(small, 9000, 9000),
              "pixels|truncated|corrupt", "a JPEG frame header claiming 9000x9000 (81 M pixels, under Pillow's "
              "own bomb check) over the data of a 48x32 one, then EOI: decoded at 1/8 scale it needs 1.3 M "
              "pixels, and libjpeg pads the missing data with grey without an error, so indexing it is "
              "tolerated, and the server accepts it the same way (one policy: pixels to decode)", lenient=True,
              upload=(200, 400))  # fmt: skip
    bmp = encode(picture("bmp_header"), "BMP")
    w.skipped("bmp_header_30000", "bombs/bmp_30000.bmp", bmp_with_size(bmp, 30000, 30000), "pixels",
              "a BMP header claiming 30000x30000", upload=400)  # fmt: skip
    w.skipped("bmp_header_10000x8000", "bombs/bmp_80mp.bmp", bmp_with_size(bmp, 10000, 8000), "pixels",
              "a BMP header claiming 10000x8000 (80 M pixels, under Pillow's own bomb check)", upload=400)  # fmt: skip
    gif = encode(picture("gif_header").convert("P", palette=Image.Palette.ADAPTIVE), "GIF")
    w.skipped("gif_screen_65535", "bombs/gif_65535.gif", gif_with_screen(gif, 65535, 65535), "pixels",
              "a GIF logical screen of 65535x65535", upload=400)  # fmt: skip

    def with_text_chunks(name: str, extra: list[tuple[bytes, bytes]], after_idat: bool) -> bytes:
        chunks = png_chunks(encode(picture(name), "PNG"))
        at = next(i for i, (k, _) in enumerate(chunks) if k == b"IDAT") + (1 if after_idat else 0)
        return png_from_chunks(chunks[:at] + extra + chunks[at:])

    ztxt = b"Comment\0\0" + zeros_deflated(128 * MiB)
    w.add(Case("ztxt_bomb", "bombs/ztxt_bomb.png", "indexed", lenient=True, upload=(200, 400),
               note="a 48x32 PNG with a zTXt chunk inflating to 128 MiB (130 KB on disk): indexed or skipped, "
               "never slow or unbounded"), with_text_chunks("ztxt_bomb", [(b"zTXt", ztxt)], False))  # fmt: skip
    many = [(b"zTXt", b"Comment%d\0\0" % i + zeros_deflated(MiB - 1024)) for i in range(100)]
    w.add(Case("ztxt_many", "bombs/ztxt_many.png", "indexed", lenient=True, upload=(200, 400),
               note="100 zTXt chunks of almost 1 MiB each (100 MiB of text in 100 KB)"),
          with_text_chunks("ztxt_many", many, False))  # fmt: skip
    itxt = b"Description\0\x01\0en\0Description\0" + zeros_deflated(128 * MiB)
    w.add(Case("itxt_bomb_after_idat", "bombs/itxt_after_idat.png", "indexed", lenient=True, upload=(200, 400),
               note="a compressed iTXt chunk inflating to 128 MiB, after the image data"),
          with_text_chunks("itxt_bomb_after_idat", [(b"iTXt", itxt)], True))  # fmt: skip

    big = w.path("bombs/big.png")
    big.write_bytes(encode(picture("big_sparse"), "PNG"))
    os.truncate(big, 300 * MiB)
    w.add(Case("big_sparse_300mib", "bombs/big.png", "skipped", reason="limit", upload=None,
               note="a valid PNG followed by zeros to 300 MiB (a sparse file: no disk used), over the 256 MiB "
               "file limit"))  # fmt: skip

    if heavy:
        w.add(Case("png_64mp_exactly", "bombs/png_8000.png", "indexed", upload=400,
                   note="a valid 1-bit 8000x8000 PNG: exactly 64,000,000 pixels, the most that is decoded "
                   "(the server's own limit is lower)"), png_bilevel_black(8000, 8000))  # fmt: skip
        row = 1 + 20000
        ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
        data = PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zeros_deflated(row * 20000, 6))
        w.skipped("png_bomb_20000_8bit", "bombs/png_20000_8bit.png", data + png_chunk(b"IEND", b""), "pixels",
                  "a valid 8-bit 20000x20000 grey PNG (400 MB of pixels in 390 KB)", upload=400)  # fmt: skip


def _sizes(w: _Writer) -> None:
    w.add(Case("one_by_one", "sizes/one.png", "indexed", upload=200, note="a 1x1 image"),
          encode(Image.new("RGB", (1, 1), (200, 30, 90)), "PNG"))  # fmt: skip
    strip = np.linspace(0, 255, 60000).astype(np.uint8)
    w.add(Case("strip_1x60000", "sizes/strip_1x60000.png", "indexed", upload=200,
               note="1 pixel wide, 60000 high (indexed, or skipped with a reason if the library refuses)"),
          encode(Image.fromarray(strip.reshape(60000, 1)), "PNG"))  # fmt: skip
    w.add(
        Case("strip_60000x1", "sizes/strip_60000x1.png", "indexed", upload=200, note="60000 pixels wide, 1 high"),
        encode(Image.fromarray(strip.reshape(1, 60000)[:, ::-1].copy()), "PNG"),
    )
    im = picture("tiny_2x3", (2, 3))
    w.image("tiny_2x3", "sizes/tiny_2x3.jpg", jpeg(im), im, 8, "a 2x3 JPEG (smaller than one 8x8 block)")


def _modes(w: _Writer) -> None:
    g = grey("i16_png")
    arr = np.asarray(g).astype(np.uint16) * 257
    data = encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    w.image("i16_png", "modes/grey16.png", data, g, 1, "16-bit greyscale PNG (I;16)")

    g = grey("f_tiff")
    w.image("f_tiff", "modes/float.tif", encode(Image.fromarray(np.asarray(g, np.float32) / 255, "F"), "TIFF"),
            g, 1, "32-bit float greyscale TIFF (F), values 0..1")  # fmt: skip
    g = grey("f_tiff_nan")
    arr = np.asarray(g, np.float32) / 255
    arr.flat[np.random.default_rng(3).choice(arr.size, arr.size // 100, replace=False)] = np.nan
    w.image("f_tiff_nan", "modes/float_nan.tif", encode(Image.fromarray(arr, "F"), "TIFF"), g, 8,
            "float TIFF with NaN in 1% of its pixels")  # fmt: skip
    g = grey("i32_tiff")
    arr = np.asarray(g).astype(np.int32) * 257
    w.image("i32_tiff", "modes/int32.tif", encode(Image.fromarray(arr, "I"), "TIFF"), g, 1,
            "32-bit integer TIFF (I) holding 16-bit data")  # fmt: skip
    im = picture("cmyk_jpeg")
    w.image("cmyk_jpeg", "modes/cmyk.jpg", encode(im.convert("CMYK"), "JPEG", quality=95), im, 8,
            "CMYK JPEG (Adobe APP14 inverted, no profile)")  # fmt: skip
    im = picture("lab_tiff")
    srgb, lab = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
    lab_im = ImageCms.applyTransform(im, ImageCms.buildTransform(srgb, lab, "RGB", "LAB"))
    w.image("lab_tiff", "modes/lab.tif", encode(lab_im, "TIFF"), im, 4, "CIE L*a*b* TIFF (mode LAB)")
    im = picture("ycbcr_tiff")
    w.image("ycbcr_tiff", "modes/ycbcr.tif", encode(im.convert("YCbCr"), "TIFF"), im, 3, "YCbCr TIFF, uncompressed")
    im = picture("jpeg_in_tiff")
    w.image("jpeg_in_tiff", "modes/jpeg_compressed.tif", encode(im, "TIFF", compression="jpeg", quality=95), im, 8,
            "JPEG-compressed TIFF")  # fmt: skip
    im = picture("ycbcr_jpeg")
    w.image("ycbcr_jpeg", "modes/ycbcr.jpg", encode(im.convert("YCbCr"), "JPEG", quality=95, subsampling=0), im, 8,
            "a JPEG written from a YCbCr image")  # fmt: skip
    bw = grey("bilevel_png").point(lambda v: 255 if v > 110 else 0).convert("1")
    w.image("bilevel_png", "modes/bilevel.png", encode(bw, "PNG"), bw.convert("L"), 0.5, "1-bit PNG")
    g = grey("grey_jpeg")
    w.image("grey_jpeg", "modes/grey.jpg", jpeg(g), g, 4, "8-bit greyscale JPEG")

    pal = picture("palette_trns").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    arr = np.asarray(pal)
    pal_rgba = pal.convert("RGBA")
    t = int(arr[0, 0])
    alpha = np.where(arr == t, 0, 255).astype(np.uint8)
    rgba = np.dstack([np.asarray(pal_rgba)[..., :3], alpha])
    w.image("palette_trns_png", "modes/palette_trns.png", encode(pal, "PNG", transparency=t),
            on_white(Image.fromarray(rgba, "RGBA")), 0.5, "palette PNG with a transparent index (tRNS)")  # fmt: skip
    pal = picture("palette_png").convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    w.image("palette_png", "modes/palette.png", encode(pal, "PNG"), pal.convert("RGB"), 0.5, "opaque palette PNG")

    g = grey("la_png")
    a = np.asarray(grey("la_png:alpha").point(lambda v: 0 if v < 90 else (128 if v < 160 else 255)))
    la = Image.fromarray(np.dstack([np.asarray(g), a]), "LA")
    w.image("la_png", "modes/grey_alpha.png", encode(la, "PNG"), on_white(la), 1, "greyscale + alpha PNG (LA)")
    im = picture("rgba_png")
    a = np.asarray(grey("rgba_png:alpha").point(lambda v: 0 if v < 90 else (100 if v < 160 else 255)))
    rgba = Image.fromarray(np.dstack([np.asarray(im), a]), "RGBA")
    w.image("rgba_png", "modes/rgba.png", encode(rgba, "PNG"), on_white(rgba), 1,
            "RGBA PNG with transparent and half-transparent areas: alpha onto white")  # fmt: skip
    im = picture("rgba_webp")
    a = np.asarray(grey("rgba_webp:alpha").point(lambda v: 0 if v < 100 else 255))
    rgba = Image.fromarray(np.dstack([np.asarray(im), a]), "RGBA")
    w.image("rgba_webp", "modes/rgba.webp", encode(rgba, "WEBP", lossless=True, exact=True), on_white(rgba), 1,
            "lossless WebP with alpha")  # fmt: skip
    im = picture("rgb48_png")
    w.image("rgb48_png", "modes/rgb48.png", png_rgb48(im), im, 1, "16 bits per channel RGB PNG")
    im = picture("bmp_rgb")
    w.image("bmp_rgb", "modes/plain.bmp", encode(im, "BMP"), im, 0.5, "24-bit BMP")
    pal = picture("bmp_palette").convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    w.image("bmp_palette", "modes/palette.bmp", encode(pal, "BMP"), pal.convert("RGB"), 0.5, "8-bit palette BMP")


def _frames(w: _Writer) -> None:
    def frames(name: str, n: int = 3, colors: int | None = None) -> list[Image.Image]:
        out = [picture(f"{name}:{i}") for i in range(n)]
        if colors:
            out = [f.convert("P", palette=Image.Palette.ADAPTIVE, colors=colors) for f in out]
        return out

    fs = frames("gif_anim", colors=64)
    data = encode(fs[0], "GIF", save_all=True, append_images=fs[1:], duration=80, loop=0)
    w.image("gif_anim", "frames/anim.gif", data, fs[0].convert("RGB"), 0.5, "animated GIF, 3 frames: the first")
    fs = frames("webp_anim")
    data = encode(fs[0], "WEBP", save_all=True, append_images=fs[1:], duration=80, loop=0, lossless=True)
    w.image("webp_anim", "frames/anim.webp", data, fs[0], 1, "animated lossless WebP: the first frame")
    fs = frames("apng")
    data = encode(fs[0], "PNG", save_all=True, append_images=fs[1:], duration=80, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    w.image("apng", "frames/anim.png", data, fs[0], 0.5, "APNG: the first frame")
    fs = frames("tiff_multipage")
    data = encode(fs[0], "TIFF", save_all=True, append_images=fs[1:])
    w.image("tiff_multipage", "frames/pages.tif", data, fs[0], 0.5, "3-page TIFF: the first page")
    fs = frames("mpo", 2)
    data = encode(fs[0], "MPO", save_all=True, append_images=fs[1:], quality=95, subsampling=0)
    w.image("mpo", "frames/stereo.jpg", data, fs[0], 4, "MPO (multi-picture JPEG): the first picture")


def _exif_and_icc(w: _Writer) -> None:
    for o in range(1, 9):
        name = f"exif_orientation_{o}"
        upright = picture(name, (48, 32))
        data = jpeg(stored_for_orientation(upright, o), exif=exif_with_orientation(o))
        w.image(
            name,
            f"exif/orientation_{o}.jpg",
            data,
            upright,
            8,
            f"JPEG with EXIF orientation {o}: stored pixels transformed so that applying it gives the picture",
        )
    upright = picture("exif_png_orientation_6")
    data = encode(stored_for_orientation(upright, 6), "PNG", exif=exif_with_orientation(6))
    w.image("exif_png_orientation_6", "exif/orientation_6.png", data, upright, 0.5,
            "PNG with an eXIf chunk saying orientation 6")  # fmt: skip
    upright = picture("exif_webp_orientation_3")
    data = encode(stored_for_orientation(upright, 3), "WEBP", lossless=True, exif=exif_with_orientation(3))
    w.image("exif_webp_orientation_3", "exif/orientation_3.webp", data, upright, 1, "WebP with EXIF orientation 3")
    im = picture("exif_corrupt")
    junk = b"Exif\0\0MM\0*\0\0\0\x08\x7f\xff" + np.random.default_rng(4).bytes(200)
    w.image("exif_corrupt", "exif/corrupt.jpg", jpeg(im, exif=junk), im, 4,
            "a JPEG whose EXIF block is garbage after a valid TIFF header")  # fmt: skip
    im = picture("exif_truncated")
    w.image("exif_truncated", "exif/truncated_exif.jpg", jpeg(im, exif=exif_with_orientation(6)[:12]), im, 4,
            "a JPEG whose EXIF block stops inside its first IFD")  # fmt: skip
    im = picture("exif_orientation_9")
    w.image("exif_orientation_9", "exif/orientation_9.jpg", jpeg(im, exif=exif_with_orientation(9)), im, 4,
            "an out-of-range orientation value (9): the picture as stored")  # fmt: skip
    im = picture("exif_orientation_0")
    w.image("exif_orientation_0", "exif/orientation_0.jpg", jpeg(im, exif=exif_with_orientation(0)), im, 4,
            "orientation value 0 (invalid): the picture as stored")  # fmt: skip

    # The same picture as an sRGB JPEG and as an Adobe RGB (1998) JPEG: the profile must be applied.
    im = saturated_picture("icc")
    srgb_rel = "icc/srgb.jpg"
    w.add(Case("icc_srgb", srgb_rel, "indexed", upload=200, note="sRGB JPEG with an embedded sRGB profile; the twin "
               "of icc_adobe_rgb"), jpeg(im, icc_profile=srgb_icc()))  # fmt: skip
    w.add(Case("icc_adobe_rgb", "icc/adobe_rgb.jpg", "indexed", twin=srgb_rel, max_mean_error=6, upload=200,
               note="the same picture converted to Adobe RGB (1998) with that profile embedded: decoding must "
               "convert it back to sRGB (without the profile its pixels are ~20 levels off)"),
          jpeg(to_profile(im, ADOBE_RGB_ICC), icc_profile=ADOBE_RGB_ICC))  # fmt: skip
    im = picture("icc_corrupt")
    w.image("icc_corrupt", "icc/corrupt_profile.jpg", jpeg(im, icc_profile=b"\0\0\x02\0lcms" + b"\xab" * 500), im, 4,
            "a JPEG with a garbage ICC profile: the pixels as stored")  # fmt: skip
    im = picture("icc_png_adobe")
    data = encode(to_profile(im, ADOBE_RGB_ICC), "PNG", icc_profile=ADOBE_RGB_ICC)
    w.image("icc_png_adobe", "icc/adobe_rgb.png", data, im, 2, "a PNG in Adobe RGB (1998) with an iCCP chunk")


def _formats(w: _Writer) -> None:
    im = picture("png_bytes_as_jpg")
    w.image("png_bytes_as_jpg", "formats/png_bytes.jpg", encode(im, "PNG"), im, 0.5, "PNG bytes named .jpg")
    im = picture("jpeg_bytes_as_png")
    w.image("jpeg_bytes_as_png", "formats/jpeg_bytes.png", jpeg(im), im, 4, "JPEG bytes named .png")
    im = picture("webp_as_gif")
    w.image("webp_as_gif", "formats/webp_bytes.gif", encode(im, "WEBP", lossless=True), im, 1, "WebP bytes named .gif")
    im = picture("progressive_jpeg")
    w.image("progressive_jpeg", "formats/progressive.jpg", jpeg(im, progressive=True), im, 4, "progressive JPEG")
    im = picture("optimized_jpeg")
    w.image("optimized_jpeg", "formats/restart_markers.jpeg", jpeg(im, optimize=True, restart_marker_blocks=1), im, 4,
            "JPEG with optimised Huffman tables and a restart marker after every block (.jpeg)")  # fmt: skip
    im = picture("webp_lossy")
    w.image("webp_lossy", "formats/lossy.webp", encode(im, "WEBP", quality=95), im, 8, "lossy WebP")
    im = picture("avif")
    w.image("avif", "formats/picture.avif", encode(im, "AVIF", quality=95, subsampling="4:4:4"), im, 8,
            "AVIF (.avif, accepted)")  # fmt: skip
    if _heic_unavailable():
        w.add(Case("heic", "formats/picture.heic", "indexed", upload=200, note="HEIC, with pillow-heif",
                   unavailable=_heic_unavailable()))  # fmt: skip
    else:
        im = picture("heic")
        w.image("heic", "formats/picture.heic", _heic_bytes(im), im, 8, "HEIC (pillow-heif is installed)")

    im = picture("unsupported")
    for name, rel, fmt, kw in (
        ("jpeg2000_as_jpg", "formats/jpeg2000.jpg", "JPEG2000", {}),
        ("ico_as_png", "formats/icon.png", "ICO", {"sizes": [(32, 32)]}),
        ("tga_as_jpg", "formats/targa.jpg", "TGA", {}),
        ("ppm_as_png", "formats/pixmap.png", "PPM", {}),
        ("pcx_as_bmp", "formats/paintbrush.bmp", "PCX", {}),
        ("jpeg2000_as_tif", "formats/jpeg2000.tif", "JPEG2000", {"irreversible": True}),
    ):
        data = encode(picture(name), fmt, **kw)
        assert Image.open(io.BytesIO(data)).format in (fmt, "JPEG2000"), name
        w.skipped(name, rel, data, "unsupported", f"a {fmt} file named {Path(rel).suffix}: Pillow reads it, "
                  "lookalike does not accept it", upload=415)  # fmt: skip
    del im
    w.ignored("jpeg2000_own_ext", "formats/picture.jp2", encode(picture("jp2"), "JPEG2000"),
              "JPEG 2000 with its own extension: not a candidate", upload=415)  # fmt: skip
    w.ignored("ico_own_ext", "formats/favicon.ico", encode(picture("ico"), "ICO"), "an icon (.ico)", upload=415)
    w.ignored("tga_own_ext", "formats/picture.tga", encode(picture("tga"), "TGA"), "a Targa file (.tga)", upload=415)


def _heic_unavailable() -> str:
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        return "pillow_heif is not installed (no HEIC encoder or decoder)"
    return ""


def _heic_bytes(im: Image.Image) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    return encode(im, "HEIF", quality=95)


NON_UTF8_NAME = os.fsdecode(b"bad_\xff\xfe.png")


def _names(w: _Writer) -> None:
    names = {
        "unicode_name": "café 日本.png",
        "nfd_name": "cafe\u0301 nfd.png",
        "newline_name": "new\nline.png",
        "tab_name": "tab\tname.jpg",
        "spaces_name": "  spaced  out .png",
        "dash_rf": "-rf.png",
        "dash_help": "--help.jpg",
        "long_name": "L" * 246 + ".png",
        "non_utf8_name": NON_UTF8_NAME,
        "html_name": "<img src=x onerror=alert(1)>.png",
        "pct_dotdot": "%2e%2e%2f%2e%2e%2fetc.png",
        "dotdot_inside": "a..b.png",
        "quotes_name": 'it\'s "quoted".png',
        "glob_name": "[x]*?.png",
        "backslash_name": "back\\slash..\\x.png",
        "escape_name": "\x1b[31mred\x1b[0m.png",
        "markup_name": "[bold red]markup[/].png",
        "emoji_name": "🙂 smile.webp",
        "bidi_name": "evil\u202egnp.png",
        "upper_ext": "UPPER.PNG",
        "mixed_ext": "Mixed.JpEg",
        "semicolon_name": "a;rm -rf ~;b.png",
        "dollar_name": "$(id)`id`.png",
    }
    for name, filename in names.items():
        im = picture(name)
        ext = os.path.splitext(filename)[1].lower()
        data = (
            jpeg(im)
            if ext in (".jpg", ".jpeg")
            else encode(im, "WEBP", lossless=True)
            if ext == ".webp"
            else encode(im, "PNG")
        )
        w.add(Case(name, f"names/{filename}", "indexed", upload=200, note=f"a file named {filename!r}"), data)
    w.add(Case("html_folder", "names/<b>x</b>/pic.png", "indexed", upload=200,
               note="HTML in folder names: '<b>x<' holding 'b>' (the label is '<b>x</b>')"),
          encode(picture("html_folder"), "PNG"))  # fmt: skip
    w.add(Case("folder_named_png", "names/folder.png/inner.jpg", "indexed", upload=200,
               note="a folder whose name ends in .png (the folder is no file; its image is indexed)"),
          jpeg(picture("folder_named_png")))  # fmt: skip
    deep = "/".join(f"d{i:02d}" for i in range(1, 41))
    w.add(Case("deep_folders", f"deep/{deep}/deep.png", "indexed", upload=200, note="40 levels of folders"),
          encode(picture("deep_folders"), "PNG"))  # fmt: skip


def _ignored(w: _Writer) -> None:
    png = encode(picture("ignored"), "PNG")
    w.ignored("hidden_file", ".hidden.png", png, "a hidden file (a real image)", upload=200)
    w.ignored("hidden_folder", ".git/x.png", png, "an image in a hidden folder", upload=200)
    w.ignored("hidden_subfolder", "names/.thumbs/y.jpg", jpeg(picture("ignored")), "a hidden folder deeper down",
              upload=200)  # fmt: skip
    w.ignored("dot_png", "sizes/.png", png, "a file named just '.png' (hidden)", upload=200)
    w.ignored("text_file", "notes.txt", b"some notes\n", "a text file", upload=415)
    w.ignored("double_ext", "broken/image.png.txt", png, "an image named .png.txt", upload=200)
    w.ignored("no_ext", "broken/noext", png, "an image without an extension", upload=200)
    w.ignored("trailing_space_ext", "broken/trailing.png ", png, "'.png ' (a space after the extension) is no "
              "image extension", upload=200)  # fmt: skip
    w.ignored("json_file", "broken/data.json", b'{"a": 1}', "a JSON file", upload=415)


def _links(w: _Writer, special_files: bool) -> None:
    root = w.root
    outside = outside_folder(root)
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "outside.png").write_bytes(encode(picture("outside_target"), "PNG"))
    (outside / "sub").mkdir(exist_ok=True)
    (outside / "sub" / "o.png").write_bytes(encode(picture("outside_dir_target"), "PNG"))

    im = picture("hardlink")
    w.add(Case("hardlink_original", "dups/original.png", "indexed", twin="dups/hardlink.png", upload=200,
               note="a file with a second hard link"), encode(im, "PNG"))  # fmt: skip
    w.path("dups/hardlink.png")
    os.link(root / "dups/original.png", root / "dups/hardlink.png")
    w.add(Case("hardlink", "dups/hardlink.png", "indexed", twin="dups/original.png", upload=200,
               note="a hard link to dups/original.png: both indexed"))  # fmt: skip
    data = jpeg(picture("duplicate"))
    w.add(Case("duplicate_a", "dups/copy_a.jpg", "indexed", twin="dups/copy_b.jpg", upload=200,
               note="the same bytes as dups/copy_b.jpg"), data)  # fmt: skip
    w.add(Case("duplicate_b", "dups/copy_b.jpg", "indexed", twin="dups/copy_a.jpg", upload=200,
               note="the same bytes as dups/copy_a.jpg"), data)  # fmt: skip

    w.add(Case("link_target", "links/target.png", "indexed", twin="links/inside.png", upload=200,
               note="the target of links/inside.png"), encode(picture("link_target"), "PNG"))  # fmt: skip

    def link(rel: str, target: str | Path, *, directory: bool = False) -> None:
        os.symlink(target, w.path(rel), target_is_directory=directory)

    link("links/inside.png", "target.png")
    w.add(Case("symlink_inside", "links/inside.png", "indexed", twin="links/target.png", upload=200,
               note="a relative symbolic link to a file inside the folder"))  # fmt: skip
    link("links/outside.png", outside / "outside.png")
    w.add(
        Case(
            "symlink_outside",
            "links/outside.png",
            "skipped",
            reason="outside",
            upload=200,
            note="a symbolic link to a file outside the folder (indexed only with --follow-symlinks)",
        )
    )
    link("links/outside_relative.png", os.path.relpath(outside / "outside.png", root / "links"))
    w.add(
        Case(
            "symlink_outside_relative",
            "links/outside_relative.png",
            "skipped",
            reason="outside",
            upload=200,
            note="a relative link (../../corpus-outside/outside.png) leaving the folder",
        )
    )
    link("links/dangling.png", "does-not-exist.png")
    w.add(Case("symlink_dangling", "links/dangling.png", "skipped", reason="broken", note="a dangling link"))
    link("links/loop.png", "loop.png")
    w.add(Case("symlink_loop_self", "links/loop.png", "skipped", reason="loop", note="a link to itself"))
    link("links/loop_a.jpg", "loop_b.jpg")
    link("links/loop_b.jpg", "loop_a.jpg")
    w.add(Case("symlink_loop_a", "links/loop_a.jpg", "skipped", reason="loop", note="two links pointing at each other"))
    w.add(Case("symlink_loop_b", "links/loop_b.jpg", "skipped", reason="loop", note="two links pointing at each other"))
    link("links/dirlink", "../frames", directory=True)
    w.add(Case("symlink_folder_inside", "links/dirlink", "ignored", note="a link to a folder inside: not followed"))
    link("links/outdir", outside / "sub", directory=True)
    w.add(Case("symlink_folder_outside", "links/outdir", "ignored", note="a link to a folder outside: not followed"))

    if special_files:
        if os.path.exists("/dev/zero"):
            link("links/zero.jpg", "/dev/zero")
            w.add(Case("symlink_dev_zero", "links/zero.jpg", "skipped", reason="not a regular file|outside",
                       note="a link to /dev/zero (reading it never ends)"))  # fmt: skip
        if hasattr(os, "mkfifo"):
            os.mkfifo(w.path("links/fifo.jpg"))
            w.add(Case("fifo", "links/fifo.jpg", "skipped", reason="not a regular file",
                       note="a FIFO named .jpg (reading it blocks forever)"))  # fmt: skip

    unreadable = "perm/noread.png"
    if os.geteuid() == 0:
        w.add(Case("no_read_permission", unreadable, "skipped", reason="permission", upload=200,
                   unavailable="running as root, which reads every file"))  # fmt: skip
    else:
        w.add(Case("no_read_permission", unreadable, "skipped", reason="permission", upload=None,
                   note="a file without read permission"), encode(picture("noread"), "PNG"))  # fmt: skip
        os.chmod(root / unreadable, 0)
