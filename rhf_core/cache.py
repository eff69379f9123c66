"""The on-disk runtime cache (`cache/` at the project root, or `$RHF_CACHE_DIR`) and atomic writes."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # bump when frame columns (or which rows readers skip) change


def cache_dir(*parts: str) -> Path:
    """`$RHF_CACHE_DIR` or `<project>/cache`, joined with `parts` and created."""
    root = Path(os.environ.get("RHF_CACHE_DIR") or Path(__file__).resolve().parents[1] / "cache")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(*parts) -> str:
    """A short stable hash of JSON-able parts (model, inputs, parameters)."""
    blob = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def file_fingerprint(paths) -> list:
    """(path, size, mtime) of each file, so a cache entry goes stale when its inputs change."""
    out = []
    for p in sorted(str(p) for p in paths):
        st = os.stat(p)
        out.append([p, st.st_size, st.st_mtime_ns])
    return out


def weights_fingerprint(folder) -> list:
    """`file_fingerprint` of a model folder's safetensors files ([] for no folder)."""
    return file_fingerprint(Path(folder).glob("*.safetensors")) if folder else []


def json_text(obj, indent: int = 2) -> str:
    """JSON as `json.dumps(obj, indent=indent)` writes it, except that a list of plain values (per-prompt
    numbers, a shape) stays on one line: a results file with long per-prompt lists remains readable."""
    def enc(o, level: int) -> str:
        pad, end = " " * (indent * (level + 1)), " " * (indent * level)
        if isinstance(o, dict) and o:
            return "{\n" + ",\n".join(f"{pad}{json.dumps(str(k))}: {enc(v, level + 1)}" for k, v in o.items()) + f"\n{end}}}"
        if isinstance(o, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in o):
            return "[\n" + ",\n".join(pad + enc(v, level + 1) for v in o) + f"\n{end}]"
        return json.dumps(o)
    return enc(obj, 0) + "\n"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename over it: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; written files should read like any other
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_savez(path: str | os.PathLike, compressed: bool = True, **arrays) -> None:
    """np.savez(_compressed) of `arrays` to `path`, written atomically (see atomic_write_bytes)."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def cached_frame(kind: str, key: str, build: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """Load the DataFrame cached under `cache/frames/{kind}-{key}.parquet`, or build and store it.

    The cache only saves time: a frame Arrow cannot store (an object column mixing numbers and text
    across rows, an int beyond int64) or a cache folder that cannot be written is returned as built,
    uncached, never lost. Readers keep their skipped rows as frame columns (`_skip_where`,
    `_skip_reason`), so a cache hit reports the same skips as the first open."""
    try:
        path = cache_dir("frames") / f"{kind}-{key}.parquet"
    except OSError:
        return build()
    if path.exists():
        try:
            return pd.read_parquet(path)
        except Exception:  # a damaged cache entry is rebuilt, never fatal
            path.unlink(missing_ok=True)
    frame = build()
    try:
        write_parquet(frame, path)
    except (pa.ArrowException, TypeError, ValueError, OverflowError, OSError) as e:
        log.info("frame cache %s-%s not written (%s: %s); using the frame uncached", kind, key, type(e).__name__, e)
    return frame


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Atomically write a DataFrame as parquet (safe with several sessions in one process)."""
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())
