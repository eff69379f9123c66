"""TFRecord files and `tf.train.Example` messages without TensorFlow.

Framing (tensorflow/core/lib/io/record_writer.h): each record is
    uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)
little-endian. `Example` is decoded with protobuf from TensorFlow's own schema (example.proto,
feature.proto), declared here as a descriptor so no generated code or TensorFlow is needed.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from rhf_core.cache import atomic_write_bytes
from rhf_core.dataset import SkippedRow
from rhf_core.errors import DatasetFormatError, DatasetNotFoundError

_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One record in TFRecord framing."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def write_tfrecord(path: str | os.PathLike, payloads) -> None:
    """Write serialized records (bytes) to a TFRecord file, atomically."""
    atomic_write_bytes(path, b"".join(frame_record(p) for p in payloads))


@dataclass
class RecordSpan:
    offset: int  # of the data, in bytes
    length: int


def index_tfrecord(path: str | os.PathLike, verify: bool = True) -> tuple[list[RecordSpan], list[SkippedRow]]:
    """Scan a TFRecord file's framing: where each record's data lies, and what could not be read.

    A truncated tail or a record whose data CRC fails is skipped and counted; a length whose CRC
    fails loses the framing, so the rest of the file is skipped. A file whose very first header is
    wrong is not a TFRecord file: `DatasetFormatError`.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: no such TFRecord file")
    spans: list[RecordSpan] = []
    skipped: list[SkippedRow] = []
    size = path.stat().st_size
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            header = f.read(12)
            where = f"{path.name} @ byte {pos}"
            if len(header) < 12:
                skipped.append(SkippedRow(where, "truncated record header at end of file"))
                break
            (length,) = struct.unpack("<Q", header[:8])
            (length_crc,) = struct.unpack("<I", header[8:])
            if length_crc != masked_crc32c(header[:8]):
                if not spans and not skipped:
                    raise DatasetFormatError(f"{path}: not a TFRecord file (bad header at byte 0)")
                skipped.append(SkippedRow(where, "corrupt record header; rest of file skipped"))
                break
            if pos + 12 + length + 4 > size:
                skipped.append(SkippedRow(where, f"truncated record ({length} bytes announced, file ends first)"))
                break
            if verify:
                data = f.read(length)
                (data_crc,) = struct.unpack("<I", f.read(4))
                if data_crc != masked_crc32c(data):
                    skipped.append(SkippedRow(where, "record data fails its CRC check"))
                else:
                    spans.append(RecordSpan(pos + 12, length))
            else:
                spans.append(RecordSpan(pos + 12, length))
                f.seek(length + 4, os.SEEK_CUR)
            pos += 12 + length + 4
    return spans, skipped


def read_span(path: str | os.PathLike, span: RecordSpan) -> bytes:
    with open(path, "rb") as f:
        f.seek(span.offset)
        return f.read(span.length)


# --- tf.train.Example -------------------------------------------------------------------------

def _build_example_class():
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="rhf_core/tf_example.proto", package="tensorflow", syntax="proto3")

    def message(name, fields, nested=()):
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name, oneof in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if oneof is not None:
                f.oneof_index = oneof
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", [("value", 1, F.TYPE_BYTES, rep, None, None)])
    message("FloatList", [("value", 1, F.TYPE_FLOAT, rep, None, None)])
    message("Int64List", [("value", 1, F.TYPE_INT64, rep, None, None)])
    feat = message("Feature", [
        ("bytes_list", 1, F.TYPE_MESSAGE, opt, ".tensorflow.BytesList", 0),
        ("float_list", 2, F.TYPE_MESSAGE, opt, ".tensorflow.FloatList", 0),
        ("int64_list", 3, F.TYPE_MESSAGE, opt, ".tensorflow.Int64List", 0),
    ])
    feat.oneof_decl.add(name="kind")
    feats = message("Features", [("feature", 1, F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry", None)])
    entry = feats.nested_type.add(name="FeatureEntry")
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature")
    entry.options.map_entry = True
    message("Example", [("features", 1, F.TYPE_MESSAGE, opt, ".tensorflow.Features", None)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


Example = _build_example_class()


def parse_example(data: bytes) -> dict[str, list]:
    """Serialized `tf.train.Example` → {feature name: list of values (bytes, float or int)}."""
    ex = Example()
    try:
        ex.ParseFromString(data)
    except DecodeError as e:
        raise DatasetFormatError(f"not a tf.train.Example ({e})") from None
    out = {}
    for key, feat in ex.features.feature.items():
        kind = feat.WhichOneof("kind")
        out[key] = list(getattr(feat, kind).value) if kind else []
    return out


def make_example(features: dict) -> bytes:
    """{name: bytes | str | float | int | list of one of those} → serialized `tf.train.Example`."""
    ex = Example()
    for key, value in features.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        feat = ex.features.feature[key]
        if all(isinstance(v, (bytes, str)) for v in values):
            feat.bytes_list.value.extend(v.encode() if isinstance(v, str) else v for v in values)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            feat.int64_list.value.extend(values)
        else:
            feat.float_list.value.extend(float(v) for v in values)
    return ex.SerializeToString()
