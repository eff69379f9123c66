"""RichHF-18K: real TFRecord framing and tf.train.Example encoding, joined with Pick-a-Pic parquet."""

import struct

import numpy as np
import pytest

from rhf_core.data import open_dataset
from rhf_core.errors import DatasetFormatError, DatasetNotFoundError, DatasetSpecError
from rhf_core.sources.richhf import match_labels
from rhf_core.sources.tfrecord import frame_record, make_example, parse_example
from tests.builders import richhf_example, build_richhf


def crc32c_reference(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli), written independently of the library under test."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked_reference(data: bytes) -> int:
    crc = crc32c_reference(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@pytest.fixture
def richhf(tmp_path):
    return build_richhf(tmp_path)


def test_framing_matches_the_tfrecord_spec():
    assert crc32c_reference(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    data = b"hello tfrecord"
    framed = frame_record(data)
    assert framed[:8] == struct.pack("<Q", len(data))
    assert framed[8:12] == struct.pack("<I", masked_reference(framed[:8]))
    assert framed[12:-4] == data
    assert framed[-4:] == struct.pack("<I", masked_reference(data))


def test_example_encoding_is_protobuf_wire_format():
    raw = make_example({"filename": "x.png"})
    # Example{features(1){feature(1) map entry{key(1) "filename", value(2) Feature{bytes_list(1){value(1)}}}}}
    inner = b"\n\x05x.png"
    bytes_list = b"\n" + bytes([len(inner)]) + inner
    entry = b"\n\x08filename" + b"\x12" + bytes([len(bytes_list)]) + bytes_list
    features = b"\n" + bytes([len(entry)]) + entry
    assert raw == b"\n" + bytes([len(features)]) + features
    assert parse_example(raw) == {"filename": [b"x.png"]}
    floats = parse_example(make_example({"s": [0.5, 0.25], "n": [3]}))
    assert floats == {"s": [0.5, 0.25], "n": [3]}


def test_every_field_reads_back(richhf):
    tf, pick = richhf
    ds = open_dataset(f"richhf18k:{tf}", pickapic=str(pick))
    assert len(ds) == 5 and ds.n_skipped == 0
    assert sorted(ds.frame["split"].unique()) == ["dev", "test", "train"]
    rec = ds.get("train/aaa")
    assert rec.prompt == "A red cat, sitting on a mat."
    assert rec.scores == pytest.approx({"aesthetics": 0.25, "plausibility": 0.5, "alignment": 0.75, "overall": 1.0})
    assert rec.words == [("A", 0.0), ("red", 1.0), ("cat", 0.0), ("sitting", 0.0), ("on", 0.0), ("a", 0.0), ("mat", 0.0)]
    art = rec.heatmaps["implausibility"]
    assert art.shape == (512, 512) and art.dtype == np.float32
    assert art[120, 230] == 1.0 and art[305, 15] == pytest.approx(85 / 255) and art[0, 0] == 0.0
    assert rec.heatmaps["misalignment"].max() == 0.0  # collected, all zero: kept, not dropped
    assert rec.meta["filename"] == "aaa.jpg" and rec.meta["label_mismatch"] is False
    img = rec.image
    assert img.size == (40, 30) and img.getpixel((5, 5))[0] > 150  # jpg_0 of row 0: red
    assert ds.get("train/bbb").image.getpixel((5, 5))[2] > 150  # jpg_1: blue
    row = ds.frame.set_index("id").loc["train/aaa"]
    assert row["plausibility"] == 0.5 and row["n_flagged_words"] == 1
    assert row["implausibility_mass"] == pytest.approx(float(art.mean()))


def test_label_count_mismatch_is_kept_and_flagged(richhf):
    tf, pick = richhf
    rec = open_dataset(f"richhf18k:{tf}", pickapic=str(pick), split="train").get("train/bbb")
    assert rec.meta["label_mismatch"] is True
    assert rec.meta["n_tokens"] == 7 and rec.meta["n_labels"] == 2
    assert rec.words == [("A", 0.0), ("red", 0.0)]
    words, info = match_labels("one two three", "0 1 1 0")
    assert words == [("one", 1.0), ("two", 0.0), ("three", 0.0)] and info["label_mismatch"]


def test_missing_image_stays_browsable_as_labels_only(richhf):
    tf, pick = richhf
    ds = open_dataset(f"richhf18k:{tf}", pickapic=str(pick))
    zzz = ds.get("train/zzz")
    assert zzz.image is None and zzz.prompt == "" and zzz.words == []
    assert "implausibility" not in zzz.heatmaps  # not collected, unlike an all-zero map
    assert zzz.meta["prompt_misalignment_label"] == "1 0 1 1 1 1 1"
    ccc = ds.get("test/ccc")  # caption known, jpg column null
    assert ccc.prompt == "dog under the moon" and ccc.image is None
    assert ccc.words == [("dog", 0.0), ("under", 0.0), ("the", 1.0)] and ccc.meta["label_mismatch"]
    ddd = ds.get("dev/ddd")  # caption from parquet, image from a {uid}.png file
    assert ddd.image.getpixel((0, 0)) == (0, 255, 0)
    assert ds.frame.set_index("id").loc["train/zzz", "has_image"] == False  # noqa: E712


def test_split_and_labels_only_without_pickapic(richhf):
    tf, _ = richhf
    ds = open_dataset(f"richhf18k:{tf}", split="test")
    assert len(ds) == 1 and ds[0].image is None and ds[0].prompt == ""
    with pytest.raises(DatasetSpecError, match="split"):
        open_dataset(f"richhf18k:{tf}", split="validation")


def test_truncated_and_corrupt_records_are_skipped_and_counted(tmp_path):
    payloads = [richhf_example(f"u{i}.jpg") for i in range(3)]
    blob = b"".join(frame_record(p) for p in payloads)
    (tmp_path / "train.tfrecord").write_bytes(blob[:-10])  # cut into the last record
    bad = bytearray(frame_record(payloads[0]))
    bad[20] ^= 0xFF  # flip a data byte: its CRC no longer matches
    (tmp_path / "dev.tfrecord").write_bytes(bytes(bad) + frame_record(payloads[1]) + frame_record(b"\xff\xff\xff\xff"))
    ds = open_dataset(f"richhf18k:{tmp_path}")
    assert len(ds) == 3  # two from train, one good one from dev
    reasons = " | ".join(s.reason for s in ds.skipped)
    assert ds.n_skipped == 3
    assert "truncated" in reasons and "CRC" in reasons and "tf.train.Example" in reasons


def test_not_a_tfrecord_and_missing_paths(tmp_path):
    (tmp_path / "train.tfrecord").write_text("this is not a tfrecord file at all")
    with pytest.raises(DatasetFormatError, match="not a TFRecord"):
        open_dataset(f"richhf18k:{tmp_path}")
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        open_dataset("richhf18k:/no/such/dir")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError, match="train.tfrecord"):
        open_dataset(f"richhf18k:{empty}")
    with pytest.raises(DatasetNotFoundError, match="Pick-a-Pic"):
        open_dataset(f"richhf18k:{tmp_path}", pickapic=str(tmp_path / "nope"))


# --- hardening (issue 23): one bad example is skipped with a reason, never fatal, never silently fixed ---

def _png_bytes(arr, mode=None, fmt="PNG") -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, fmt) if mode else Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def _write(tmp_path, payloads, name="train.tfrecord"):
    from rhf_core.sources.tfrecord import write_tfrecord

    write_tfrecord(tmp_path / name, payloads)
    return tmp_path


