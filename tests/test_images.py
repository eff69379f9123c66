import io

import numpy as np
import pytest
from PIL import Image

from rhf_core.errors import ImageLoadError, RHFError
from rhf_core.images import MAX_PIXELS, load_image


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
