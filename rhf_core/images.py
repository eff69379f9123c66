"""Safe image decoding for everything a user or a dataset hands us.

Every image enters the project through `load_image` (paths, bytes, file objects and PIL images alike,
`RAHF.predict` and `repair` included), so corrupt files, non-images, decompression bombs, EXIF
rotation and odd modes (RGBA, palette, CMYK, 16-bit, 32-bit float) are handled in one place and come
out as an RGB `PIL.Image` or an `ImageLoadError` with a readable message.

Memory: the pixel limit is checked on the header, before anything is decoded, so the decoded buffer
is at most MAX_PIXELS × 4 bytes (PIL keeps every mode in at most 4 bytes a pixel; 16-bit gray takes 2).
Converting it never makes a float64 copy: 16-bit and float images are scaled to 8-bit gray in blocks
of rows (adding 1 byte a pixel), and large images are downscaled before they are made RGB or
composited (alpha images add one premultiplied copy for the resize). Peak memory above the baseline,
decoding 7900×7900 files to 2048 px (old → new): a 125 KB 16-bit PNG 1551 → 202 MB; a float TIFF
1673 → 337 MB; an RGBA PNG 1193 → 557 MB; an RGB PNG 479 → 319 MB.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from rhf_core.errors import ImageLoadError

# Refuse anything above this many pixels before decoding it (PIL reads the size from the header).
MAX_PIXELS = 64_000_000
# Refuse files larger than this before reading them (an uncompressed 64 MP RGB image is 192 MB).
MAX_FILE_BYTES = 512 * 1024 * 1024
# Larger images are downscaled so their longer side is this many pixels.
MAX_SIDE = 2048

# Single-channel modes deeper than 8 bits: scaled to 8-bit gray by `_deep_to_gray`.
_DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# Pixels converted at a time from a deep mode (bounds the conversion's temporary arrays to a few MB).
_BLOCK_PIXELS = 1 << 20
# What PIL's format plugins raise on malformed files: they do not share one exception type.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError,
                  ZeroDivisionError)
# EXIF orientation → the transposition that shows the image upright (as ImageOps.exif_transpose does).
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def _row_blocks(img: Image.Image):
    """(first row, pixel array) for consecutive blocks of rows, each about _BLOCK_PIXELS pixels."""
    w, h = img.size
    rows = max(1, _BLOCK_PIXELS // max(1, w))
    for y in range(0, h, rows):
        yield y, np.asarray(img.crop((0, y, w, min(h, y + rows))))


def _deep_to_gray(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float gray image → 8-bit "L", block by block.

    Integers: 0..255 if the image's maximum is ≤ 255, else 0..65535, map to 0..255. Floats: 0..1, or
    0..the largest finite value when that is above 1. NaN and −inf become 0 and +inf the top, so one
    bad pixel cannot black out (NaN maximum) or wash out (infinite maximum) the whole image."""
    w, h = img.size
    top = 0.0
    for _, block in _row_blocks(img):
        if block.dtype.kind == "f":
            block = block[np.isfinite(block)]
        if block.size:
            top = max(top, float(block.max()))
    if img.mode == "F":
        top = top if top > 1.0 else 1.0
    else:
        top = 65535.0 if top > 255 else 255.0
    scale = np.float32(255.0 / top)
    out = np.empty((h, w), dtype=np.uint8)
    for y, block in _row_blocks(img):
        v = np.nan_to_num(block.astype(np.float32), copy=False, nan=0.0, posinf=top, neginf=0.0)
        v *= scale
        v += 0.5
        np.clip(v, 0, 255, out=v)
        out[y:y + len(v)] = v  # truncates: with the +0.5 above, rounds to nearest
    return Image.fromarray(out, "L")


def _downscale(img: Image.Image, max_side: int | None) -> Image.Image:
    if max_side is None or max(img.size) <= max_side:
        return img
    scale = max_side / max(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)


def _to_rgb(img: Image.Image, max_side: int | None = None) -> Image.Image:
    """Any PIL mode → RGB, downscaled to `max_side`; transparency is composited on white.

    Downscaling comes before the RGB copy and the compositing, so those copies are small."""
    if img.mode in _DEEP_MODES:
        img = _deep_to_gray(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif img.mode == "La":  # premultiplied; PIL converts it only to LA
        img = img.convert("LA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        img = img.convert("RGBA") if img.mode in ("PA", "RGBa") else img
        img = _downscale(img, max_side).convert("RGBA")  # PIL resizes alpha images premultiplied
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    img = _downscale(img, max_side)
    return img if img.mode == "RGB" else img.convert("RGB")


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        return 1


def _check_size(img: Image.Image, label: str) -> None:
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageLoadError(f"{label}: {w}×{h} pixels is too large (limit {MAX_PIXELS:,} pixels)")
    if w <= 0 or h <= 0:
        raise ImageLoadError(f"{label}: the image has no pixels ({w}×{h})")


def _read(source, label: str) -> bytes:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageLoadError(f"{label}: no such image file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageLoadError(f"{label}: the file is larger than {MAX_FILE_BYTES // 2**20} MB")
        return path.read_bytes()
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if hasattr(source, "read"):
        data = source.read(MAX_FILE_BYTES + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise ImageLoadError(f"{label}: the file object gave {type(data).__name__}, not bytes")
        if len(data) > MAX_FILE_BYTES:
            raise ImageLoadError(f"{label}: the file is larger than {MAX_FILE_BYTES // 2**20} MB")
        return bytes(data)
    raise ImageLoadError(f"{label}: expected a path, bytes or an image, got {type(source).__name__}")


def load_image(source, *, max_side: int | None = MAX_SIDE, name: str | None = None) -> Image.Image:
    """Decode `source` (path, bytes, file-like or PIL image) into an RGB image.

    EXIF orientation is applied; images whose longer side exceeds `max_side` are downscaled
    (keeping aspect ratio); `None` keeps the original size. A PIL image is never modified in place
    (a lazily opened one is decoded here, with the same checks as bytes).
    Raises `ImageLoadError` for missing, empty, corrupt, non-image and oversized inputs.
    """
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "image")
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer))
                                 or max_side < 1):
        raise ImageLoadError(f"{label}: max_side must be a positive whole number of pixels or None, got {max_side!r}")
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; we raise at once.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(source, Image.Image):
                img = source
            else:
                data = _read(source, label)
                if not data:
                    raise ImageLoadError(f"{label}: the file is empty")
                img = Image.open(io.BytesIO(data))
            _check_size(img, label)
            # Decodes a lazily opened image (a no-op for a loaded one): truncation shows up here.
            img.load()
            orientation = _orientation(img)
            img = _to_rgb(img, max_side)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(f"{label}: refused as a possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{label}: not an image file PIL can read") from None
    except _DECODE_ERRORS as e:
        raise ImageLoadError(f"{label}: the image is corrupt or truncated ({e})") from None
    if orientation in _ORIENTATION:
        img = img.transpose(_ORIENTATION[orientation])
        # The result is upright: drop the tag it still carries, or loading it again would turn it again.
        img.info.pop("exif", None)
        img.getexif().pop(0x0112, None)
    # Never hand back the caller's own object: callers may draw on the result.
    return img.copy() if img is source else img


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