def _reasons(ds) -> str:
    return " | ".join(f"{s.where}: {s.reason}" for s in ds.skipped)


def test_wrong_feature_kinds_skip_the_row_not_the_dataset(tmp_path):
    bad_score = make_example({"filename": "b1.jpg", "misalignment_score": b"0.5"})
    bad_name = make_example({"filename": 7, "artifact_score": 0.5})
    bad_label = make_example({"filename": "b3.jpg", "prompt_misalignment_label": 0.5})
    two_names = make_example({"filename": ["b4.jpg", "b5.jpg"]})
    _write(tmp_path, [richhf_example("good1.jpg"), bad_score, bad_name, bad_label, two_names, richhf_example("good2.jpg")])
    ds = open_dataset(f"richhf18k:{tmp_path}")
    assert ds.ids == ["train/good1", "train/good2"]
    assert ds.n_skipped == 4
    reasons = _reasons(ds)
    assert "misalignment_score" in reasons and "filename" in reasons and "prompt_misalignment_label" in reasons
    assert "record 1" in ds.skipped[0].where and "record 4" in ds.skipped[3].where
    assert "2 values" in ds.skipped[3].reason


def test_missing_or_undecodable_filename_is_skipped(tmp_path):
    _write(tmp_path, [make_example({"artifact_score": 0.5}), make_example({"filename": b"\xff\xfe.jpg"}),
                      make_example({"filename": ""}), richhf_example("ok.jpg")])
    ds = open_dataset(f"richhf18k:{tmp_path}")
    assert ds.ids == ["train/ok"] and ds.n_skipped == 3
    assert "filename" in ds.skipped[0].reason and "UTF-8" in ds.skipped[1].reason


