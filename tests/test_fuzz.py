"""A seeded mutation fuzzer for the three file readers: the IDX reader, the
safetensors reader and the PNG reader. Each mutated input may give a valid
result or the program's own MnistError; anything else (a crash, a different
exception) fails and names the seed that reproduces it.

    FUZZ_CASES=50000 python -m unittest discover -s tests -p test_fuzz.py -v
"""

import gzip
import json
import os
import random
import shutil
import struct
import tempfile
import unittest
import zlib

import pngmaker
from helpers import mnist_pure as m

CASES = int(os.environ.get("FUZZ_CASES", "2000"))
SEED = int(os.environ.get("FUZZ_SEED", "20261125"))


def mutate(data, rng):
    """One to three random edits: bit flips, byte changes, cuts, insertions,
    deletions, repeated slices, or an extreme number written over 4 bytes."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(7)
        at = rng.randrange(len(data) + 1)
        if kind == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif kind == 2:
            data = data[:at]
        elif kind == 3:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind == 4:
            del data[at:at + rng.randint(1, 16)]
        elif kind == 5:
            data[at:at] = data[at:at + rng.randint(1, 64)]
        else:
            data[at:at + 4] = struct.pack(">I", rng.choice([0, 1, 255, 256, 65535, 2 ** 31 - 1,
                                                            2 ** 32 - 1, rng.randrange(2 ** 32)]))
    return bytes(data)


def safetensors_file(header, data):
    """A safetensors file's bytes from its header (a dict) and its data."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


class Fuzzer(unittest.TestCase):
    def run_cases(self, name, seeds, make_input, parse):
        """make_input(rng) -> bytes; parse(bytes) may return or raise MnistError."""
        for case in range(CASES):
            rng = random.Random("%s %d %d" % (name, SEED, case))
            data = make_input(rng)
            try:
                parse(data)
            except m.MnistError:
                pass
            except Exception as e:          # anything else is a bug in the reader
                self.fail("%s fuzz case %d (FUZZ_SEED=%d) raised %s: %s"
                          % (name, case, SEED, type(e).__name__, e))


class IdxFuzzTests(Fuzzer):
    def setUp(self):
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)
        self.path = os.path.join(self.folder, "images.gz")
        rng = random.Random(1)
        self.content = struct.pack(">IIII", 0x803, 3, 28, 28) + bytes(rng.randrange(256) for _ in range(3 * 784))
        self.labels = struct.pack(">II", 0x801, 3) + b"\x01\x07\x09"

    def parse(self, data, magic=0x803):
        with open(self.path, "wb") as stream:
            stream.write(data)
        m.read_idx(self.path, magic)

    def test_mutated_idx_content(self):
        def make(rng):
            source = self.content if rng.random() < 0.7 else self.labels
            return gzip.compress(mutate(source, rng), 1)
        self.run_cases("idx-content", SEED, make, self.parse)

    def test_mutated_gzip_bytes(self):
        compressed = gzip.compress(self.content, 1)
        self.run_cases("idx-gzip", SEED, lambda rng: mutate(compressed, rng), self.parse)

    def test_mutated_label_files_through_the_whole_loader(self):
        images = gzip.compress(self.content, 1)

        def parse(data):
            with open(os.path.join(self.folder, "i.gz"), "wb") as stream:
                stream.write(images)
            with open(os.path.join(self.folder, "l.gz"), "wb") as stream:
                stream.write(gzip.compress(data, 1))
            m.load_pair(self.folder, "i.gz", "l.gz")
        self.run_cases("idx-labels", SEED, lambda rng: mutate(self.labels, rng), parse)


