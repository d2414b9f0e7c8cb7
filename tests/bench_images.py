"""Benchmark: reading and preparing large PNG photos (12 and 24 megapixels).

    pypy3 tests/bench_images.py --make     # writes the PNGs once (~1 minute under PyPy,
                                           # much longer under CPython)
    python tests/bench_images.py           # times read_image + prepare_digit_with_notes
    pypy3 tests/bench_images.py

Each PNG is an RGB "photo" of MNIST test digit 1 (a 2) on paper lit from one
side, with camera noise, its rows filtered in one of four ways: None and Up
only; libpng's adaptive rule (per row, the filter whose output has the
smallest sum of absolute values); all five filters in turn; Paeth only. The
figures are process time; on a shared machine they wobble by +-30%.
"""

import argparse
import os
import random
import struct
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import mnist_pure as m  # noqa: E402
from photomaker import digit_ink_at  # noqa: E402

SIZES = {"12MP": (4000, 3000), "24MP": (6000, 4000)}
MODES = ("up", "adaptive", "cycle", "paeth")


def photo_row(y, width, height, digit, noise):
    """One RGB row: paper from 90 to 230 left to right, the digit dark on it."""
    side = min(width, height) * 0.6
    left, top = (width - side) / 2, (height - side) / 2
    row = bytearray(3 * width)
    for x in range(width):
        ink = digit_ink_at(digit, (x - left) * 28 / side, (y - top) * 28 / side)
        value = (90 + 140 * x / width) * (1 - 0.8 * ink) + noise[(y * width + x) * 7 & 65535]
        value = 0 if value < 0 else 255 if value > 255 else int(value)
        row[3 * x], row[3 * x + 1], row[3 * x + 2] = min(255, value + 12), value, max(0, value - 20)
    return row


def filtered(kind, row, previous, bpp=3):
    out = bytearray(len(row))
    for i in range(len(row)):
        a = row[i - bpp] if i >= bpp else 0
        b = previous[i]
        c = previous[i - bpp] if i >= bpp else 0
        guess = (0, a, b, (a + b) >> 1, m.paeth(a, b, c) if kind == 4 else 0)[kind]
        out[i] = (row[i] - guess) & 255
    return out


def choose(mode, y, row, previous):
    """(filter type, filtered row) for row y."""
    if mode == "up":
        kind = y % 2 * 2
    elif mode == "cycle":
        kind = y % 5
    elif mode == "paeth":
        kind = 4
    else:
        options = [(sum(v if v < 128 else 256 - v for v in f), k, f)
                   for k, f in ((k, filtered(k, row, previous)) for k in range(5))]
        return min(options)[1:]
    return kind, filtered(kind, row, previous)


def make(path, width, height, mode, digit):
    rng = random.Random(1)
    noise = [int(rng.gauss(0, 4)) for _ in range(65536)]
    packer = zlib.compressobj(6)
    previous, parts = bytearray(3 * width), []
    for y in range(height):
        row = photo_row(y, width, height, digit, noise)
        kind, data = choose(mode, y, row, previous)
        parts.append(packer.compress(bytes([kind]) + bytes(data)))
        previous = row
    parts.append(packer.flush())

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    with open(path, "wb") as stream:
        stream.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make", action="store_true", help="write the PNGs first")
    parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "mnist_pure_bench"))
    args = parser.parse_args()
    os.makedirs(args.folder, exist_ok=True)
    if args.make:
        _, test = m.load_mnist(os.path.join(os.path.dirname(HERE), "data"))
        for size, (width, height) in SIZES.items():
            for mode in MODES:
                path = os.path.join(args.folder, "%s_%s.png" % (size, mode))
                make(path, width, height, mode, test.image(1))
                print("wrote", path)
    print("%s %s" % (sys.implementation.name, sys.version.split()[0]))
    for size in SIZES:
        for mode in MODES:
            path = os.path.join(args.folder, "%s_%s.png" % (size, mode))
            if not os.path.exists(path):
                print("%s: missing; run with --make first" % path)
                continue
            start = time.process_time()
            width, height, grey = m.read_image(path)
            read = time.process_time()
            try:
                _, warnings = m.prepare_digit_with_notes(width, height, grey)
            except m.MnistError as e:
                warnings = [str(e)]
            done = time.process_time()
            print("%-5s %-9s read %5.2f s  prepare %5.2f s  total %5.2f s  %s"
                  % (size, mode, read - start, done - read, done - start, "; ".join(warnings)))


if __name__ == "__main__":
    main()
