"""Small files in the real formats (RichHF-18K TFRecords + Pick-a-Pic parquet, Rapidata parquet),
built locally for the reader tests and the page tests."""

import io
import json

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features, List, Value
from datasets import Image as HFImage
from PIL import Image

from rhf_core.sources.tfrecord import make_example, write_tfrecord


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def _jpg(color, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=95)
    return buf.getvalue()


ARTIFACT = np.zeros((512, 512), np.uint8)
ARTIFACT[100:140, 200:260] = 255
ARTIFACT[300:310, 10:20] = 85
MISALIGN = np.zeros((512, 512), np.uint8)


def richhf_example(filename, scores=(0.25, 0.5, 0.75, 1.0), labels="1 0 1 1 1 1 1", art=ARTIFACT, mis=MISALIGN):
    feats = {
        "filename": filename,
        "aesthetics_score": scores[0],
        "artifact_score": scores[1],
        "misalignment_score": scores[2],
        "overall_score": scores[3],
        "prompt_misalignment_label": labels,
    }
    if art is not None:
        feats["artifact_map"] = _png(art)
    if mis is not None:
        feats["misalignment_map"] = _png(mis)
    return make_example(feats)


def build_richhf(tmp_path):
    """RichHF-18K TFRecords (train/dev/test) and a Pick-a-Pic folder (parquet + one image file)."""
    tf = tmp_path / "richhf"
    tf.mkdir()
    write_tfrecord(tf / "train.tfrecord", [
        richhf_example("aaa.jpg"),
        richhf_example("bbb.jpg", labels="1 1"),  # fewer labels than tokens
        richhf_example("zzz.jpg", art=None),  # not in Pick-a-Pic, no artifact map
    ])
    write_tfrecord(tf / "dev.tfrecord", [richhf_example("ddd.jpg", labels="0 1 1")])
    write_tfrecord(tf / "test.tfrecord", [richhf_example("ccc.jpg", labels="1 1 0")])
    pick = tmp_path / "pickapic"
    pick.mkdir()
    table = pa.table({
        "caption": ["A red cat, sitting on a mat.", "dog under the moon"],
        "image_0_uid": ["aaa", "ccc"],
        "image_1_uid": ["bbb", "ddd"],
        "jpg_0": pa.array([_jpg((200, 20, 20)), None], pa.binary()),
        "jpg_1": pa.array([_jpg((20, 20, 200)), None], pa.binary()),
        "best_image_uid": ["aaa", "ccc"],
    })
    pq.write_table(table, pick / "train-00000.parquet", row_group_size=1)
    Image.new("RGB", (16, 16), (0, 255, 0)).save(pick / "ddd.png")  # an image held as a file
    return tf, pick



FEATURES = Features({
    "image": HFImage(),
    "prompt": Value("string"),
    "word_scores": Value("string"),
    "alignment_score_norm": Value("float32"),
    "coherence_score_norm": Value("float32"),
    "style_score_norm": Value("float32"),
    "alignment_heatmap": List(List(Value("float16"))),
    "coherence_heatmap": List(List(Value("float16"))),
    "alignment_score": Value("float32"),
    "coherence_score": Value("float32"),
    "style_score": Value("float32"),
})


def _heat(h, w, value, hole=None):
    rows = [[value] * w for _ in range(h)]
    if hole:
        rows[hole[0]][hole[1]] = None  # a per-pixel null
    return rows


def rapidata_rows():
    return {
        "image": [Image.new("RGB", (12, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]],
        "prompt": ["A red apple on a table.", "two dogs", "a blue car", "broken row"],
        "word_scores": [
            json.dumps([["[No_mistakes]", 6.0], ["A", 0.0], ["red", 3.0], ["apple", 1.5], ["on", 0.0], ["a", 0.0], ["table.", 0.0]]),
            json.dumps([["two", 2.0], ["dogs", 0.0]]),  # no [No_mistakes] entry at all
            "[['[No_mistakes]', 4.0], ['a', 0.0], ['blue', 0.0], ['car', 0.0]]",  # python-literal spelling
            "[[\"two\", 2.0], [\"dogs\"",  # malformed: cut off
        ],
        "alignment_score_norm": [0.25, 0.5, 1.0, 0.5],
        "coherence_score_norm": [0.75, 0.5, 0.9, 0.5],
        "style_score_norm": [0.5, 0.5, 0.8, 0.5],
        "alignment_heatmap": [_heat(6, 4, 0.5, hole=(2, 3)), None, None, None],
        "coherence_heatmap": [_heat(6, 4, 0.25), _heat(3, 3, 0.0), None, None],
        "alignment_score": [2.0, 3.0, 5.0, 3.0],
        "coherence_score": [4.0, 3.0, 4.6, 3.0],
        "style_score": [3.0, 3.0, 4.2, 3.0],
    }


def build_rapidata(tmp_path):
    """Two Rapidata-style parquet shards written by `datasets` with the hub's features."""
    data = tmp_path / "rapidata" / "data"
    data.mkdir(parents=True)
    ds = datasets.Dataset.from_dict(rapidata_rows(), features=FEATURES)
    ds.select(range(2)).to_parquet(str(data / "train-00000-of-00002.parquet"))
    ds.select(range(2, 4)).to_parquet(str(data / "train-00001-of-00002.parquet"))
    return tmp_path / "rapidata"


