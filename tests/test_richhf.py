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
