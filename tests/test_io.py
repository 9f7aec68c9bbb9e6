"""Tests of deqir_jax.io: image files, padding, grids."""

from __future__ import annotations

import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from deqir_jax.io import (
    crop_to,
    from_uint8,
    list_images,
    make_grid,
    pad_to_multiple,
    read_image,
    resize_nearest,
    save_grid,
    to_uint8,
    write_image,
)


def _write_png16(path, arr):
    """Minimal 16-bit PNG writer (Pillow cannot write 16-bit RGB)."""
    arr = np.asarray(arr, dtype=">u2")
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr[i].tobytes() for i in range(h))

    def chunk(tag, data):
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------- uint8 conversion


def test_uint8_conversion_is_exact_for_all_values():
    u = np.arange(256, dtype=np.uint8)
    x = from_uint8(u)
    assert x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(to_uint8(x), u)


def test_to_uint8_clips_and_rounds():
    x = np.array([-3.0, -1.0, 0.0, 1.0, 5.0, 2 * (100.4 / 255) - 1, 2 * (100.6 / 255) - 1])
    np.testing.assert_array_equal(to_uint8(x), [0, 0, 128, 255, 255, 100, 101])


def test_to_uint8_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.array([0.0, np.nan]))


def test_from_uint8_rejects_other_dtypes():
    with pytest.raises(TypeError, match="uint8"):
        from_uint8(np.zeros(3, np.float32))


