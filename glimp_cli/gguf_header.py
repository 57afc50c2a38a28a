"""A GGUF file's header key/values, read without its large arrays (the vocabulary, the merges).

gguf's GGUFReader (llama.cpp's own Python library, gguf 0.19.0) builds a numpy view of every array entry:
on llama.cpp's vocab-only ggml-vocab-qwen2.gguf (151,936 tokens, 151,387 merges) it took 16.6-17.5 s on
2 busy cores, and `glimp models` reads two files. This reader walks the same layout with struct and skips
what the size estimate does not need: 0.05-0.08 s on that file.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from glimp_cli.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
MAX_KEPT_ARRAY = 65_536  # numeric arrays up to this many entries are kept (per-layer values); longer ones skipped

# GGUF value type -> struct format of one scalar (string = 8, array = 9 are read apart)
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class SkippedArray:
    """An array the reader did not keep: its length only (a vocabulary's length is its size)."""

    count: int


Value = Union[int, float, bool, str, tuple, SkippedArray]


def read_gguf_header(path: str | Path, *, string_arrays: tuple[str, ...] = ()) -> dict[str, Value]:
    """The header key/values of a GGUF file: scalars, strings, and numeric arrays up to MAX_KEPT_ARRAY entries
    (as tuples); longer arrays and arrays of strings map to a SkippedArray, except the string arrays named in
    `string_arrays` (e.g. "tokenizer.ggml.tokens"), kept whole as tuples of strings."""
    path = Path(path)
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _HeaderParser(data, path, string_arrays=string_arrays).key_values()
    except ValueError:  # mmap refuses an empty file
        raise ModelFileError(f"{path}: not a GGUF file (the file is empty)") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror}") from exc


class _HeaderParser:
    def __init__(self, data: mmap.mmap, path: Path, *, string_arrays: tuple[str, ...]) -> None:
        self._data = data
        self._string_arrays = string_arrays
        self._path = path
        self._offset = 0
        self._order = "<"

    def key_values(self) -> dict[str, Value]:
        magic = bytes(self._data[:4])
        if magic != GGUF_MAGIC:
            raise ModelFileError(f"{self._path}: not a GGUF file (starts with {magic!r})")
        self._offset = 4
        version = self._scalar("I")
        if version > 0xFFFF:  # written on a big-endian machine: the version reads byte-swapped
            self._order = ">"
            version = struct.unpack(">I", struct.pack("<I", version))[0]
        if version < 2:
            raise ModelFileError(f"{self._path}: GGUF version {version} is not supported (2 and later are)")
        self._scalar("Q")  # tensor count
        kv_count = self._scalar("Q")
        values: dict[str, Value] = {}
        for _ in range(kv_count):
            key = self._string()
            values[key] = self._value(self._scalar("I"), keep_strings=key in self._string_arrays)
        return values

    def _scalar(self, fmt: str):
        fmt = self._order + fmt
        try:
            (value,) = struct.unpack_from(fmt, self._data, self._offset)
        except struct.error:
            raise self._cut_off() from None
        self._offset += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        length = self._scalar("Q")
        end = self._offset + length
        if end > len(self._data):
            raise self._cut_off()
        text = self._data[self._offset : end].decode("utf-8", errors="replace")
        self._offset = end
        return text

    def _value(self, kind: int, *, keep_strings: bool = False) -> Value:
        if kind == _STRING:
            return self._string()
        if kind == _ARRAY:
            return self._array(keep_strings=keep_strings)
        fmt = _SCALAR_FORMATS.get(kind)
        if fmt is None:
            raise ModelFileError(f"{self._path}: unknown GGUF value type {kind} at byte {self._offset - 4}")
        return self._scalar(fmt)

    def _array(self, *, keep_strings: bool) -> tuple | SkippedArray:
        kind = self._scalar("I")
        count = self._scalar("Q")
        fmt = _SCALAR_FORMATS.get(kind)
        if fmt is not None:
            size = struct.calcsize(fmt) * count
            if self._offset + size > len(self._data):
                raise self._cut_off()
            if count > MAX_KEPT_ARRAY:
                self._offset += size
                return SkippedArray(count)
            items = struct.unpack_from(f"{self._order}{count}{fmt}", self._data, self._offset)
            self._offset += size
            return items
        if kind == _STRING and keep_strings:
            return tuple(self._string() for _ in range(count))
        if kind == _STRING:  # each string carries its length: walk them, keep none
            length = struct.Struct(self._order + "Q")
            offset, data, end = self._offset, self._data, len(self._data)
            for _ in range(count):
                if offset + 8 > end:
                    raise self._cut_off()
                offset += 8 + length.unpack_from(data, offset)[0]
            if offset > end:
                raise self._cut_off()
            self._offset = offset
            return SkippedArray(count)
        for _ in range(count):  # arrays of arrays: rare, walked entry by entry
            self._value(kind)
        return SkippedArray(count)

    def _cut_off(self) -> ModelFileError:
        return ModelFileError(f"{self._path}: the GGUF header is cut off (file of {len(self._data)} bytes)")