def test_duplicate_filenames_keep_the_first_and_skip_the_rest(tmp_path):
    _write(tmp_path, [richhf_example("same.jpg", scores=(0.1, 0.2, 0.3, 0.4)), richhf_example("same.jpg")])
    ds = open_dataset(f"richhf18k:{tmp_path}")
    assert len(ds) == 1 and ds.get("train/same").scores["aesthetics"] == pytest.approx(0.1)
    assert ds.n_skipped == 1 and "duplicate" in ds.skipped[0].reason


@pytest.mark.parametrize("labels", ["1 x 1 1 1 1 1", "1 0.5 1 1 1 1 1", "1 2 1 1 1 1 1", "1 - 1 1 1 1 1"])
def test_non_numeric_token_labels_never_read_as_aligned(richhf, labels):
    tf, pick = richhf
    _write(tf, [richhf_example("aaa.jpg", labels=labels)])
    rec = open_dataset(f"richhf18k:{tf}", pickapic=str(pick), split="train").get("train/aaa")
    assert rec.words == []  # no word is claimed aligned (or misaligned) from an unreadable label
    assert rec.meta["prompt_misalignment_label"] == labels  # the raw text is kept
    assert any("prompt_misalignment_label" in n for n in rec.meta["notes"])
    with pytest.raises(DatasetFormatError, match="0/1"):
        match_labels("A red cat sitting on a mat", labels)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_reject_the_row(tmp_path, value):
    _write(tmp_path, [richhf_example("bad.jpg", scores=(0.5, value, 0.5, 0.5)), richhf_example("ok.jpg")])
    ds = open_dataset(f"richhf18k:{tmp_path}")
    assert ds.ids == ["train/ok"] and ds.n_skipped == 1
    assert "artifact_score" in ds.skipped[0].reason


def test_out_of_range_scores_are_kept_raw_with_a_note_never_clipped(tmp_path):
    _write(tmp_path, [richhf_example("big.jpg", scores=(0.5, 0.5, 7.0, -0.25))])
    ds = open_dataset(f"richhf18k:{tmp_path}")
    rec = ds.get("train/big")
    assert "alignment" not in rec.scores and "overall" not in rec.scores  # not clipped to 1.0 / 0.0
    assert rec.scores["plausibility"] == 0.5
    assert rec.meta["raw_scores"]["misalignment_score"] == 7.0 and rec.meta["raw_scores"]["overall_score"] == -0.25
    assert any("misalignment_score" in n and "7" in n for n in rec.meta["notes"])
    row = ds.frame.iloc[0]
    assert np.isnan(row["alignment"]) and "misalignment_score" in row["notes"]


