"""Property-based tests of the public functions' arguments (issue 23): every input gives either an
`RHFError` with a readable message or a sensible result (right shape, finite, in range).

Examples are bounded and derandomized, so the suite is fast and the tally is reproducible. Run with
`-s` to print the tally (cases tried, errors, results per function); set RHF_FUZZ_TALLY=path to also
write it as JSON."""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections import Counter, defaultdict

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from rhf_core import metrics as M
from rhf_core.data import open_dataset, parse_spec
from rhf_core.dataset import tokenize_prompt
from rhf_core.errors import DatasetSpecError, ImageLoadError, InvalidArgumentError, RHFError
from rhf_core.heatmaps import MIN_PEAK, heatmap_to_mask, overlay_heatmap, resize_heatmap
from rhf_core.images import load_image

FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SLOW = settings(FAST, max_examples=15)  # anything that runs a model

TALLY: dict[str, Counter] = defaultdict(Counter)


@pytest.fixture(scope="module", autouse=True)
def _report_tally():
    yield
    rows = {k: dict(v) for k, v in sorted(TALLY.items())}
    print("\nfuzz tally (function: cases, errors, results)")
    for name, c in rows.items():
        print(f"  {name:<28} {c.get('cases', 0):>4} cases  {c.get('errors', 0):>4} errors  {c.get('results', 0):>4} results")
    if os.environ.get("RHF_FUZZ_TALLY"):
        with open(os.environ["RHF_FUZZ_TALLY"], "w") as f:
            json.dump(rows, f, indent=1)


def readable(err: Exception) -> bool:
    """A message a person can act on: one short line-ish text, not a repr or a traceback."""
    msg = str(err)
    return isinstance(err, RHFError) and 8 <= len(msg) <= 600 and "Traceback" not in msg


def outcome(name: str, call, errors=(RHFError,)):
    """Run `call`; count it; return ("error", err) for an expected library error, else ("ok", value)."""
    TALLY[name]["cases"] += 1
    try:
        value = call()
    except errors as err:
        assert readable(err), f"{type(err).__name__}: {err!r}"
        TALLY[name]["errors"] += 1
        return "error", err
    TALLY[name]["results"] += 1
    return "ok", value


# --- load_image ----------------------------------------------------------------------------------

MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I;16B", "I", "F", "HSV"]


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@st.composite
def small_images(draw):
    mode = draw(st.sampled_from(MODES))
    w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    if mode in ("I;16", "I;16B"):
        arr = draw(hnp.arrays(np.uint16, (h, w)))
        img = Image.frombytes(mode, (w, h), arr.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    elif mode == "I":
        img = Image.fromarray(draw(hnp.arrays(np.int32, (h, w))))
    elif mode == "F":
        elems = st.floats(width=32, allow_nan=True, allow_infinity=True)
        img = Image.fromarray(draw(hnp.arrays(np.float32, (h, w), elements=elems)))
    else:
        bands = len(Image.new(mode, (1, 1)).getbands())
        raw = draw(st.binary(min_size=w * h * bands, max_size=w * h * bands))
        img = Image.frombytes(mode, (w, h), raw) if mode != "1" else Image.frombytes("L", (w, h), raw).convert("1")
        if mode == "P" and draw(st.booleans()):
            img.info["transparency"] = draw(st.integers(0, 255))
    return img


SAVE_AS = {"PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I"), "TIFF": ("1", "L", "RGB", "RGBA", "CMYK", "I;16", "I", "F"),
           "JPEG": ("L", "RGB", "CMYK"), "BMP": ("1", "L", "P", "RGB"), "GIF": ("L", "P"), "WEBP": ("RGB", "RGBA")}


def _check_image(out: Image.Image, max_side):
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    assert out.width >= 1 and out.height >= 1
    if max_side is not None:
        assert max(out.size) <= max_side


@FAST
@given(img=small_images(), max_side=st.sampled_from([None, 8, 2048]))
def test_load_image_any_mode_in_memory(img, max_side):
    kind, out = outcome("load_image(PIL image)", lambda: load_image(img, max_side=max_side))
    assert kind == "ok", out  # every mode PIL can hold in memory converts
    _check_image(out, max_side)
    arr = np.asarray(out)
    if img.mode == "F":
        # NaN and infinities never black out the finite pixels.
        finite = np.isfinite(np.asarray(img))
        vals = np.asarray(img)[finite]
        if finite.any() and vals.max() > 0 and max_side is None:
            assert arr[..., 0][finite].max() > 0


