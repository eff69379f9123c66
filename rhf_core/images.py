"""Safe image decoding for everything a user or a dataset hands us.

Every image enters the project through `load_image`, so corrupt files, non-images, decompression
bombs, EXIF rotation and odd modes (RGBA, palette, CMYK, 16-bit) are handled in one place and come
out as an RGB `PIL.Image` or an `ImageLoadError` with a readable message.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from rhf_core.errors import ImageLoadError

# Refuse anything above this many pixels before decoding it (PIL checks the header first).
MAX_PIXELS = 64_000_000
# Larger images are downscaled so their longer side is this many pixels.
MAX_SIDE = 2048


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if arr.max() <= 1.0 else arr.max()
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def load_image(source, *, max_side: int | None = MAX_SIDE, name: str | None = None) -> Image.Image:
    """Decode `source` (path, bytes, file-like or PIL image) into an RGB image.

    EXIF orientation is applied; images whose longer side exceeds `max_side` are downscaled
    (keeping aspect ratio); `None` keeps the original size.
    Raises `ImageLoadError` for missing, empty, corrupt, non-image and oversized inputs.
    """
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "image")
    if isinstance(source, Image.Image):
        img = source
    else:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise ImageLoadError(f"{label}: no such image file")
            data = path.read_bytes()
        elif isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        elif hasattr(source, "read"):
            data = source.read()
        else:
            raise ImageLoadError(f"{label}: expected a path, bytes or an image, got {type(source).__name__}")
        if not data:
            raise ImageLoadError(f"{label}: the file is empty")
        try:
            with warnings.catch_warnings():
                # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; we raise at once.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageLoadError(
                        f"{label}: {w}×{h} pixels is too large (limit {MAX_PIXELS:,} pixels)"
                    )
                img.load()
        except ImageLoadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageLoadError(f"{label}: refused as a possible decompression bomb ({e})") from None
        except UnidentifiedImageError:
            raise ImageLoadError(f"{label}: not an image file PIL can read") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageLoadError(f"{label}: the image is corrupt or truncated ({e})") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        pass
    img = _to_rgb(img)
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    return img


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
