"""A small PNG encoder for the tests, separate from the program's own writer:
any colour type, bit depth and filter, so the decoder meets every case."""

import struct
import zlib


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def pack_row(samples, depth):
    """Samples of one row as bytes, at 1, 2, 4, 8 or 16 bits each."""
    if depth == 8:
        return bytes(samples)
    if depth == 16:
        return b"".join(struct.pack(">H", s) for s in samples)
    per_byte = 8 // depth
    out = bytearray((len(samples) + per_byte - 1) // per_byte)
    for n, s in enumerate(samples):
        out[n // per_byte] |= s << (8 - depth * (n % per_byte + 1))
    return bytes(out)


def filter_row(kind, row, previous, bpp):
    out = bytearray()
    for i, x in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = previous[i]
        c = previous[i - bpp] if i >= bpp else 0
        predictor = [0, a, b, (a + b) // 2, paeth(a, b, c)][kind]
        out.append((x - predictor) & 255)
    return bytes([kind]) + bytes(out)


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode(width, height, rows, colour, depth=8, palette=None, transparency=None,
           filters=(0,), interlace=0):
    """rows: per row, the list of samples (channels interleaved)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    bpp = max(1, channels * depth // 8)
    packed = [pack_row(r, depth) for r in rows]
    previous = bytes(len(packed[0])) if packed else b""
    raw = b""
    for n, row in enumerate(packed):
        raw += filter_row(filters[n % len(filters)], row, previous, bpp)
        previous = row
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace))
    if palette is not None:
        out += chunk(b"PLTE", bytes(v for rgb in palette for v in rgb))
    if transparency is not None:
        out += chunk(b"tRNS", bytes(transparency))
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