@FAST
@given(img=small_images(), fmt=st.sampled_from(sorted(SAVE_AS)), cut=st.one_of(st.just(1.0), st.floats(0, 1)),
       flips=st.one_of(st.just([]), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4)),
       lazy=st.booleans())
def test_load_image_of_saved_truncated_and_damaged_files(img, fmt, cut, flips, lazy):
    assume(img.mode in SAVE_AS[fmt])
    try:
        data = bytearray(_encode(img, fmt))
    except (OSError, ValueError, KeyError):  # PIL cannot write this mode in this format
        assume(False)
    if cut < 0.9:
        data = data[: max(1, int(len(data) * cut))]
    for where, byte in flips:
        data[min(len(data) - 1, int(where * len(data)))] = byte
    data = bytes(data)

    def load():
        if lazy:
            try:
                src = Image.open(io.BytesIO(data))  # header only, like a caller's lazily opened file
            except Exception as e:  # noqa: BLE001 - the caller's own open fails before load_image is reached
                raise ImageLoadError(f"the test's own Image.open failed: {type(e).__name__}") from e
            return load_image(src)
        return load_image(data, name="upload.bin")

    kind, out = outcome(f"load_image({'lazy ' if lazy else ''}file)", load)
    if kind == "ok":
        _check_image(out, 2048)


@FAST
@given(data=st.binary(max_size=600))
def test_load_image_of_random_bytes(data):
    kind, out = outcome("load_image(random bytes)", lambda: load_image(data))
    if kind == "ok":
        _check_image(out, 2048)


# --- heatmaps ------------------------------------------------------------------------------------

ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=32)
heat_arrays = st.one_of(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12), elements=ANY_FLOAT),
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
               elements=st.floats(0, 1, width=32)),
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4), elements=ANY_FLOAT),
)
sizes = st.one_of(st.tuples(st.integers(1, 20), st.integers(1, 20)),
                  st.tuples(st.integers(-3, 20), st.floats(-2, 20)), st.just((0, 0)))
numbers = st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.0, 1.0, math.nan, math.inf, -math.inf]), st.integers(-2, 3))


@FAST
@given(heat=heat_arrays, threshold=st.one_of(st.floats(0, 1), numbers),
       mode=st.sampled_from(["absolute", "relative", "absolute", "relative", "percent"]),
       dilation=st.one_of(st.integers(0, 4), st.integers(-2, 4), st.floats(-1, 3), st.just(math.inf)),
       size=st.one_of(st.none(), sizes))
def test_heatmap_to_mask(heat, threshold, mode, dilation, size):
    kind, mask = outcome("heatmap_to_mask", lambda: heatmap_to_mask(heat, threshold, mode, dilation, size=size))
    if kind == "error":
        assert isinstance(mask, InvalidArgumentError)
        return
    assert mask.dtype == bool and mask.ndim == 2
    if size is not None:
        assert mask.shape == (size[1], size[0])
    clean = np.nan_to_num(heat, nan=0.0, posinf=1.0, neginf=0.0)
    if size is None and clean.max() < MIN_PEAK:
        assert not mask.any()  # a map with nothing marked gives an empty mask


@FAST
@given(heat=heat_arrays, size=sizes)
def test_resize_heatmap(heat, size):
    kind, out = outcome("resize_heatmap", lambda: resize_heatmap(heat, size))
    if kind == "ok":
        assert out.dtype == np.float32 and out.shape == (size[1], size[0])
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@FAST
@given(heat=heat_arrays, w=st.integers(1, 16), h=st.integers(1, 16), opacity=numbers,
       cmap=st.sampled_from(["inferno", "jet", "rainbow"]), normalize=st.booleans())
def test_overlay_heatmap(heat, w, h, opacity, cmap, normalize):
    img = Image.new("RGB", (w, h), (10, 200, 30))
    kind, out = outcome("overlay_heatmap", lambda: overlay_heatmap(img, heat, opacity, cmap, normalize))
    if kind == "ok":
        assert out.mode == "RGB" and out.size == (w, h)