class SafetensorsFuzzTests(Fuzzer):
    def setUp(self):
        network = m.NeuralNetwork([784, 3, 10], seed=1)
        state = m.TrainingState(epoch=1, history=[m.EpochStats(1, 0.05, 1.0, 10, 8, 5, 5, 0.1)])
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        path = os.path.join(folder, "m.safetensors")
        m.save_run(path, network, m.Settings(learning_rate=0.05, epochs=10, augment=""), state, 0.5)
        with open(path, "rb") as stream:
            self.content = stream.read()
        (length,) = struct.unpack("<Q", self.content[:8])
        self.header = json.loads(self.content[8:8 + length])
        self.data = self.content[8 + length:]

    def parse(self, data):
        tensors, metadata = m.parse_safetensors("fuzz.safetensors", data)
        m.network_from_tensors("fuzz.safetensors", tensors)

    def parse_run(self, data):
        m.run_from_tensors("fuzz.safetensors", *m.parse_safetensors("fuzz.safetensors", data))

    def test_mutated_bytes(self):
        self.run_cases("safetensors-bytes", SEED, lambda rng: mutate(self.content, rng), self.parse)

    def test_mutated_header_fields(self):
        values = [None, True, -1, 0, 1, 7, 2 ** 31, 2 ** 64, 1.5, "F64", "F32", "I8", "", [],
                  [0], [1, 2], [2 ** 62, 2 ** 63], {}, {"a": "b"}, [[1]], "x" * 100]

        def pick(rng):
            return json.loads(json.dumps(rng.choice(values)))      # a fresh copy

        def make(rng):
            header = json.loads(json.dumps(self.header))
            for _ in range(rng.randint(1, 3)):
                name = rng.choice(sorted(header))
                entry = header[name]
                if not isinstance(entry, dict):
                    header[name] = pick(rng)
                elif name == "__metadata__":
                    key = rng.choice(sorted(entry) + ["new"])
                    entry[key] = rng.choice([pick(rng), '{"epoch": 1}', json.dumps(pick(rng))])
                elif rng.random() < 0.2:
                    header[name] = pick(rng)
                else:
                    field = rng.choice(["dtype", "shape", "data_offsets", "extra"])
                    if field in entry and isinstance(entry[field], list) and entry[field] and rng.random() < 0.5:
                        entry[field][rng.randrange(len(entry[field]))] = pick(rng)
                    else:
                        entry[field] = pick(rng)
            return safetensors_file(header, self.data)
        self.run_cases("safetensors-header", SEED, make, self.parse_run)

    def test_mutated_training_state(self):
        def make(rng):
            header = json.loads(json.dumps(self.header))
            state = header["__metadata__"]["training_state"]
            header["__metadata__"]["training_state"] = mutate(state.encode(), rng).decode("latin-1")
            return safetensors_file(header, self.data)
        self.run_cases("safetensors-state", SEED, make, self.parse_run)


class PngFuzzTests(Fuzzer):
    def setUp(self):
        rng = random.Random(2)
        self.samples = []
        for colour, depth in ((0, 8), (0, 1), (2, 8), (3, 4), (4, 16), (6, 8)):
            channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
            rows = [[rng.randrange(1 << depth) for _ in range(6 * channels)] for _ in range(5)]
            palette = [(rng.randrange(256),) * 3 for _ in range(16)] if colour == 3 else None
            self.samples.append(pngmaker.encode(6, 5, rows, colour, depth, palette=palette,
                                                transparency=[9, 9] if colour == 3 else None,
                                                filters=(0, 1, 2, 3, 4)))

    def parse(self, data):
        m.prepare_digit(*m.read_png("fuzz.png", data))

    def test_mutated_bytes(self):
        self.run_cases("png-bytes", SEED, lambda rng: mutate(rng.choice(self.samples), rng), self.parse)

    def test_mutated_header_fields_with_valid_checksums(self):
        def make(rng):
            png = bytearray(rng.choice(self.samples))
            ihdr = bytearray(png[16:29])
            at = rng.randrange(13)
            ihdr[at] = rng.choice([0, 1, 2, 3, 4, 6, 8, 16, 255, rng.randrange(256)])
            fixed = pngmaker.chunk(b"IHDR", bytes(ihdr))
            return bytes(png[:8]) + fixed + bytes(png[33:])
        self.run_cases("png-ihdr", SEED, make, self.parse)

    def test_mutated_image_data_with_valid_checksums(self):
        def make(rng):
            png = rng.choice(self.samples)
            at = png.index(b"IDAT") - 4
            (length,) = struct.unpack(">I", png[at:at + 4])
            raw = zlib.decompress(png[at + 8:at + 8 + length])
            data = zlib.compress(mutate(raw, rng))
            return png[:at] + pngmaker.chunk(b"IDAT", data) + png[at + 12 + length:]
        self.run_cases("png-idat", SEED, make, self.parse)

    def test_mutated_netpbm_files(self):
        samples = [b"P2\n# c\n3 2\n255\n0 128 255\n255 128 0\n", b"P5 3 2 255\n" + bytes(6),
                   b"P1\n3 2\n1 0 1\n0 1 0\n", b"P4\n3 2\n\xa0\x40", b"P6 2 1 255\n" + bytes(6),
                   b"P3 1 1 255 0 255 0", b"P5 2 1 65535\n\xff\xff\x00\x00"]

        def parse(data):
            m.prepare_digit(*m.read_netpbm("fuzz.pgm", data))
        self.run_cases("netpbm", SEED, lambda rng: mutate(rng.choice(samples), rng), parse)


if __name__ == "__main__":
    unittest.main()