def test_heatmaps_are_never_clipped_or_silently_dropped(tmp_path):
    from rhf_core.sources.richhf import decode_map

    rgb = np.zeros((8, 8, 3), np.uint8)
    nan_f = np.full((8, 8), 0.5, np.float32)
    nan_f[2, 2] = np.nan
    over_f = np.full((8, 8), 3.0, np.float32)
    neg_i = np.full((8, 8), -5, np.int32)
    ok16 = np.full((8, 8), 65535, np.uint16)
    ok_f = np.full((8, 8), 0.25, np.float32)
    assert decode_map(_png_bytes(ok16)).max() == 1.0
    assert decode_map(_png_bytes(ok_f, fmt="TIFF")).max() == pytest.approx(0.25)
    for arr, fmt, words in [(nan_f, "TIFF", "NaN"), (over_f, "TIFF", "outside"), (neg_i, "TIFF", "outside"),
                            (rgb, "PNG", "single-channel")]:
        with pytest.raises(DatasetFormatError, match=words):
            decode_map(_png_bytes(arr, fmt=fmt))
    with pytest.raises(DatasetFormatError, match="too large"):
        decode_map(_png_bytes(np.zeros((3000, 3000), np.uint8)))  # refused from its header
    garbage = make_example({"filename": "g.jpg", "artifact_map": b"\x89PNG not really"})
    rgb_map = make_example({"filename": "r.jpg", "misalignment_map": _png_bytes(rgb)})
    _write(tmp_path, [garbage, rgb_map, richhf_example("ok.jpg")])
    ds = open_dataset(f"richhf18k:{tmp_path}")
    assert ds.ids == ["train/ok"] and ds.n_skipped == 2
    assert "artifact_map" in ds.skipped[0].reason and "misalignment_map" in ds.skipped[1].reason


def test_pickapic_looks_only_in_its_folder_and_data_subfolder(tmp_path, richhf):
    import shutil

    tf, pick = richhf
    deep = tmp_path / "deep"
    (deep / "a" / "b").mkdir(parents=True)
    shutil.copy(pick / "train-00000.parquet", deep / "a" / "b" / "train-00000.parquet")
    with pytest.raises(DatasetNotFoundError, match="no Pick-a-Pic parquet"):
        open_dataset(f"richhf18k:{tf}", pickapic=str(deep))  # not walked recursively
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    shutil.copy(pick / "train-00000.parquet", hub / "data" / "train-00000.parquet")
    ds = open_dataset(f"richhf18k:{tf}", pickapic=str(hub))  # the hub layout: DIR/data/*.parquet
    assert ds.get("train/aaa").prompt == "A red cat, sitting on a mat."


def test_pickapic_root_of_the_filesystem_is_a_clear_error_not_a_walk(richhf):
    tf, _ = richhf
    with pytest.raises(DatasetNotFoundError, match="Pick-a-Pic"):
        open_dataset(f"richhf18k:{tf}", pickapic="/")


def test_pickapic_permission_errors_are_clear(richhf, monkeypatch):
    import os

    from rhf_core.errors import RHFError

    tf, pick = richhf
    real = os.scandir

    def denied(path="."):
        if str(path) == str(pick):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(RHFError, match="permission denied"):
        open_dataset(f"richhf18k:{tf}", pickapic=str(pick))


def test_a_stray_parquet_beside_pickapic_is_skipped_with_a_reason(richhf):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tf, pick = richhf
    pq.write_table(pa.table({"x": [1, 2]}), pick / "other.parquet")
    (pick / "broken.parquet").write_bytes(b"PAR1 not really")
    ds = open_dataset(f"richhf18k:{tf}", pickapic=str(pick))
    assert ds.get("train/aaa").prompt == "A red cat, sitting on a mat."
    reasons = _reasons(ds)
    assert "other.parquet" in reasons and "missing columns" in reasons and "broken.parquet" in reasons


def test_pickapic_image_column_of_paths_is_never_read_as_a_path(tmp_path, richhf):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tf, _ = richhf
    secret = tmp_path / "secret.png"
    from PIL import Image

    Image.new("RGB", (4, 4)).save(secret)
    pick = tmp_path / "pp"
    pick.mkdir()
    pq.write_table(pa.table({"caption": ["x"], "image_0_uid": ["aaa"], "image_1_uid": ["bbb"],
                             "jpg_0": [str(secret)], "jpg_1": [str(secret)]}), pick / "p.parquet")
    ds = open_dataset(f"richhf18k:{tf}", pickapic=str(pick))
    rec = ds.get("train/aaa")
    assert rec.prompt == "x" and rec.image is None


def _records(n):
    return [frame_record(richhf_example(f"r{i}.jpg")) for i in range(n)]