# --- metrics -------------------------------------------------------------------------------------

series = st.lists(st.one_of(st.floats(-5, 5), st.sampled_from([math.nan, math.inf])), max_size=12)


@FAST
@given(a=series, b=series, same_length=st.integers(0, 3))
def test_plcc_srcc(a, b, same_length):
    if same_length:  # mostly pairs of one length, so the results are exercised, not just the length check
        a, b = a[: len(b)], b[: len(a)]
    for name, fn in (("plcc", M.plcc), ("srcc", M.srcc)):
        kind, v = outcome(name, lambda fn=fn: fn(a, b))
        if kind == "ok":
            assert isinstance(v, float) and (math.isnan(v) or -1 - 1e-9 <= v <= 1 + 1e-9)
        else:
            assert len(a) != len(b)


token_lists = st.lists(st.lists(st.one_of(st.floats(0, 1), st.just(math.nan)), max_size=6), max_size=5)


@FAST
@given(pred=token_lists, gt=token_lists, threshold=st.one_of(st.floats(0, 1), numbers), matched=st.integers(0, 3))
def test_token_metrics(pred, gt, threshold, matched):
    if matched:  # mostly labels that line up with the predictions
        pred = [p[: len(g)] for p, g in zip(pred, gt)]
        gt = [g[: len(p)] for p, g in zip(pred, gt)]
    kind, out = outcome("token_metrics", lambda: M.token_metrics(pred, gt, threshold))
    if kind == "error":
        return
    for k in ("precision", "recall", "f1"):
        assert math.isnan(out[k]) or 0 <= out[k] <= 1
    # F1 is undefined exactly when neither side flags a word.
    assert math.isnan(out["f1"]) == (out["tp"] + out["fp"] + out["fn"] == 0)


@FAST
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy warns computing NaN metrics of NaN maps
@given(p=heat_arrays, g=heat_arrays, same_shape=st.booleans())
def test_map_metrics(p, g, same_shape):
    if same_shape:
        g = np.resize(g, p.shape)
    for name, fn in (("cc", M.cc), ("kld", M.kld), ("sim", M.sim), ("nss", lambda a, b: M.nss(a, b > 0)),
                     ("auc_judd", lambda a, b: M.auc_judd(a, b > 0))):
        kind, v = outcome(name, lambda fn=fn: fn(p, g), errors=(RHFError,))
        if kind == "ok":
            assert isinstance(v, float)
        else:
            assert p.shape != g.shape
    kind, out = outcome("heatmap_metrics", lambda: M.heatmap_metrics([p], [g]))
    if kind == "ok":
        assert out["n_samples"] == 1


# --- dataset specs -------------------------------------------------------------------------------

option_values = {
    "n": st.one_of(st.integers(1, 6), st.integers(-3, 6),
                   st.sampled_from(["0", "2.5", "x", "", "100000000", "1000001", "1e3"])),
    "seed": st.one_of(st.integers(0, 3), st.integers(-3, 3), st.sampled_from(["-1", "x", "18446744073709551617"])),
    "size": st.sampled_from(["16", "32", "48", "8", "2000", "3.5", "-1", "x"]),
    "raters": st.sampled_from(["richhf", "rapidata", "richhf", "mturk", "5", ""]),
    "colour": st.just("red"),
}


@SLOW
@given(n=option_values["n"], opts=st.dictionaries(st.sampled_from(["seed", "size", "raters", "colour"]), st.just(None),
                                                   max_size=2).flatmap(
    lambda keys: st.fixed_dictionaries({k: option_values[k] for k in keys})),
    split=st.sampled_from([None, None, "train", "test", "validation"]))
def test_shapes_specs(n, opts, split):
    opts = {"n": n, **opts}  # always given: the default world of 2000 records takes half a minute to build
    spec = "shapes:" + ",".join(f"{k}={v}" for k, v in opts.items())
    t0 = time.perf_counter()
    kind, ds = outcome("open_dataset(shapes:...)", lambda: open_dataset(spec, split=split))
    if kind == "error":
        assert isinstance(ds, DatasetSpecError) and time.perf_counter() - t0 < 2.0
        return
    n = int(opts["n"])
    assert 1 <= n <= 6
    if split is None:
        assert len(ds) == n and len(ds.frame) == n


