"""Shared-server mode: which paths a browser user may name, how much work one request may ask for,
and how errors are worded so they never reveal the server's paths.

Configured by environment variables only (read on every call, so a test can set them):

    RHF_SHARED=1                    turn shared mode on (also true / yes / on)
    RHF_DATA_ROOTS=/data:/more      datasets (and Pick-a-Pic folders) only under these (os.pathsep-separated)
    RHF_MODEL_ROOTS=/models         RAHF checkpoints and generator pipelines only under these
    RHF_EXPORT_ROOT=/srv/exports    the explorer may export only into new sub-folders of this one

Without RHF_SHARED nothing is checked: local single-user use takes any path, as before.

In shared mode a path is checked after resolving `~`, `..` and every symlink, so a link inside a root
that points outside it is refused; a relative path is read inside the roots (the first root where it
exists), never against the server's working directory. Hub ids are refused: a browser user must not
make the server download gigabytes (put the model or dataset in a root folder instead). A bare path
as a dataset spec is refused too, since recognising it means walking the folder. Messages name
what the user typed relative to a root, never an absolute server path (`scrub`).

This module is UI-free (no Streamlit); `ui/` and the pages apply it.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from rhf_core.data import DatasetSpec, read_spec
from rhf_core.errors import DatasetSpecError, InvalidArgumentError, SharedModeError

ENV_SHARED = "RHF_SHARED"
ENV_DATA_ROOTS = "RHF_DATA_ROOTS"
ENV_MODEL_ROOTS = "RHF_MODEL_ROOTS"
ENV_EXPORT_ROOT = "RHF_EXPORT_ROOT"

# Per-request caps in shared mode: the most one browser request may ask for. Local mode keeps each
# page's own bounds. Pages ask `policy.limit(name, local_max)` for a widget's maximum, and the
# policy checks the value again (`check_limit`) because a URL or session state can bypass a widget.
LIMITS = {
    "shapes_n": 20_000,  # records of an embedded ShapesWorld (`?ds=shapes:n=100000000` would hang)
    "export_records": 20_000,  # records written by one export to the export root
    "download_records": 2_000,  # records in one zip download
    "analysis_records": 2_000,  # records predicted by one error analysis (Live RAHF)
    "batch_size": 32,  # images per forward pass
    "uploads": 16,  # images uploaded at once
    "candidates": 8,  # repair candidates per run
    "samples": 16,  # generator samples per prompt (Lee page n)
    "prompts": 16,  # prompts per comparison
    "finetune_steps": 500,  # steps of one fine-tune started from the page
}
_TRUE = {"1", "true", "yes", "on"}
_SHAPES_OPTIONS = {"n", "seed", "size", "raters", "split"}  # `cache` is an implementation detail: refused here
_SOURCES = ("shapes", "richhf18k", "rapidata", "folder")
_ALIASES = {"richhf": "richhf18k", "richhf-18k": "richhf18k", "shapesworld": "shapes"}
# An absolute path in free text: starts after a quote, space, bracket, `=`, `:` or `,` (or at the start),
# then /x, ~/x or C:\x, up to a quote, whitespace or a closing bracket (so `1 / 2` or `org/name` stay).
_ABS_PATH = re.compile(r"(?:^|(?<=[\s'\"`(\[{=:,]))(?:~|[A-Za-z]:)?[/\\][^\s'\"`)\]},;]+")
HIDDEN = "‹server path›"


def expand_path(text: str) -> Path:
    """`Path(text).expanduser()`, with `~name` of no such user a readable error instead of RuntimeError."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        raise InvalidArgumentError(f"{text.split('/', 1)[0]!r}: no such user's home folder") from None


def _split_roots(value: str | None) -> tuple[Path, ...]:
    parts = [p.strip() for p in (value or "").split(os.pathsep) if p.strip()]
    return tuple(Path(os.path.realpath(Path(p).expanduser())) for p in parts)


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


