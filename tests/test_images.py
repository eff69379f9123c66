import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rhf_core.errors import ImageLoadError, RHFError
from rhf_core.images import MAX_PIXELS, encode_png, load_image


def _bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    out = load_image(_bytes(img))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


def test_palette_cmyk_and_16bit_become_rgb():
    pal = Image.new("P", (3, 3))
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    assert load_image(_bytes(pal)).getpixel((1, 1)) == (0, 255, 0)
    cmyk = Image.new("CMYK", (3, 3), (0, 255, 255, 0))  # red in CMYK
    red = load_image(_bytes(cmyk, "JPEG", quality=95)).getpixel((1, 1))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    deep = Image.fromarray(np.full((3, 3), 65535, np.uint16))
    assert load_image(_bytes(deep)).getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = load_image(_bytes(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (10, 20)


def test_large_images_are_downscaled_keeping_aspect():
    out = load_image(_bytes(Image.new("RGB", (3000, 1500))), max_side=1000)
    assert out.size == (1000, 500)
    assert load_image(_bytes(Image.new("RGB", (300, 150))), max_side=None).size == (300, 150)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is a text file, not a picture", "not an image"),
        (_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))[:60], "corrupt or truncated"),
    ],
)
def test_bad_bytes_raise_a_readable_error(data, message):
    with pytest.raises(ImageLoadError, match=message):
        load_image(data, name="upload.png")


def test_decompression_bomb_is_refused_before_decoding():
    side = int(np.sqrt(MAX_PIXELS)) + 100
    bomb = _bytes(Image.new("1", (side, side)))  # tiny file, huge image
    assert len(bomb) < 200_000
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(bomb)


def test_missing_path_and_wrong_type():
    with pytest.raises(ImageLoadError, match="no such image file"):
        load_image("/nonexistent/picture.png")
    with pytest.raises(RHFError, match="expected a path"):
        load_image(12345)


def test_lazily_opened_truncated_image_raises_image_load_error():
    data = _bytes(Image.new("RGB", (64, 64), (1, 2, 3)))
    lazy = Image.open(io.BytesIO(data[: len(data) // 2]))  # header read, pixels not decoded yet
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        load_image(lazy)


def test_a_lazily_opened_good_image_is_decoded_and_the_caller_keeps_its_own():
    src = Image.new("RGB", (8, 8), (9, 8, 7))
    out = load_image(Image.open(io.BytesIO(_bytes(src))))
    assert out.getpixel((3, 3)) == (9, 8, 7)
    again = load_image(src)
    again.putpixel((0, 0), (0, 0, 0))
    assert src.getpixel((0, 0)) == (9, 8, 7)  # a copy, not the caller's image


def test_a_nan_pixel_in_a_float_tiff_does_not_black_out_the_image():
    arr = np.ones((6, 6), np.float32) * 0.5
    arr[0, 0] = np.nan
    arr[1, 1] = np.inf
    arr[2, 2] = -np.inf
    out = np.asarray(load_image(_bytes(Image.fromarray(arr, "F"), "TIFF")))
    assert out[3, 3, 0] == 128  # 0.5 of 0..1
    assert out[0, 0, 0] == 0 and out[2, 2, 0] == 0 and out[1, 1, 0] == 255
    # Floats above 1 scale by the largest finite value, not by an infinite one.
    big = np.full((4, 4), 10.0, np.float32)
    big[0, 0], big[1, 1] = 20.0, np.inf
    out = np.asarray(load_image(_bytes(Image.fromarray(big, "F"), "TIFF")))
    assert out[2, 2, 0] == 128 and out[0, 0, 0] == 255


@pytest.mark.parametrize("mode", ["I;16", "F"])
def test_deep_images_convert_without_whole_image_float_copies(mode):
    """numpy's allocations are traced: the old conversion made float64 copies of the whole image
    (≥ 3 × 8 bytes a pixel = 96 MB here); block-wise conversion stays at a few MB plus the 8-bit result."""
    import tracemalloc

    arr = np.zeros((2000, 2000), np.uint16 if mode == "I;16" else np.float32)
    arr[::7, ::5] = 60000 if mode == "I;16" else 0.75
    img = Image.fromarray(arr)
    assert img.mode == mode
    del arr
    tracemalloc.start()
    try:
        out = load_image(img, max_side=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.size == (2000, 2000) and out.getpixel((0, 0))[0] > 180
    assert peak < 24e6, f"{peak / 1e6:.0f} MB of numpy temporaries"


def test_a_small_16bit_png_of_a_huge_image_decodes_in_bounded_memory(tmp_path):
    """The issue's 120 KB 16-bit PNG (7900×7900) peaked at 1.6 GB; decoded buffer is 125 MB."""
    import subprocess
    import sys

    path = tmp_path / "deep.png"
    arr = np.zeros((7900, 7900), np.uint16)
    arr[::97, ::89] = 60000
    Image.fromarray(arr).save(path)
    del arr
    assert path.stat().st_size < 1_000_000
    code = (
        "import resource, sys\n"
        "from rhf_core.images import load_image\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "out = load_image(sys.argv[1])\n"
        "print(out.size, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert res.returncode == 0, res.stderr
    size, grown_mb = res.stdout.rsplit(" ", 1)
    assert size.startswith("(2048, 2048)")
    assert float(grown_mb) < 400, f"decoding grew the process by {grown_mb} MB"


def test_bad_max_side_and_oversized_pil_images_are_refused():
    with pytest.raises(ImageLoadError, match="max_side"):
        load_image(Image.new("RGB", (4, 4)), max_side=0)
    side = int(np.sqrt(MAX_PIXELS)) + 100
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(Image.new("1", (side, side)))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_an_exif_rotated_image_is_turned_once_not_again_on_reload(fmt):
    # Pages load an upload, then predict() / repair() / add_annotation() load the result again:
    # the second load must not apply the orientation a second time.
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 30, 30)).save(buf, fmt, exif=exif)
    once = load_image(buf.getvalue())
    assert once.size == (20, 40)
    assert load_image(once).size == (20, 40)
    assert load_image(encode_png(once)).size == (20, 40)