@FAST
@given(text=st.one_of(st.text(max_size=30), st.sampled_from(
    ["shapes", "SHAPES:n=3", "richhf:", "folder:", ":", "rapidata", "/", ".", "..", "~", "nope:x"])))
def test_parse_spec(text, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))  # relative paths resolve in an empty folder
    t0 = time.perf_counter()
    kind, out = outcome("parse_spec", lambda: parse_spec(text))
    assert time.perf_counter() - t0 < 2.0  # never a walk of the whole filesystem
    if kind == "ok":
        source, arg = out
        assert source in ("shapes", "richhf18k", "rapidata", "folder") and isinstance(arg, str)


def test_a_bare_path_is_sniffed_without_walking_the_tree(tmp_path):
    deep = tmp_path / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (deep / "x.parquet").write_bytes(b"")
    with pytest.raises(DatasetSpecError, match="unknown dataset spec"):
        parse_spec(str(tmp_path))  # rglob found it five levels down, and walked "/" the same way
    (tmp_path / "a" / "data").mkdir()
    (tmp_path / "a" / "data" / "train.parquet").write_bytes(b"")
    assert parse_spec(str(tmp_path / "a")) == ("rapidata", str(tmp_path / "a"))


# --- predict, repair, the generator's checks --------------------------------------------------------

@pytest.fixture(scope="module")
def rahf():
    from rhf_core.rahf import load_rahf

    return load_rahf()


prompts = st.one_of(st.text(alphabet=" .,?!:;\"abcxyz", max_size=20), st.sampled_from(
    ["two red circles", "", ".", " , ", None, 5, b"two circles"]))
batch_sizes = st.one_of(st.integers(-2, 3), st.sampled_from([0, 2.5, True, None, "4", 10**6, np.int64(2)]))


@SLOW
@given(img=small_images(), prompt=st.one_of(st.just("two red circles"), prompts),
       batch_size=st.one_of(st.just(4), batch_sizes), as_bytes=st.booleans())
def test_predict_arguments(rahf, img, prompt, batch_size, as_bytes):
    source = _encode(img.convert("RGB"), "PNG") if as_bytes else img
    kind, out = outcome("RAHF.predict", lambda: rahf.predict([source], [prompt], batch_size=batch_size))
    if kind == "error":
        return
    (pred,) = out
    size = img.size
    assert isinstance(prompt, str) and tokenize_prompt(prompt)
    for s, v in pred.scores.items():
        assert math.isfinite(v) and 0 <= v <= 1, (s, v)
    for h, m in pred.heatmaps.items():
        assert m.shape == (size[1], size[0]) and np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1
    assert [w for w, _ in pred.words] == tokenize_prompt(prompt)
    assert all(math.isfinite(p) for _, p in pred.words)


def test_predict_scores_pil_images_as_load_image_decodes_them(rahf):
    """16-bit and transparent images given to predict directly used to skip load_image (scores
    0.35-0.5 off): a PIL image now scores exactly as its decoded RGB version."""
    rgb = np.zeros((48, 48, 3), np.uint8)
    rgb[12:36, 12:36] = (200, 40, 40)
    gray = Image.fromarray(rgb).convert("L")
    deep = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)  # the same picture in 16 bits
    clear = Image.fromarray(np.dstack([rgb, np.where(rgb[..., :1] > 0, 255, 0).astype(np.uint8)]), "RGBA")
    for img in (deep, clear):
        direct = rahf.predict([img], ["two red squares"])[0].scores
        decoded = rahf.predict([load_image(img, max_side=None)], ["two red squares"])[0].scores
        assert direct == pytest.approx(decoded, abs=1e-5)
    assert rahf.predict([deep], ["two red squares"])[0].scores == pytest.approx(
        rahf.predict([gray.convert("RGB")], ["two red squares"])[0].scores, abs=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be"),
    ({"prompts": ["."]}, "has no words"),
    ({"prompts": [""]}, "has no words"),
    ({"prompts": [None]}, "must be text"),
    ({"prompts": ["a", "b"]}, "1 images but 2 prompts"),
    ({"prompts": "two red circles"}, "pass lists"),
])
def test_bad_predict_arguments(rahf, kwargs, message):
    args = {"images": [Image.new("RGB", (8, 8))], "prompts": ["two red circles"], **kwargs}
    with pytest.raises(InvalidArgumentError, match=message):
        rahf.predict(**args)


