"""Reading TensorFlow checkpoints (the "tensor bundle" V2 format) without TensorFlow.

The original BERT (google-research/bert, and NVIDIA's TensorFlow BERT) ships its weights as a checkpoint
prefix such as `bert_model.ckpt`: an index file `PREFIX.index` and data files `PREFIX.data-0000S-of-0000N`.
The index is a LevelDB-style sorted table mapping each variable name to a small protobuf record
(`BundleEntryProto`: dtype, shape, data file, byte offset and size); the data files hold the raw
little-endian tensor bytes. Both are parsed here directly, so loading a Google checkpoint needs neither
TensorFlow nor protobuf, and nothing in the files is ever executed.
"""
from __future__ import annotations

import contextlib
import os
import struct
from typing import Callable

import torch

TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB table footer magic, shared by TensorFlow's tables
FOOTER_SIZE = 48                  # two block handles padded to 40 bytes, then the 8-byte magic
BLOCK_TRAILER_SIZE = 5            # compression type (1 byte) + masked CRC32C (4 bytes)

# TensorFlow DataType enum values (tensorflow/core/framework/types.proto) -> torch dtype.
TF_DTYPES = {
    1: torch.float32, 2: torch.float64, 3: torch.int32, 4: torch.uint8, 5: torch.int16, 6: torch.int8,
    9: torch.int64, 10: torch.bool, 14: torch.bfloat16, 19: torch.float16,
}
TF_DTYPE_NAMES = {7: "string", 8: "complex64", 18: "complex128", 20: "resource", 21: "variant"}


class _Cursor:
    """Reads the two integer encodings of the index (varint, fixed) from `data[pos:end]`."""

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None):
        self.data, self.pos, self.end = data, pos, len(data) if end is None else end

    def varint(self) -> int:
        shift = result = 0
        while True:
            if self.pos >= self.end:
                raise ValueError("truncated varint")
            b = self.data[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise ValueError("varint longer than 64 bits")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise ValueError("a record runs past the end of its block")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def done(self) -> bool:
        return self.pos >= self.end


def _block(data: bytes, handle: tuple[int, int]) -> bytes:
    offset, size = handle
    if offset + size + BLOCK_TRAILER_SIZE > len(data):
        raise ValueError("a block runs past the end of the file")
    if data[offset + size] != 0:
        raise ValueError(f"compressed blocks (type {data[offset + size]}) are not supported; "
                         "TensorFlow writes checkpoint indexes uncompressed")
    return data[offset:offset + size]


def _block_entries(block: bytes):
    """(key, value) pairs of one table block; each key shares a prefix with the one before it."""
    if len(block) < 4:
        raise ValueError("a block shorter than its restart count")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * num_restarts
    if end < 0:
        raise ValueError("a block's restart array is larger than the block")
    c = _Cursor(block, 0, end)
    key = b""
    while not c.done():
        shared, non_shared, value_len = c.varint(), c.varint(), c.varint()
        if shared > len(key):
            raise ValueError("a key shares more bytes than the previous key has")
        key = key[:shared] + c.take(non_shared)
        yield key, c.take(value_len)


def _handle(value: bytes) -> tuple[int, int]:
    c = _Cursor(value)
    return c.varint(), c.varint()


def _table_entries(data: bytes):
    if len(data) < FOOTER_SIZE or struct.unpack_from("<Q", data, len(data) - 8)[0] != TABLE_MAGIC:
        raise ValueError("not a TensorFlow checkpoint index (no table footer)")
    footer = _Cursor(data, len(data) - FOOTER_SIZE, len(data) - 8)
    footer.varint(), footer.varint()  # the metaindex block's handle: unused
    index_handle = (footer.varint(), footer.varint())
    for _, handle in _block_entries(_block(data, index_handle)):
        yield from _block_entries(_block(data, _handle(handle)))


def _fields(message: bytes, messages: tuple[int, ...] = ()):
    """(field number, value) of a protobuf message: an int for varint and fixed fields, else bytes. The fields
    numbered in `messages` must be bytes (nested messages), the others read must be ints: in a damaged index
    they may not be."""
    c = _Cursor(message)
    while not c.done():
        tag = c.varint()
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value = c.varint()
        elif wire == 1:
            value = struct.unpack("<Q", c.take(8))[0]
        elif wire == 2:
            value = c.take(c.varint())
        elif wire == 5:
            value = struct.unpack("<I", c.take(4))[0]
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if (number in messages) != isinstance(value, bytes):
            raise ValueError(f"a record's field {number} has the wrong protobuf wire type ({wire})")
        yield number, value


def _shape(message: bytes) -> tuple[int, ...]:
    """A TensorShapeProto: repeated dim (2) {size (1)}; unknown_rank (3)."""
    dims = []
    for number, value in _fields(message, messages=(2,)):
        if number == 2:  # a Dim: size 1, name 2 (a string)
            dims.append(next((v for n, v in _fields(value, messages=(2,)) if n == 1), 0))  # proto3 omits a size 0
        elif number == 3 and value:
            raise ValueError("a tensor of unknown rank")
    return tuple(dims)


def _entry(message: bytes) -> dict:
    """A BundleEntryProto: dtype 1, shape 2, shard_id 3, offset 4, size 5, crc32c 6, slices 7."""
    entry = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "sliced": False}
    scalars = {1: "dtype", 3: "shard_id", 4: "offset", 5: "size"}
    for number, value in _fields(message, messages=(2, 7)):
        if number in scalars:
            entry[scalars[number]] = value
        elif number == 2:
            entry["shape"] = _shape(value)
        elif number == 7:
            entry["sliced"] = True
    return entry