# ---------------------------------------------------------------- read / write


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tiff", ".ppm"])
def test_write_read_round_trip_is_exact(tmp_path, ext):
    rng = np.random.default_rng(0)
    u = rng.integers(0, 256, size=(13, 17, 3), dtype=np.uint8)
    path = write_image(tmp_path / f"img{ext}", from_uint8(u))
    x = read_image(path)
    assert x.shape == (13, 17, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(to_uint8(x), u)
    np.testing.assert_array_equal(x, from_uint8(u))


def test_write_accepts_jax_and_batch_of_one(tmp_path):
    u = np.random.default_rng(1).integers(0, 256, size=(1, 8, 9, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", jnp.asarray(from_uint8(u)))
    np.testing.assert_array_equal(to_uint8(read_image(tmp_path / "a.png")), u[0])
    with pytest.raises(ValueError, match="batch of 2"):
        write_image(tmp_path / "b.png", np.zeros((2, 8, 8, 3)))


def test_jpeg_write_is_close(tmp_path):
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    x = np.stack([xx, yy, 0.5 * (xx + yy)], -1).astype(np.float32) * 2 - 1
    write_image(tmp_path / "a.jpg", x)
    # JPEG is lossy (quality 95): a smooth ramp comes back within a few gray levels.
    assert np.abs(read_image(tmp_path / "a.jpg") - x).max() < 0.1


def test_grayscale_is_replicated(tmp_path):
    g = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    x = read_image(tmp_path / "g.png")
    assert x.shape == (4, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(to_uint8(x[..., c]), g)


def test_write_grayscale_2d_and_hw1(tmp_path):
    g = from_uint8(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)
    write_image(tmp_path / "a.png", g)
    write_image(tmp_path / "b.png", g[..., None])
    for name in ("a.png", "b.png"):
        with Image.open(tmp_path / name) as im:
            assert im.mode == "L"
        np.testing.assert_array_equal(read_image(tmp_path / name)[..., 1], g)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent -> white
    rgba[0, 2] = (0, 0, 0, 102)  # 40% black over white -> 60% white
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png")
    unit = (x + 1) / 2
    np.testing.assert_allclose(unit[0, 0], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(unit[0, 1], [1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(unit[0, 2], [0.6] * 3, atol=1e-6)


def test_palette_with_transparency_and_la(tmp_path):
    la = np.array([[[0, 0], [0, 255]]], np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(read_image(tmp_path / "la.png")[0], [[1] * 3, [-1] * 3], atol=1e-6)
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 255, 10, 20, 30])
    p.putdata([0, 1])
    p.info["transparency"] = 1
    p.save(tmp_path / "p.png", transparency=1)
    x = read_image(tmp_path / "p.png")
    np.testing.assert_allclose((x[0] + 1) / 2, [[0, 0, 1], [1, 1, 1]], atol=1e-6)


def test_16bit_grayscale_png_keeps_precision(tmp_path):
    v = (np.arange(12).reshape(3, 4) * 5461).astype(np.uint16)  # up to 60071
    Image.fromarray(v).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # really read as 16-bit
    x = read_image(tmp_path / "g16.png")
    expected = (v / 65535.0 * 2 - 1).astype(np.float32)
    np.testing.assert_allclose(x[..., 0], expected, atol=1e-6)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def test_16bit_rgb_png_reads_at_8bit_precision(tmp_path):
    rng = np.random.default_rng(2)
    v = rng.integers(0, 65536, size=(5, 6, 3), dtype=np.uint16)
    _write_png16(tmp_path / "rgb16.png", v)
    x = read_image(tmp_path / "rgb16.png")
    assert x.shape == (5, 6, 3)
    # Pillow keeps the high byte of 16-bit RGB samples (documented in deqir_jax.io.images).
    np.testing.assert_array_equal(to_uint8(x), (v >> 8).astype(np.uint8))


def test_16bit_rgba_png(tmp_path):
    v = np.zeros((2, 2, 4), np.uint16)
    v[..., 0] = 65535
    v[..., 3] = 65535
    v[1, 1, 3] = 0
    _write_png16(tmp_path / "rgba16.png", v)
    unit = (read_image(tmp_path / "rgba16.png") + 1) / 2
    np.testing.assert_allclose(unit[0, 0], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(unit[1, 1], [1, 1, 1], atol=1e-6)


def test_overwrite_is_refused(tmp_path):
    path = tmp_path / "out" / "deep" / "a.png"  # parent folders are created
    a = np.full((4, 4, 3), -1.0, np.float32)
    write_image(path, a)
    with pytest.raises(FileExistsError, match=str(path).replace("\\", "\\\\")):
        write_image(path, np.ones_like(a))
    np.testing.assert_array_equal(read_image(path), a)  # untouched
    write_image(path, np.ones_like(a), overwrite=True)
    np.testing.assert_array_equal(read_image(path), np.ones_like(a))


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown extension"):
        write_image(tmp_path / "a.xyz", np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        write_image(tmp_path / "b.png", np.full((4, 4, 3), np.nan))
    with pytest.raises(ValueError, match="shape"):
        write_image(tmp_path / "c.png", np.zeros((4, 4, 2)))
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "c.png").exists()


def test_unreadable_files_give_clear_errors(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(ValueError, match="missing.png.*does not exist"):
        read_image(missing)
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    with pytest.raises(ValueError, match="notes.png.*not an image format"):
        read_image(text)
    good = tmp_path / "good.png"
    write_image(good, np.zeros((64, 64, 3)))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ValueError, match="truncated.png.*corrupt or truncated"):
        read_image(truncated)
    with pytest.raises(ValueError, match="folder"):
        read_image(tmp_path)


def test_exif_orientation_is_applied(tmp_path):
    u = np.zeros((2, 3, 3), np.uint8)
    u[0, 0] = 255  # white top-left pixel of the stored 2x3 image
    img = Image.fromarray(u)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.png", exif=exif)
    x = read_image(tmp_path / "r.png")
    assert x.shape == (3, 2, 3)
    assert x[0, 1, 0] == 1.0  # the white pixel is now top-right


# ---------------------------------------------------------------- list_images


def test_list_images(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for name in ("b.png", "a.JPG", "c.txt", ".hidden.png", "e.webp"):
        (d / name).write_bytes(b"")
    (d / "sub").mkdir()
    (d / "sub" / "z.png").write_bytes(b"")
    single = tmp_path / "single.png"
    single.write_bytes(b"")
    assert [p.name for p in list_images(d)] == ["a.JPG", "b.png", "e.webp"]
    assert [p.name for p in list_images(str(d))] == ["a.JPG", "b.png", "e.webp"]
    got = list_images([single, d])
    assert [p.name for p in got] == ["single.png", "a.JPG", "b.png", "e.webp"]


def test_list_images_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files found in .*empty"):
        list_images(empty)
    with pytest.raises(ValueError, match="does not exist"):
        list_images(tmp_path / "nope")
    txt = tmp_path / "a.txt"
    txt.write_text("x")
    with pytest.raises(ValueError, match="not an image file"):
        list_images([txt])
    with pytest.raises(ValueError, match="no image files"):
        list_images([])


# ---------------------------------------------------------------- pad / crop / resize


@pytest.mark.parametrize("mode", ["reflect", "edge", "constant", "symmetric", "wrap"])
@pytest.mark.parametrize("shape", [(13, 7, 3), (2, 9, 15, 3), (3, 3, 1)])
def test_pad_crop_round_trip(shape, mode):
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    for arr in (x, jnp.asarray(x)):
        padded, size = pad_to_multiple(arr, 8, mode=mode)
        assert type(padded) is type(arr) or isinstance(padded, jax.Array) == isinstance(
            arr, jax.Array
        )
        assert size == shape[-3:-1]
        assert padded.shape[-3] % 8 == 0 and padded.shape[-2] % 8 == 0
        assert padded.shape[-3] - shape[-3] < 8 and padded.shape[-2] - shape[-2] < 8
        np.testing.assert_array_equal(np.asarray(crop_to(padded, size)), x)
    # numpy and JAX agree on the padding itself
    np.testing.assert_array_equal(
        np.asarray(pad_to_multiple(jnp.asarray(x), 8, mode)[0]), pad_to_multiple(x, 8, mode)[0]
    )


def test_pad_reflect_values_and_pairs():
    x = np.arange(5, dtype=np.float32).reshape(1, 5, 1)
    padded, size = pad_to_multiple(x, (1, 4))
    np.testing.assert_array_equal(padded[0, :, 0], [0, 1, 2, 3, 4, 3, 2, 1])
    assert size == (1, 5)
    same, _ = pad_to_multiple(np.zeros((8, 16, 3)), 8)
    assert same.shape == (8, 16, 3)


def test_pad_crop_in_jit():
    f = jax.jit(lambda a: crop_to(pad_to_multiple(a, 4)[0] * 2, (5, 6)))
    x = jnp.ones((1, 5, 6, 3))
    np.testing.assert_array_equal(np.asarray(f(x)), 2 * np.ones((1, 5, 6, 3)))


def test_pad_crop_errors():
    with pytest.raises(ValueError, match="mode"):
        pad_to_multiple(np.zeros((4, 4, 3)), 2, mode="mirror")
    with pytest.raises(ValueError, match="positive"):
        pad_to_multiple(np.zeros((4, 4, 3)), 0)
    with pytest.raises(ValueError, match="HWC"):
        pad_to_multiple(np.zeros((4, 4)), 2)
    with pytest.raises(ValueError, match="at most"):
        crop_to(np.zeros((4, 4, 3)), (5, 4))


def test_resize_nearest():
    x = np.random.default_rng(4).standard_normal((3, 5, 2)).astype(np.float32)
    up = resize_nearest(x, (12, 20))
    np.testing.assert_array_equal(up, np.repeat(np.repeat(x, 4, axis=0), 4, axis=1))
    batch = jnp.asarray(x)[None]
    np.testing.assert_array_equal(np.asarray(resize_nearest(batch, (12, 20)))[0], up)
    down = resize_nearest(up, (3, 5))
    np.testing.assert_array_equal(down, x)
    assert resize_nearest(x, (7, 3)).shape == (7, 3, 2)


# ---------------------------------------------------------------- grids


def test_grid_shape_without_labels():
    imgs = [np.zeros((16, 16, 3)), np.ones((16, 16, 3)), -np.ones((16, 16, 3))]
    g = make_grid(imgs, ncols=2, pad=4)
    assert g.dtype == np.uint8
    assert g.shape == (4 + 2 * (16 + 4), 4 + 2 * (16 + 4), 3)
    assert (g[4:20, 24:40] == 255).all()  # second image (white) in row 0, column 1
    assert (g[24:40, 4:20] == 0).all()  # third image (black) in row 1, column 0
    assert g.shape == make_grid(imgs, ncols=2, pad=4).shape


def test_grid_labels_and_small_images_upscaled():
    big = np.full((32, 32, 3), -1.0, np.float32)  # black
    small = np.random.default_rng(5).uniform(-1, 1, (8, 8, 3)).astype(np.float32)
    odd = np.full((10, 20, 3), -1.0, np.float32)
    g = make_grid([small, big, odd], labels=["input x4", "restored", "odd"], pad=2)
    h_label = g.shape[0] - 2 - 32 - 2
    assert h_label > 4  # a label band was added
    assert g.shape[1] == 2 + 3 * (32 + 2)
    band = g[2 : 2 + h_label, 2:34]
    assert (band < 128).any()  # some text was drawn
    cell0 = g[2 + h_label : 2 + h_label + 32, 2:34]
    np.testing.assert_array_equal(cell0, resize_nearest(to_uint8(small), (32, 32)))
    # 10x20 in a 32x32 cell: upscaled by 1 (32 // 20), centred vertically and horizontally
    cell2 = g[2 + h_label : 2 + h_label + 32, 2 + 2 * 34 : 2 + 2 * 34 + 32]
    assert (cell2[11:21, 6:26] == 0).all() and (cell2[:11] == 255).all()


def test_grid_errors_and_save(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        make_grid([np.zeros((4, 4, 3))], labels=["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        make_grid([])
    with pytest.raises(ValueError, match=r"images\[0\]"):
        make_grid([np.zeros((4, 4, 2))])
    path = save_grid(tmp_path / "g.png", [np.zeros((8, 8, 3))] * 2, ["a", "b"])
    assert read_image(path).shape[1] == 4 + 2 * 12
    with pytest.raises(FileExistsError):
        save_grid(path, [np.zeros((8, 8, 3))])
