"""Check that an encoded data set is well formed: every element's length fits in what was received.

pydicom reads an element claiming more bytes than remain (a length of 2 GB in a 100 kB data set)
by reading what is there, without a word; the classifier's decode may later say "truncated pixel
data", or a short header value may pass unnoticed. A Storage SCP should instead refuse such a data
set at once (C-STORE 0xC210, "cannot understand"), as docs/DICOM.md promises. So the receiver
walks the data set's elements, sequences and items (Explicit or Implicit VR, either endianness)
and checks each declared length against the bytes left in its container, without reading a value.
Encapsulated pixel data (undefined length) is walked as its fragment items, up to the sequence
delimiter. Cost: a few microseconds per element; values are never copied.
"""

from __future__ import annotations

import struct

#: explicit VRs whose length is a 4-byte field after two reserved bytes
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
MAX_DEPTH = 32


class Malformed(ValueError):
    """The data set is not well formed; the message says where."""


def check_dataset(data: bytes | memoryview, offset: int, implicit: bool, little: bool) -> None:
    """Walk the data set in `data[offset:]`; raise Malformed at the first element that does not fit."""
    _walk(memoryview(data), offset, len(data), implicit, "<" if little else ">", 0, delimited=False)


def _tag_at(buf: memoryview, pos: int, order: str) -> int:
    group, elem = struct.unpack_from(order + "HH", buf, pos)
    return (group << 16) | elem


def _walk(buf: memoryview, pos: int, end: int, implicit: bool, order: str, depth: int, delimited: bool) -> int:
    """Walk elements from `pos` to `end`; `delimited`: an undefined-length item, which ends at its delimiter."""
    if depth > MAX_DEPTH:
        raise Malformed(f"sequences nested deeper than {MAX_DEPTH}")
    while pos < end:
        if end - pos < 8:
            raise Malformed(f"{end - pos} stray bytes at offset {pos} (an element header needs 8)")
        tag = _tag_at(buf, pos, order)
        if tag == ITEM_END:
            if not delimited:
                raise Malformed(f"an item delimiter outside an undefined-length item at offset {pos}")
            return pos + 8
        if tag in (ITEM, SEQUENCE_END):
            raise Malformed(f"an item tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) outside a sequence at offset {pos}")
        vr = None
        if implicit or tag >> 16 == 0xFFFE:
            (length,) = struct.unpack_from(order + "I", buf, pos + 4)
            header = 8
        else:
            vr = bytes(buf[pos + 4 : pos + 6])
            if vr in LONG_VRS:
                if end - pos < 12:
                    raise Malformed(f"truncated element header at offset {pos}")
                (length,) = struct.unpack_from(order + "I", buf, pos + 8)
                header = 12
            else:
                (length,) = struct.unpack_from(order + "H", buf, pos + 6)
                header = 8
        name = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        pos += header
        if length == UNDEFINED:
            if tag in PIXEL_DATA_TAGS and vr != b"SQ":
                pos = _fragments(buf, pos, end, order, name)
            elif vr in (None, b"SQ", b"UN"):  # implicit VR or UN with undefined length: a sequence
                pos = _items(buf, pos, end, True, True if vr == b"UN" else implicit, order, depth, name)
            else:
                raise Malformed(f"element {name} ({vr.decode(errors='replace')}) has an undefined length")
            continue
        if length > end - pos:
            raise Malformed(f"element {name} claims {length} bytes, only {end - pos} remain")
        if vr == b"SQ" or (vr is None and _is_sequence(tag)):
            _items(buf, pos, pos + length, False, implicit, order, depth, name)
        pos += length
    if delimited:
        raise Malformed(f"an undefined-length item ends without its delimiter at offset {pos}")
    return pos


def _items(buf: memoryview, pos: int, end: int, undefined: bool, implicit: bool, order: str, depth: int,
           name: str) -> int:
    """Walk a sequence's items from `pos`: up to `end` (defined length) or to its delimiter (`undefined`)."""
    while undefined or pos < end:
        if end - pos < 8:
            raise Malformed(f"sequence {name} ends without its delimiter" if undefined
                            else f"truncated item header in sequence {name}")
        tag = _tag_at(buf, pos, order)
        (length,) = struct.unpack_from(order + "I", buf, pos + 4)
        pos += 8
        if tag == SEQUENCE_END and undefined:
            return pos
        if tag != ITEM:
            raise Malformed(f"sequence {name} holds ({tag >> 16:04X},{tag & 0xFFFF:04X}) where an item belongs")
        if length == UNDEFINED:
            pos = _walk(buf, pos, end, implicit, order, depth + 1, delimited=True)
            continue
        if length > end - pos:
            raise Malformed(f"an item of sequence {name} claims {length} bytes, only {end - pos} remain")
        _walk(buf, pos, pos + length, implicit, order, depth + 1, delimited=False)
        pos += length
    return pos


def _fragments(buf: memoryview, pos: int, end: int, order: str, name: str) -> int:
    """Walk encapsulated pixel data: items of defined length up to the sequence delimiter."""
    while True:
        if end - pos < 8:
            raise Malformed(f"encapsulated {name} ends without its sequence delimiter")
        tag = _tag_at(buf, pos, order)
        (length,) = struct.unpack_from(order + "I", buf, pos + 4)
        pos += 8
        if tag == SEQUENCE_END:
            return pos
        if tag != ITEM or length == UNDEFINED:
            raise Malformed(f"encapsulated {name} holds a malformed fragment")
        if length > end - pos:
            raise Malformed(f"a fragment of {name} claims {length} bytes, only {end - pos} remain")
        pos += length


def _is_sequence(tag: int) -> bool:
    """Whether the data dictionary says SQ (for Implicit VR, where the file does not say)."""
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False
