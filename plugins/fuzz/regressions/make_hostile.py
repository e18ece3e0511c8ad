#!/usr/bin/env python3
"""Writes the hostile shapes of issue 7 into plugins/fuzz/regressions/.

    python3 plugins/fuzz/regressions/make_hostile.py

Only the standard library: the files are built byte by byte (explicit VR
little endian), entirely synthetic. Deterministic.
"""
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
UNDEFINED = 0xFFFFFFFF


def pad(value, vr):
    if len(value) % 2:
        value += b"\0" if vr in (b"UI", b"OB") else b" "
    return value


def el(group, element, vr, value=b"", length=None):
    """One explicit VR little endian element; `length` overrides the real one."""
    if isinstance(value, str):
        value = value.encode()
    value = pad(value, vr)
    n = len(value) if length is None else length
    head = struct.pack("<HH", group, element) + vr
    if vr in LONG_VRS:
        head += b"\0\0" + struct.pack("<I", n)
    else:
        head += struct.pack("<H", n)
    return head + value


def us(group, element, v):
    return el(group, element, b"US", struct.pack("<H", v))


def item(body=b"", length=None):
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body) if length is None else length) + body


ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
SEQ_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def meta(ts, n):
    body = (
        el(0x0002, 0x0001, b"OB", b"\0\1")
        + el(0x0002, 0x0002, b"UI", "1.2.840.10008.5.1.4.1.1.1.3")
        + el(0x0002, 0x0003, b"UI", "1.2.826.0.1.3680043.10.1234.9%03d" % n)
        + el(0x0002, 0x0010, b"UI", ts)
        + el(0x0002, 0x0012, b"UI", "1.2.826.0.1.3680043.10.1234.1")
    )
    return b"\0" * 128 + b"DICM" + el(0x0002, 0x0000, b"UL", struct.pack("<I", len(body))) + body


def head(n):
    return (
        el(0x0008, 0x0016, b"UI", "1.2.840.10008.5.1.4.1.1.1.3")
        + el(0x0008, 0x0018, b"UI", "1.2.826.0.1.3680043.10.1234.9%03d" % n)
        + el(0x0008, 0x0060, b"CS", "IO")
    )


def patient(n):
    return el(0x0010, 0x0010, b"PN", "FUZZ^HOSTILE") + el(0x0010, 0x0020, b"LO", "HOSTILE-%d" % n)


def image(rows, cols, bits=16, samples=1, photometric="MONOCHROME2"):
    return (
        us(0x0028, 0x0002, samples)
        + el(0x0028, 0x0004, b"CS", photometric)
        + us(0x0028, 0x0010, rows)
        + us(0x0028, 0x0011, cols)
        + us(0x0028, 0x0100, bits)
        + us(0x0028, 0x0101, bits)
        + us(0x0028, 0x0102, bits - 1)
        + us(0x0028, 0x0103, 0)
    )


def write(name, data):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)
    print("%-42s %8d bytes" % (name, len(data)))


EXPLICIT = "1.2.840.10008.1.2.1"


def nested(depth, defined):
    seq = struct.pack("<HH", 0x0008, 0x1140) + b"SQ\0\0"
    if defined:
        inner = b""
        for _ in range(depth):
            it = item(inner)
            inner = seq + struct.pack("<I", len(it)) + it
        return inner
    opening = (seq + struct.pack("<I", UNDEFINED) + item(length=UNDEFINED)) * depth
    return opening + (ITEM_END + SEQ_END) * depth


def main():
    # 1. Sequences 5,000 deep (undefined lengths, properly closed), before
    #    a small valid image: overflows any parser that recurses per level.
    body = head(1) + nested(5000, defined=False) + patient(1) + image(8, 8, 8) + el(0x7FE0, 0x0010, b"OB", bytes(64))
    write("nested_sq_5000.dcm", meta(EXPLICIT, 1) + body)

    # 2. The same depth with defined lengths (a different code path).
    body = head(2) + nested(5000, defined=True) + patient(2) + image(8, 8, 8) + el(0x7FE0, 0x0010, b"OB", bytes(64))
    write("nested_sq_5000_defined.dcm", meta(EXPLICIT, 2) + body)

    # 3. 1.3 KB file whose PixelData declares 0xFFFFFFF0 bytes.
    body = head(3) + patient(3) + image(512, 512) + el(0x7FE0, 0x0010, b"OW", bytes(1000), length=0xFFFFFFF0)
    write("pixeldata_len_fffffff0.dcm", meta(EXPLICIT, 3) + body)

    # 4. A deflate bomb: ~280 KB that inflates to 16384 x 17408 8-bit
    #    pixels (272 MiB) of zeros.
    rows, cols = 16384, 17408
    dataset = head(4) + patient(4) + image(rows, cols, 8) + el(0x7FE0, 0x0010, b"OB", b"", length=rows * cols)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = c.compress(dataset)
    zeros = bytes(1 << 20)
    for _ in range(rows * cols >> 20):
        deflated += c.compress(zeros)
    deflated += c.flush()
    write("deflate_bomb_272mib.dcm", meta("1.2.840.10008.1.2.1.99", 4) + deflated)

    # 5. Encapsulated (JPEG baseline) pixel data whose fragment claims
    #    1 MiB but the file ends 200 bytes in.
    jpeg_start = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(180)
    body = (
        head(5)
        + patient(5)
        + image(64, 64, 8)
        + struct.pack("<HH", 0x7FE0, 0x0010)
        + b"OB\0\0"
        + struct.pack("<I", UNDEFINED)
        + item(b"")  # empty basic offset table
        + struct.pack("<HHI", 0xFFFE, 0xE000, 1 << 20)
        + jpeg_start
    )
    write("encapsulated_fragment_past_eof.dcm", meta("1.2.840.10008.1.2.4.50", 5) + body)


if __name__ == "__main__":
    main()