@dataclass(frozen=True)
class Policy:
    shared: bool = False
    data_roots: tuple[Path, ...] = ()
    model_roots: tuple[Path, ...] = ()
    export_root: Path | None = None
    limits: dict = field(default_factory=lambda: dict(LIMITS))

    @classmethod
    def from_env(cls, environ=None) -> "Policy":
        env = os.environ if environ is None else environ
        shared = str(env.get(ENV_SHARED, "")).strip().lower() in _TRUE
        export = _split_roots(env.get(ENV_EXPORT_ROOT))
        return cls(shared=shared, data_roots=_split_roots(env.get(ENV_DATA_ROOTS)),
                   model_roots=_split_roots(env.get(ENV_MODEL_ROOTS)), export_root=export[0] if export else None)

    # --- paths ----------------------------------------------------------------------------------

    def resolve(self, value: str, roots: tuple[Path, ...], what: str) -> Path:
        """`value` as a real path inside one of `roots`, or SharedModeError (the message names no path).

        `what` names the folders in messages ("data", "model"). A relative value is looked up in each
        root in turn: the first where it exists wins, else the first root (the loader then says it
        does not exist)."""
        text = str(value or "").strip()
        if not text:
            raise SharedModeError(f"no path given: name a folder inside the allowed {what} folders")
        if "\x00" in text:
            raise SharedModeError("a path cannot contain a NUL character")
        if not roots:
            raise SharedModeError(f"this server allows no {what} folders, so no {what} path can be opened here")
        try:
            path = expand_path(text)
        except InvalidArgumentError as e:
            raise SharedModeError(str(e)) from None
        candidates = [path] if path.is_absolute() else [r / path for r in roots]
        # realpath resolves every symlink and `..`: a link inside a root pointing outside is refused.
        real = [Path(os.path.realpath(c)) for c in candidates]
        allowed = [r for r in real if _inside(r, roots)]
        if not allowed:
            where = "the server's export folder" if what == "export" else f"the allowed {what} folders"
            raise SharedModeError(f"this path is outside {where}")
        return next((r for r in allowed if r.exists()), allowed[0])

    def data_path(self, value: str) -> Path:
        return self.resolve(value, self.data_roots, "data")

    def model_path(self, value: str, what: str = "model") -> str:
        """A RAHF checkpoint or generator field: "" (the embedded one) stays "", anything else must be
        a folder inside the model roots; hub ids are not downloaded in shared mode."""
        text = str(value or "").strip()
        if not self.shared or not text:
            return text
        real = self.resolve(text, self.model_roots, "model")
        if not real.exists():
            looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
            if looks_like_hub_id:
                raise SharedModeError(f"this server does not download {what}s from the hub; ask for it to be "
                                      "placed in one of the allowed model folders")
            raise SharedModeError(f"no {what} at this path inside the allowed model folders")
        return str(real)

    # --- dataset specs ----------------------------------------------------------------------------

    def check_spec(self, spec: str, pickapic: str | None = None) -> tuple[str, str | None]:
        """(spec, pickapic) to open: unchanged in local mode; in shared mode with every path (the
        spec's own and its `pickapic=`) resolved inside the data roots and `n` capped.
        Raises SharedModeError / DatasetSpecError."""
        if not self.shared:
            return spec, pickapic
        text = str(spec or "").strip()
        head = text.partition(":")[0].strip().lower()
        if _ALIASES.get(head, head) not in _SOURCES:
            # A bare path would be recognised by walking its folder: not on a shared server.
            raise SharedModeError("on this shared server name a dataset as shapes[:n=…], richhf18k:PATH, "
                                  "rapidata:PATH or folder:PATH, with PATH inside the allowed data folders")
        parsed = read_spec(text)
        if "cache" in parsed.options:
            raise DatasetSpecError(f"{parsed.source}: the cache option is not available on this shared server")
        if parsed.source == "shapes":
            self._check_shapes(parsed.options)
            return text, None
        real = self.data_path(parsed.path)
        if not real.exists():
            rest = parsed.path
            if parsed.source == "rapidata" and rest.count("/") == 1 and not rest.startswith((".", "/", "~")):
                raise SharedModeError("this server does not download datasets from the hub; ask for it to be "
                                      "placed in one of the allowed data folders")
            raise SharedModeError("no such file or folder inside the allowed data folders")
        options = dict(parsed.options)
        if "pickapic" in options:
            options["pickapic"] = str(self._pickapic_path(options["pickapic"]))
        pick = None
        if parsed.source == "richhf18k" and str(pickapic or "").strip():
            pick = str(self._pickapic_path(pickapic))
        return str(DatasetSpec(parsed.source, str(real), options)), pick

    def _pickapic_path(self, value: str) -> Path:
        real = self.data_path(value)
        if not real.exists():
            raise SharedModeError("no such Pick-a-Pic folder inside the allowed data folders")
        return real

    def _check_shapes(self, options: dict) -> None:
        unknown = set(options) - _SHAPES_OPTIONS
        if unknown:
            raise DatasetSpecError(f"shapes: unknown options {sorted(unknown)}; use n, seed, size, raters, split")
        n = options.get("n")
        if isinstance(n, int) and n > self.limits["shapes_n"]:
            raise SharedModeError(f"shapes: n is at most {self.limits['shapes_n']:,} on this shared server, got {n:,}")

    # --- export -----------------------------------------------------------------------------------

    def export_path(self, value: str) -> Path:
        """A new (or empty) folder inside the export root. Shared mode never overwrites: one user must
        not replace another's export."""
        if self.export_root is None:
            raise SharedModeError("this server has no export folder: use the zip download")
        real = self.resolve(value, (self.export_root,), "export")
        if real == self.export_root:
            raise SharedModeError("name a new folder inside the export folder, not the export folder itself")
        if real.exists() and (not real.is_dir() or any(real.iterdir())):
            raise SharedModeError("that export folder already exists and is not empty; choose a new name")
        return real

    # --- caps -------------------------------------------------------------------------------------

    def limit(self, name: str, local_max: int) -> int:
        """The largest value a page should offer for `name`: its own bound locally, capped when shared."""
        return min(int(local_max), int(self.limits[name])) if self.shared else int(local_max)

    def check_limit(self, name: str, value: int, what: str | None = None) -> int:
        if self.shared and value > self.limits[name]:
            raise SharedModeError(f"{what or name.replace('_', ' ')}: at most {self.limits[name]:,} on this "
                                  f"shared server, got {value:,}")
        return value

    # --- messages ---------------------------------------------------------------------------------

    def scrub(self, message) -> str:
        """`message` with server paths removed (shared mode; local mode returns it unchanged).

        A path inside a root is shown relative to that root (the user can type that back); any other
        absolute path becomes ‹server path›."""
        text = str(message)
        if not self.shared:
            return text
        roots = sorted({*self.data_roots, *self.model_roots, *([self.export_root] if self.export_root else [])},
                       key=lambda r: len(str(r)), reverse=True)
        for r in roots:
            if str(r) == os.sep:
                continue
            # Only the whole root: `/data` must not turn `/data2/secret` into `.2/secret`.
            root = re.escape(str(r))
            text = re.sub(root + re.escape(os.sep) + r"(?=[^\s'\"`)\]},;])", "", text)
            text = re.sub(root + r"(?![^\s'\"`)\]},;])", ".", text)
        return _ABS_PATH.sub(HIDDEN, text)

    def scrub_obj(self, obj):
        """`scrub` applied to every string inside nested dicts / lists (for raw record fields)."""
        if not self.shared:
            return obj
        if isinstance(obj, str):
            return self.scrub(obj)
        if isinstance(obj, dict):
            return {k: self.scrub_obj(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.scrub_obj(v) for v in obj]
        return obj


def current_policy() -> Policy:
    """The policy the environment sets now. Built once per set of variable values (pages ask for it
    several times a rerun); a test that changes the variables gets the new policy at once."""
    keys = (ENV_SHARED, ENV_DATA_ROOTS, ENV_MODEL_ROOTS, ENV_EXPORT_ROOT)
    return _policy_for(tuple(os.environ.get(k, "") for k in keys))


@functools.lru_cache(maxsize=8)
def _policy_for(values: tuple[str, ...]) -> Policy:
    keys = (ENV_SHARED, ENV_DATA_ROOTS, ENV_MODEL_ROOTS, ENV_EXPORT_ROOT)
    return Policy.from_env(dict(zip(keys, values)))