def index_path(prefix: str | os.PathLike) -> str:
    prefix = os.fspath(prefix)
    return prefix if prefix.endswith(".index") else prefix + ".index"


def read_index(prefix: str | os.PathLike) -> tuple[int, dict[str, dict]]:
    """The number of data files and {variable name: entry} of the checkpoint at `prefix`."""
    path = index_path(prefix)
    with open(path, "rb") as f:
        data = f.read()
    num_shards, entries = 1, {}
    try:
        for key, value in _table_entries(data):
            if key == b"":  # the header, a BundleHeaderProto: num_shards 1, endianness 2, version 3
                header = dict(_fields(value, messages=(3,)))  # version 3: a VersionDef
                num_shards = header.get(1, 1)
                if header.get(2, 0) != 0:
                    raise ValueError("big-endian checkpoints are not supported")
            else:
                entries[key.decode("utf-8")] = _entry(value)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: {e}") from None
    return num_shards, entries


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def load_tf_checkpoint(prefix: str | os.PathLike,
                       keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """The variables of the TensorFlow checkpoint at `prefix` (`.../bert_model.ckpt`, with or without
    `.index`) as {TensorFlow name: CPU tensor}, with the names and layouts TensorFlow stored; only those
    whose name `keep` accepts, when given (the others are never read)."""
    num_shards, entries = read_index(prefix)
    return read_variables(prefix, num_shards,
                          {n: e for n, e in entries.items() if keep is None or keep(n)})


def read_variables(prefix: str | os.PathLike, num_shards: int, entries: dict[str, dict]) -> dict[str, torch.Tensor]:
    """The tensors of `entries` (some of what `read_index` returned) from the checkpoint's data files."""
    path = index_path(prefix)
    base = path[: -len(".index")]
    out: dict[str, torch.Tensor] = {}
    with contextlib.ExitStack() as stack:
        files = {}
        for name, e in sorted(entries.items()):
            if e["sliced"]:
                raise ValueError(f"{path}: variable {name!r} is stored in slices (a partitioned variable), "
                                 "which is not supported")
            if e["dtype"] not in TF_DTYPES:
                kind = TF_DTYPE_NAMES.get(e["dtype"], f"dtype {e['dtype']}")
                raise ValueError(f"{path}: variable {name!r} holds {kind} values; only numeric tensors load")
            dtype = TF_DTYPES[e["dtype"]]
            count = _numel(e["shape"])
            if count * dtype.itemsize != e["size"]:
                raise ValueError(f"{path}: variable {name!r}: {e['size']} bytes stored for shape "
                                 f"{list(e['shape'])} of {dtype}")
            shard = e["shard_id"]
            if shard >= num_shards:
                raise ValueError(f"{path}: variable {name!r} is in data file {shard}, of 0 to {num_shards - 1}: "
                                 "a damaged index")
            if shard not in files:
                data_path = f"{base}.data-{shard:05d}-of-{num_shards:05d}"
                if not os.path.isfile(data_path):
                    raise FileNotFoundError(f"{data_path}: data file of checkpoint {base} not found")
                files[shard] = stack.enter_context(open(data_path, "rb"))
            f = files[shard]
            if e["offset"] + e["size"] > os.fstat(f.fileno()).st_size:  # before a buffer of that size is made
                raise ValueError(f"{f.name}: variable {name!r} runs past the end of the file")
            f.seek(e["offset"])
            raw = bytearray(f.read(e["size"]))
            if len(raw) != e["size"]:
                raise ValueError(f"{f.name}: variable {name!r} runs past the end of the file")
            out[name] = (torch.frombuffer(raw, dtype=dtype).reshape(e["shape"]) if count
                         else torch.empty(e["shape"], dtype=dtype))
    return out