def test_corrupt_header_mid_file_keeps_rows_before_and_finds_the_next_record(tmp_path):
    recs = _records(5)
    bad = bytearray(recs[2])
    bad[3] ^= 0x01  # the length no longer matches its CRC
    (tmp_path / "train.tfrecord").write_bytes(recs[0] + recs[1] + bytes(bad) + recs[3] + recs[4])
    ds = open_dataset(f"richhf18k:{tmp_path}")
    assert ds.ids == ["train/r0", "train/r1", "train/r3", "train/r4"]
    assert ds.n_skipped == 1 and "header" in ds.skipped[0].reason and "byte" in ds.skipped[0].reason


def test_truncated_record_mid_file_keeps_every_whole_record(tmp_path):
    recs = _records(5)
    cut = recs[2][: len(recs[2]) // 2]  # a record cut short, followed by whole ones
    (tmp_path / "train.tfrecord").write_bytes(recs[0] + recs[1] + cut + recs[3] + recs[4])
    ds = open_dataset(f"richhf18k:{tmp_path}")
    assert ds.ids == ["train/r0", "train/r1", "train/r3", "train/r4"]
    assert ds.n_skipped == 1 and ds.skipped[0].reason


def test_garbage_after_good_records_is_reported_not_fatal(tmp_path):
    recs = _records(2)
    (tmp_path / "train.tfrecord").write_bytes(recs[0] + recs[1] + b"\x00" * 5000 + b"garbage" * 100)
    ds = open_dataset(f"richhf18k:{tmp_path}")
    assert ds.ids == ["train/r0", "train/r1"] and ds.n_skipped == 1 and "rest of file" in ds.skipped[0].reason


def test_a_cached_frame_still_reports_skipped_rows(tmp_path):
    _write(tmp_path, [richhf_example("ok.jpg"), make_example({"filename": 7})])
    first = open_dataset(f"richhf18k:{tmp_path}")
    again = open_dataset(f"richhf18k:{tmp_path}")  # from the frame cache
    assert [s.reason for s in again.skipped] == [s.reason for s in first.skipped] and again.n_skipped == 1
    assert again.ids == ["train/ok"]


def test_a_file_whose_only_record_is_damaged_is_a_damaged_tfrecord(tmp_path):
    bad = bytearray(frame_record(richhf_example("x.jpg")))
    bad[40] ^= 0xFF
    (tmp_path / "train.tfrecord").write_bytes(bytes(bad))
    ds = open_dataset(f"richhf18k:{tmp_path}")
    assert len(ds) == 0 and ds.n_skipped == 1 and "CRC" in ds.skipped[0].reason


def test_the_search_past_damage_is_bounded(tmp_path, monkeypatch):
    from rhf_core.sources import tfrecord

    monkeypatch.setattr(tfrecord, "MAX_RESYNC_CANDIDATES", 50)
    recs = _records(2)
    (tmp_path / "train.tfrecord").write_bytes(recs[0] + b"\x00\x00\x00\x00\x01" * 1000 + recs[1])
    ds = open_dataset(f"richhf18k:{tmp_path}")
    assert ds.ids == ["train/r0"] and ds.n_skipped == 1
    assert "gave up after 50 candidates" in ds.skipped[0].reason and "rest of file" in ds.skipped[0].reason


def test_an_image_file_gone_after_opening_is_an_image_error(richhf):
    from rhf_core.errors import ImageLoadError

    tf, pick = richhf
    ds = open_dataset(f"richhf18k:{tf}", pickapic=str(pick))
    rec = ds.get("dev/ddd")  # its image is the file ddd.png
    (pick / "ddd.png").unlink()
    with pytest.raises(ImageLoadError, match="ddd"):
        rec.image


def test_pickapic_parquet_with_odd_columns_is_skipped_with_a_reason(richhf):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tf, pick = richhf
    dup = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"]), pa.array(["aaa"]), pa.array(["q"])],
                               names=["caption", "caption", "image_0_uid", "image_1_uid"])
    pq.write_table(dup, pick / "dup.parquet")
    pq.write_table(pa.table({"caption": [5], "image_0_uid": ["aaa"], "image_1_uid": ["q"]}), pick / "ints.parquet")
    ds = open_dataset(f"richhf18k:{tf}", pickapic=str(pick))
    assert ds.get("train/aaa").prompt == "A red cat, sitting on a mat."  # from the good shard only
    reasons = _reasons(ds)
    assert "more than once" in reasons and "not text" in reasons