class _CopyGenerator:
    """Stands in for the inpainting model: n copies of the image (the checks under test come first)."""

    def inpaint(self, image, mask, prompt, n=4, **kw):
        return [image.copy() for _ in range(n)]


GOOD = {"seed": st.integers(0, 3), "steps": st.integers(2, 4), "guidance": st.floats(0, 8), "n": st.integers(1, 2),
        "threshold": st.floats(0, 1), "dilation": st.integers(0, 3), "strength": st.floats(0.5, 1),
        "heatmap_array": st.one_of(st.none(), hnp.arrays(np.float32, (5, 6), elements=st.floats(0, 1, width=32))),
        "prompt": st.sampled_from(["two red circles", "a blue square", "circle"])}
BAD = {"seed": st.sampled_from([-1, 2.5, None, "1", True]), "steps": st.sampled_from([0, -1, 2.5, 1001, math.nan]),
       "guidance": st.sampled_from([math.inf, -math.inf, math.nan, -1.0, 101.0, "7"]),
       "n": st.sampled_from([0, -1, 1.5, 5000, None]), "threshold": st.sampled_from([-0.1, 1.5, math.nan, "0.5"]),
       "dilation": st.sampled_from([-1, 1.5, math.inf]), "strength": st.sampled_from([0.0, -0.5, 1.5, math.nan]),
       "heatmap_array": heat_arrays, "prompt": prompts}


@st.composite
def repair_args(draw):
    """Valid arguments with at most one drawn from the bad values (and sometimes all valid)."""
    bad = draw(st.sampled_from([None, *sorted(BAD)]))
    return bad, {k: draw(BAD[k] if k == bad else GOOD[k]) for k in GOOD}


@SLOW
@given(args=repair_args())
def test_repair_arguments(rahf, args):
    from rhf_core.repair import repair

    bad, kw = args
    img = Image.new("RGB", (24, 20), (240, 240, 240))
    kind, out = outcome("repair", lambda: repair(img, predictor=rahf, generator=_CopyGenerator(), **kw))
    if kind == "error":
        # Only a bad argument (or a bad heatmap/prompt drawn from the mixed sets) is refused.
        assert bad is not None, out
        return
    n = kw["n"]
    assert out.mask.shape == (20, 24) and out.mask.dtype == bool
    assert len(out.candidates) in (0, n)
    for c in [out.before, *out.candidates]:
        assert all(math.isfinite(v) for v in c.scores.values())


@FAST
@given(args=repair_args())
def test_generator_checks_before_any_work(args):
    """generate/inpaint check seed, steps, guidance (and strength, n) before touching the pipeline."""
    from rhf_core.t2i.generator import Generator, GeneratorError

    gen = Generator.__new__(Generator)  # no pipeline at all: only the checks can run
    bad, kw = args
    seed, steps, guidance, strength, n = (kw[k] for k in ("seed", "steps", "guidance", "strength", "n"))

    for name, call in (("Generator.generate", lambda: gen.generate(["two red circles"], n=n, seed=seed, steps=steps,
                                                                   guidance=guidance)),
                       ("Generator.inpaint", lambda: gen.inpaint(Image.new("RGB", (8, 8)), np.ones((8, 8), bool),
                                                                 "two red circles", n=n, seed=seed, steps=steps,
                                                                 guidance=guidance, strength=strength))):
        TALLY[name]["cases"] += 1
        try:
            call()
        except GeneratorError as err:
            assert readable(err)
            TALLY[name]["errors"] += 1
        except AttributeError:  # got past every check to the (absent) pipeline
            TALLY[name]["results"] += 1
            checked = {"seed", "steps", "guidance", "n"} | ({"strength"} if name == "Generator.inpaint" else set())
            assert bad not in checked, (name, bad, kw)
