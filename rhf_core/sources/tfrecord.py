"""TFRecord files and `tf.train.Example` messages without TensorFlow.

Framing (tensorflow/core/lib/io/record_writer.h): each record is
    uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)
little-endian. `Example` is decoded with protobuf from TensorFlow's own schema (example.proto,
feature.proto), declared here as a descriptor so no generated code or TensorFlow is needed.
"""

from __future__ import annotations

import mmap
import os
import re
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


# A damaged stretch is crossed by looking for the next place where a whole record checks out (its
# length CRC and its data CRC). Candidates are positions whose length's high 4 bytes are zero
# (records under 4 GiB); the search gives up after this many, so a file of noise cannot stall an open.
MAX_RESYNC_CANDIDATES = 200_000
_NONZERO = re.compile(rb"[^\x00]")


def _record_at(mm, pos: int, size: int, verify: bool = True) -> tuple[int | None, str | None]:
    """(data length, None) if a whole, valid record starts at `pos`, else (None, why not)."""
    if pos + 12 > size:
        return None, "truncated record header at end of file"
    header = mm[pos:pos + 12]
    if struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
        return None, "corrupt record header"
    (length,) = struct.unpack("<Q", header[:8])
    if pos + 12 + length + 4 > size:
        return None, f"truncated record ({length} bytes announced, file ends first)"
    if verify:
        end = pos + 12 + length
        if struct.unpack("<I", mm[end:end + 4])[0] != masked_crc32c(mm[pos + 12:end]):
            return None, "record data fails its CRC check"
    return length, None


def _next_record(mm, start: int, size: int) -> int | None:
    """The first position at or after `start` where a whole, valid record starts (None: none found;
    -1: the search gave up after MAX_RESYNC_CANDIDATES candidates)."""
    p, tries = start, 0
    while p + 16 <= size:
        z = mm.find(b"\x00\x00\x00\x00", p + 4)
        if z < 0:
            return None
        cand = z - 4
        if mm[cand:cand + 12] == bytes(12):  # inside a run of zeros: no header there, jump past it
            nz = _NONZERO.search(mm, cand)
            if nz is None:
                return None
            p = max(cand + 1, nz.start() - 11)
            continue
        tries += 1
        if tries > MAX_RESYNC_CANDIDATES:
            return -1
        if _record_at(mm, cand, size)[0] is not None:
            return cand
        p = cand + 1
    return None


def index_tfrecord(path: str | os.PathLike, verify: bool = True) -> tuple[list[RecordSpan], list[SkippedRow]]:
    """Scan a TFRecord file's framing: where each record's data lies, and what could not be read.

    A damaged stretch (a record whose data CRC fails, a corrupt length, a record cut short in the
    middle of the file) is skipped with a reason, and reading resumes at the next record that checks
    out, so every whole record is kept. A damaged tail with no valid record after it is skipped as
    "rest of file". A file with neither a valid record header at its start nor a valid record after
    it is not a TFRecord file: `DatasetFormatError`.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: no such TFRecord file")
    spans: list[RecordSpan] = []
    skipped: list[SkippedRow] = []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DatasetNotFoundError(f"{path.name}: cannot read ({e.strerror or e})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return spans, skipped
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            pos = 0
            while pos < size:
                length, problem = _record_at(mm, pos, size, verify)
                if problem is None:
                    spans.append(RecordSpan(pos + 12, length))
                    pos += 12 + length + 4
                    continue
                # Look past this header, not past its announced length: a record cut short in the
                # middle announces a length that runs into (or past) the records after it.
                header_ok = problem != "corrupt record header" and pos + 12 <= size
                nxt = _next_record(mm, pos + (12 if header_ok else 1), size)
                if nxt is not None and nxt < 0:
                    problem += f" (the search for the next valid record gave up after {MAX_RESYNC_CANDIDATES} candidates)"
                    nxt = None
                if nxt is None and pos == 0 and not header_ok:
                    raise DatasetFormatError(f"{path.name}: not a TFRecord file (no valid record header in it)")
                where = f"{path.name} @ byte {pos}"
                if nxt is None:
                    skipped.append(SkippedRow(where, f"{problem}; rest of file ({size - pos} bytes) skipped, "
                                                     "no valid record found after it"))
                    break
                if header_ok and nxt == pos + 16 + struct.unpack("<Q", mm[pos:pos + 8])[0]:
                    skipped.append(SkippedRow(where, problem))  # one record lost, framing intact
                else:
                    skipped.append(SkippedRow(where, f"{problem}; bytes {pos}–{nxt} skipped up to the next "
                                                     "valid record (any records in them are lost)"))
                pos = nxt
    return spans, skipped


def read_span(path: str | os.PathLike, span: RecordSpan) -> bytes:
    """One record's data. The file may have changed since it was indexed: `DatasetFormatError`."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            f.seek(span.offset)
            data = f.read(span.length)
    except OSError as e:
        raise DatasetNotFoundError(f"{path.name}: cannot read ({e.strerror or e})") from None
    if len(data) != span.length:
        raise DatasetFormatError(f"{path.name} changed since it was opened (record at byte {span.offset} is cut short)")
    return data


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
