"""Tests for lookalike.data: finding image files, decoding every Pillow mode, preprocessing, batching."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lookalike.config import Preprocessing
from lookalike.data import (
    IMAGE_EXTENSIONS,
    arrays_to_pixels,
    collate_images,
    decode_image,
    denormalize,
    find_images,
    image_loader,
    load_pixels,
    normalize,
    scan_images,
)
from lookalike.errors import ImageDecodeError, LookalikeError

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def save(im: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kwargs)
    return path


def solid(color=RED, size=(8, 8), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def noise(size=(64, 48), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def rgb(im: Image.Image) -> np.ndarray:
    assert im.mode == "RGB"
    return np.asarray(im).astype(int)


# ------------------------------------------------------------------------------------------ find_images
PIL_FORMAT = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".avif": "AVIF",
    ".heic": "PNG",
    ".heif": "PNG",
}  # fmt: skip (finding goes by name; the bytes decide the format)


def test_find_images_recursive_all_extensions_sorted(tmp_path):
    expected = []
    for i, ext in enumerate(sorted(IMAGE_EXTENSIONS)):
        for name in (f"img{i}{ext}", f"UP{i}{ext.upper()}"):
            sub = tmp_path / ("deep/er" if i % 2 else "top")
            expected.append(save(solid(), sub / name, format=PIL_FORMAT[ext]))
    assert len(expected) == 2 * len(IMAGE_EXTENSIONS)
    save(solid(), tmp_path / "root.png")
    expected.append(tmp_path / "root.png")
    # hidden files and folders, and non-images, are skipped
    save(solid(), tmp_path / ".hidden.png")
    save(solid(), tmp_path / ".cache" / "a.png")
    save(solid(), tmp_path / "top" / ".thumbs" / "b.jpg", format="JPEG")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "top" / "image.png.txt").write_text("hello")
    (tmp_path / "top" / "noext").write_bytes(b"\x89PNG")

    found = find_images(tmp_path)
    assert found == sorted(p.resolve() for p in expected)
    assert found == sorted(found)
    assert all(p.is_absolute() for p in found)


def test_scan_follows_links_inside_skips_links_out_unless_asked_never_folder_links(tmp_path):
    outside = tmp_path / "outside"
    save(solid(), outside / "elsewhere.png")
    root = tmp_path / "root"
    save(solid(), root / "real.png")
    try:
        os.symlink(outside / "elsewhere.png", root / "link.png")
        os.symlink(root / "real.png", root / "inside.png")
        os.symlink(outside, root / "linked_dir", target_is_directory=True)
        os.symlink(root / "gone.png", root / "dangling.png")
        os.symlink(root / "loop_b.png", root / "loop_a.png")
        os.symlink(root / "loop_a.png", root / "loop_b.png")
    except OSError:  # pragma: no cover - platforms without symlinks
        pytest.skip("symlinks not available")
    scan = scan_images(root)
    assert [p.name for p in scan.files] == ["inside.png", "real.png"]
    reasons = {p.name: why for p, why in scan.skipped}
    assert set(reasons) == {"link.png", "dangling.png", "loop_a.png", "loop_b.png"}
    assert "outside the folder" in reasons["link.png"] and "--follow-symlinks" in reasons["link.png"]
    assert "broken symbolic link" in reasons["dangling.png"]
    assert reasons["loop_a.png"] == reasons["loop_b.png"] == "symbolic link loop"
    followed = scan_images(root, follow_symlinks=True)
    assert [p.name for p in followed.files] == ["inside.png", "link.png", "real.png"]
    assert [p.name for p in find_images(root)] == ["inside.png", "real.png"]


def test_scan_reports_special_files_without_opening_them(tmp_path):
    save(solid(), tmp_path / "ok.png")
    os.mkfifo(tmp_path / "fifo.jpg")
    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    scan = scan_images(tmp_path)  # would block forever on the FIFO, or read /dev/zero without end
    assert [p.name for p in scan.files] == ["ok.png"]
    reasons = {p.name: why for p, why in scan.skipped}
    assert reasons == {
        "fifo.jpg": "not a regular file (FIFO)",
        "zero.jpg": "not a regular file (a link to a character device)",
    }


def test_find_images_errors_name_the_path_and_reason(tmp_path):
    messages = []

    missing = tmp_path / "missing"
    with pytest.raises(LookalikeError, match="does not exist") as exc:
        find_images(missing)
    messages.append(str(exc.value))
    assert str(missing) in str(exc.value)

    a_file = save(solid(), tmp_path / "file.png")
    with pytest.raises(LookalikeError, match="not a folder") as exc:
        find_images(a_file)
    messages.append(str(exc.value))
    assert str(a_file) in str(exc.value)

    empty = tmp_path / "empty"
    (empty / "sub" / "subsub").mkdir(parents=True)
    with pytest.raises(LookalikeError, match="empty") as exc:
        find_images(empty)
    messages.append(str(exc.value))
    assert str(empty) in str(exc.value)

    only_text = tmp_path / "text"
    only_text.mkdir()
    (only_text / "readme.md").write_text("x")
    (only_text / ".hidden.png").write_bytes(b"")
    with pytest.raises(LookalikeError, match="no images") as exc:
        find_images(only_text)
    messages.append(str(exc.value))
    assert str(only_text) in str(exc.value)

    reasons = [m.split(": ", 1)[1] for m in messages]
    assert len(set(reasons)) == 4


# ----------------------------------------------------------------------------------------- decoding
def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 8, 8))  # mark the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = save(stored, tmp_path / "rotated.jpg", format="JPEG", exif=exif.tobytes(), quality=95)

    im = decode_image(path)
    assert im.size == (20, 40)
    px = rgb(im)
    # rotating 90 degrees clockwise moves the stored top-left corner to the top-right
    assert px[2, 17, 0] > 200 and px[2, 17, 2] < 60
    assert px[2, 2, 2] > 200 and px[2, 2, 0] < 60
    assert px[37, 17, 2] > 200

    pixels, _ = load_pixels(path, Preprocessing(image_size=8, interpolation="nearest"))
    assert pixels[0, 0, 7] > 200 and pixels[2, 0, 7] < 60  # still top-right after resizing
    assert pixels[2, 0, 0] > 200


def test_palette_png_transparent_index_becomes_white(tmp_path):
    im = Image.new("P", (4, 2), 0)
    im.putpalette([0, 0, 0, *RED, *GREEN] + [0] * (256 - 3) * 3)
    im.putpixel((1, 0), 1)
    im.putpixel((2, 0), 2)
    path = save(im, tmp_path / "pal.png", transparency=0)
    px = rgb(decode_image(path))
    assert tuple(px[0, 0]) == WHITE  # index 0 is transparent black -> white
    assert tuple(px[1, 3]) == WHITE
    assert tuple(px[0, 1]) == RED
    assert tuple(px[0, 2]) == GREEN

    opaque = save(im, tmp_path / "opaque.png")
    assert tuple(rgb(decode_image(opaque))[0, 0]) == (0, 0, 0)


@pytest.mark.parametrize("mode, key, other", [("L", 0, 100), ("RGB", (0, 0, 0), (10, 20, 30))])
def test_transparent_colour_key_becomes_white(tmp_path, mode, key, other):
    im = Image.new(mode, (2, 1), key)
    im.putpixel((1, 0), other)
    path = save(im, tmp_path / f"{mode}.png", transparency=key)
    assert Image.open(path).info.get("transparency") == key
    expected = other if isinstance(other, tuple) else (other,) * 3
    px = rgb(decode_image(path))
    assert tuple(px[0, 0]) == WHITE and tuple(px[0, 1]) == expected
    pixels, _ = load_pixels(path, Preprocessing(image_size=4, interpolation="nearest"))
    assert np.all(pixels[:, :, :2] == 255) and tuple(pixels[:, 0, 3]) == expected


def test_rgba_composited_on_white(tmp_path):
    im = Image.new("RGBA", (3, 1))
    im.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])
    px = rgb(decode_image(save(im, tmp_path / "a.png")))
    assert tuple(px[0, 0]) == WHITE
    assert tuple(px[0, 1]) == BLUE
    assert np.all(np.abs(px[0, 2] - 127) <= 1)


def test_la_composited_on_white(tmp_path):
    im = Image.new("LA", (3, 1))
    im.putdata([(0, 0), (0, 255), (0, 128)])
    path = save(im, tmp_path / "la.png")
    assert Image.open(path).mode == "LA"
    grey = np.asarray(decode_image(path, channels=1)).astype(int)
    assert grey[0, 0] == 255 and grey[0, 1] == 0 and abs(grey[0, 2] - 127) <= 1
    assert tuple(rgb(decode_image(path))[0, 0]) == WHITE


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(a), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    grey = np.asarray(decode_image(path, channels=1)).astype(int)
    assert grey[0, 0] == 0
    assert grey[0, 1] == 1
    assert abs(grey[0, 2] - 128) <= 1
    assert grey[0, 3] == 255
    px = rgb(decode_image(path))
    assert tuple(px[0, 3]) == WHITE and abs(px[0, 2, 1] - 128) <= 1


def test_32_bit_integer_image(tmp_path):
    a = np.array([[0, 1000, 40000, 65535]], dtype=np.int32)
    path = save(Image.fromarray(a, mode="I"), tmp_path / "i32.tif")
    assert Image.open(path).mode == "I"
    grey = np.asarray(decode_image(path, channels=1)).astype(int)
    assert list(grey[0]) == [0, 4, 156, 255]  # 16-bit data in 32-bit ints, scaled by 65535

    small = np.array([[0, 100, 200]], dtype=np.int32)  # 8-bit data in an I image stays as it is
    path = save(Image.fromarray(small, mode="I"), tmp_path / "i8.tif")
    assert list(np.asarray(decode_image(path, channels=1))[0]) == [0, 100, 200]


def test_float_image(tmp_path):
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    path = save(Image.fromarray(unit, mode="F"), tmp_path / "f.tif")
    assert Image.open(path).mode == "F"
    grey = np.asarray(decode_image(path, channels=1)).astype(int)
    assert grey[0, 0] == 0 and abs(grey[0, 1] - 128) <= 1 and grey[0, 2] == 255

    wide = np.array([[0.0, 100.0, 255.0]], dtype=np.float32)  # 0..255 data is kept as is
    path = save(Image.fromarray(wide, mode="F"), tmp_path / "f255.tif")
    assert list(np.asarray(decode_image(path, channels=1))[0]) == [0, 100, 255]


def test_one_bit_image(tmp_path):
    im = Image.new("1", (2, 1), 0)
    im.putpixel((1, 0), 1)
    path = save(im, tmp_path / "bw.png")
    assert Image.open(path).mode == "1"
    px = rgb(decode_image(path))
    assert tuple(px[0, 0]) == (0, 0, 0) and tuple(px[0, 1]) == WHITE


def test_cmyk_jpeg(tmp_path):
    path = save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", format="JPEG")
    assert Image.open(path).mode == "CMYK"
    im = decode_image(path)
    assert im.size == (16, 16)
    r, g, b = rgb(im)[8, 8]
    assert r > 200 and g < 60 and b < 60


def test_animated_gif_first_frame(tmp_path):
    frames = [solid(RED), solid(BLUE), solid(GREEN)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3
    px = rgb(decode_image(path))
    assert tuple(px[4, 4]) == RED
    pixels, _ = load_pixels(path, Preprocessing(image_size=8))
    assert pixels.shape == (3, 8, 8) and np.all(pixels[0] == 255) and np.all(pixels[2] == 0)


def test_greyscale_model_from_rgb(tmp_path):
    path = save(solid(RED, (10, 6)), tmp_path / "red.png")
    im = decode_image(path, channels=1)
    assert im.mode == "L"
    assert abs(int(np.asarray(im)[0, 0]) - 76) <= 1  # ITU-R 601 luma of pure red
    pixels, _ = load_pixels(path, Preprocessing(image_size=8, channels=1))
    assert pixels.shape == (1, 8, 8) and pixels.dtype == np.uint8
    assert np.all(np.abs(pixels.astype(int) - 76) <= 1)


def test_decode_from_bytes_names_the_given_file():
    buf = io.BytesIO()
    solid(GREEN).save(buf, format="PNG")
    assert tuple(rgb(decode_image(buf.getvalue()))[0, 0]) == GREEN
    with pytest.raises(ImageDecodeError, match="photo.jpg"):
        decode_image(b"not an image", name="photo.jpg")


def _truncated(tmp_path: Path, fmt: str, ext: str) -> Path:
    buf = io.BytesIO()
    noise((128, 128)).save(buf, format=fmt)
    data = buf.getvalue()
    path = tmp_path / f"truncated{ext}"
    path.write_bytes(data[: len(data) // 2])
    return path


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    text = tmp_path / "text.jpg"
    text.write_text("this is not a JPEG, just text\n" * 20)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    folder = tmp_path / "x.png"
    folder.mkdir()
    return {
        "text": text,
        "truncated jpeg": _truncated(tmp_path, "JPEG", ".jpg"),
        "truncated png": _truncated(tmp_path, "PNG", ".png"),
        "empty": empty,
        "folder": folder,
        "missing": tmp_path / "missing.jpg",
    }


@pytest.mark.parametrize("kind", ["text", "truncated jpeg", "truncated png", "empty", "folder", "missing"])
def test_bad_files_raise_image_decode_error(tmp_path, kind):
    path = _bad_files(tmp_path)[kind]
    for call in (lambda: decode_image(path), lambda: load_pixels(path, Preprocessing(image_size=8))):
        with pytest.raises(ImageDecodeError) as exc:
            call()
        assert str(path) in str(exc.value)
        assert exc.value.reason and len(exc.value.reason) > 5
        assert isinstance(exc.value, LookalikeError)
    if kind == "folder":
        assert "folder" in exc.value.reason
    if kind == "missing":
        assert "not found" in exc.value.reason


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = save(solid(RED, (64, 64)), tmp_path / "bomb.png")
    assert decode_image(path).size == (64, 64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageDecodeError, match="refused: more than 200 pixels to decode") as exc:
        load_pixels(path, Preprocessing(image_size=8))
    assert str(path) in str(exc.value)


# ------------------------------------------------------------------------------------- preprocessing
@pytest.fixture
def wide_image(tmp_path) -> Path:
    im = Image.new("RGB", (90, 30), BLUE)
    im.paste(RED, (0, 0, 30, 30))  # red left third
    return save(im, tmp_path / "wide.png")


def test_squash_keeps_the_whole_image(wide_image):
    pixels, digest = load_pixels(wide_image, Preprocessing(image_size=12, resize="squash"))
    assert pixels.shape == (3, 12, 12) and pixels.dtype == np.uint8 and pixels.flags.c_contiguous
    assert digest is None
    assert np.all(pixels[0, :, :3] > 200) and np.all(pixels[2, :, :3] < 60)  # red on the left
    assert np.all(pixels[2, :, -6:] > 200) and np.all(pixels[0, :, -6:] < 60)  # blue on the right


def test_crop_drops_the_sides(wide_image):
    pixels, _ = load_pixels(wide_image, Preprocessing(image_size=12, resize="crop"))
    assert pixels.shape == (3, 12, 12) and pixels.dtype == np.uint8
    assert np.all(pixels[2] > 200) and np.all(pixels[0] < 60)  # only the blue centre is left


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "lanczos"])
def test_every_interpolation_gives_the_square(wide_image, interpolation):
    prep = Preprocessing(image_size=16, interpolation=interpolation)
    pixels, _ = load_pixels(wide_image, prep)
    assert pixels.shape == (3, 16, 16)
    assert pixels[0, 8, 0] > 200 and pixels[2, 8, 15] > 200


def test_with_hash_is_sha256_of_the_file(tmp_path):
    path = save(noise(), tmp_path / "n.jpg", format="JPEG")
    _, digest = load_pixels(path, Preprocessing(image_size=8), with_hash=True)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    other = save(noise(seed=1), tmp_path / "m.jpg", format="JPEG")
    assert load_pixels(other, Preprocessing(image_size=8), with_hash=True)[1] != digest


def test_large_jpeg_draft_still_gives_full_image(tmp_path):
    im = Image.new("RGB", (800, 400), BLUE)
    im.paste(RED, (0, 0, 400, 400))
    path = save(im, tmp_path / "big.jpg", format="JPEG", quality=95)
    pixels, _ = load_pixels(path, Preprocessing(image_size=16))
    assert pixels.shape == (3, 16, 16)
    assert pixels[0, 8, 2] > 200 and pixels[2, 8, 13] > 200


# ------------------------------------------------------------------------------- normalise and batch
@pytest.mark.parametrize("channels", [1, 3])
def test_normalize_denormalize_round_trip(channels):
    prep = Preprocessing(image_size=8, channels=channels)
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.integers(0, 256, (4, channels, 8, 8), dtype=np.uint8))
    x = normalize(pixels, prep)
    assert x.dtype == torch.float32 and x.shape == pixels.shape
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    ends = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, channels, 1, 2)
    assert normalize(ends, prep).flatten().tolist() == [-1.0, 1.0] * channels
    back = (denormalize(x, prep) * 255).round().to(torch.uint8)
    assert torch.equal(back, pixels)

    zero_one = Preprocessing(image_size=8, channels=channels, mean=(0.0,), std=(1.0,))
    assert torch.allclose(normalize(pixels, zero_one), pixels.float() / 255)
    assert float(denormalize(torch.full((1, channels, 2, 2), 5.0), zero_one).max()) == 1.0  # clamped


def test_collate_drops_failures_and_survives_an_all_bad_batch():
    px = np.zeros((3, 4, 4), dtype=np.uint8)
    batch = collate_images([(0, px, "d0", None), (1, None, None, "broken"), (2, px + 1, "d2", None)])
    assert batch.indices == [0, 2]
    assert batch.pixels.shape == (2, 3, 4, 4) and batch.pixels.dtype == torch.uint8
    assert int(batch.pixels[1].max()) == 1
    assert batch.digests == ["d0", "d2"]
    assert batch.failures == [(1, "broken")]

    bad = collate_images([(0, None, None, "a"), (1, None, None, "b")])
    assert bad.indices == [] and bad.digests == [] and len(bad.pixels) == 0
    assert bad.failures == [(0, "a"), (1, "b")]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_image_loader_yields_every_good_file_once_in_order(tmp_path, num_workers):
    paths = []
    colors = {}
    for i in range(7):
        if i in (2, 5):
            p = tmp_path / f"bad{i}.jpg"
            p.write_bytes(b"garbage" * (i + 1))
        else:
            colors[i] = (i * 30, 255 - i * 30, 7)
            p = save(solid(colors[i], (10, 10)), tmp_path / f"good{i}.png")
        paths.append(p)
    prep = Preprocessing(image_size=8)
    loader = image_loader(paths, prep, batch_size=2, num_workers=num_workers, with_hash=True)
    assert loader.num_workers == num_workers
    indices, failures, digests = [], [], []
    for batch in loader:
        assert len(batch.pixels) == len(batch.indices) == len(batch.digests)
        for j, i in enumerate(batch.indices):
            assert tuple(batch.pixels[j, :, 4, 4].tolist()) == colors[i]
        indices += batch.indices
        failures += batch.failures
        digests += batch.digests
    assert indices == [0, 1, 3, 4, 6]
    assert [i for i, _ in failures] == [2, 5]
    assert all(reason for _, reason in failures)
    assert digests == [hashlib.sha256(paths[i].read_bytes()).hexdigest() for i in indices]


# ---------------------------------------------------------------------------------- in-memory arrays
@pytest.mark.parametrize("channels", [3, 1])
def test_arrays_to_pixels_grey_8px_to_model(channels):
    images = np.zeros((5, 8, 8, 1), dtype=np.uint8)
    for i in range(5):
        images[i] = i * 50
    images[0, :4, :, 0] = 255  # top half white in the first image
    prep = Preprocessing(image_size=32, channels=channels)
    out = arrays_to_pixels(images, prep)
    assert out.shape == (5, channels, 32, 32) and out.dtype == np.uint8
    for i in range(1, 5):
        assert np.all(out[i] == i * 50)
    assert np.all(out[0, :, :12] == 255) and np.all(out[0, :, -12:] == 0)


def test_arrays_to_pixels_fast_path_and_errors():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    out = arrays_to_pixels(images, Preprocessing(image_size=16))
    assert out.shape == (3, 3, 16, 16) and out.flags.c_contiguous
    assert np.array_equal(out, images.transpose(0, 3, 1, 2))
    with pytest.raises(LookalikeError):
        arrays_to_pixels(images.astype(np.float32), Preprocessing(image_size=16))
    with pytest.raises(LookalikeError):
        arrays_to_pixels(images[0], Preprocessing(image_size=16))
