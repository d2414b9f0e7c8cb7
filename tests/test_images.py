"""Your own digit: the PNG and PGM/PBM readers, MNIST-style preparation, and
the predict command."""

import importlib
import os
import random
import unittest

import pngmaker
from helpers import Folder, ModelFolder, assert_one_line_error, mnist, mnist_pure as m, run_main


class PngTests(Folder):
    def decode(self, content):
        return m.read_image(self.write("image.png", content))

    def test_8_bit_grey_with_every_filter(self):
        rng = random.Random(1)
        rows = [[rng.randrange(256) for _ in range(13)] for _ in range(10)]
        for kinds in ((0,), (1,), (2,), (3,), (4,), (0, 1, 2, 3, 4)):
            width, height, grey = self.decode(pngmaker.encode(13, 10, rows, 0, filters=kinds))
            self.assertEqual((width, height), (13, 10))
            self.assertEqual(list(grey), [v for row in rows for v in row], kinds)

    def test_grey_at_1_2_4_and_16_bits(self):
        for depth in (1, 2, 4, 16):
            top = (1 << depth) - 1
            rows = [[(r * 7 + c * 3) % (top + 1) for c in range(11)] for r in range(5)]
            _, _, grey = self.decode(pngmaker.encode(11, 5, rows, 0, depth=depth, filters=(0, 4)))
            if depth == 16:
                expected = [v >> 8 for row in rows for v in row]
            else:
                expected = [v * 255 // top for row in rows for v in row]
            self.assertEqual(list(grey), expected, depth)

    def test_rgb_is_turned_into_luminance(self):
        rows = [[255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255]]
        _, _, grey = self.decode(pngmaker.encode(4, 1, rows, 2, filters=(1,)))
        self.assertEqual(list(grey), [76, 149, 29, 255])       # 0.299, 0.587, 0.114, white
        rows16 = [[v * 257 for v in rows[0]]]
        _, _, grey16 = self.decode(pngmaker.encode(4, 1, rows16, 2, depth=16))
        self.assertEqual(grey16, grey)

    def test_alpha_is_laid_over_white_paper(self):
        rows = [[0, 0, 0, 255, 0, 0, 0, 0, 0, 0, 0, 128]]    # black opaque, clear, half
        _, _, grey = self.decode(pngmaker.encode(3, 1, rows, 6, filters=(3,)))
        self.assertEqual(list(grey), [0, 255, 127])
        _, _, grey = self.decode(pngmaker.encode(2, 1, [[0, 255, 0, 0]], 4))
        self.assertEqual(list(grey), [0, 255])

    def test_palette_images_with_transparency(self):
        palette = [(0, 0, 0), (255, 255, 255), (255, 0, 0)]
        for depth in (1, 2, 4, 8):
            indices = [[c % 2 if depth == 1 else c % 3 for c in range(9)] for _ in range(3)]
            _, _, grey = self.decode(pngmaker.encode(9, 3, indices, 3, depth=depth, palette=palette,
                                                     transparency=[255, 255, 0], filters=(2,)))
            expected = [{0: 0, 1: 255, 2: 255}[i] for row in indices for i in row]
            self.assertEqual(list(grey), expected, depth)

    def test_an_interlaced_png_is_refused_clearly(self):
        with self.assertRaises(m.MnistError) as caught:
            self.decode(pngmaker.encode(2, 2, [[0, 0], [0, 0]], 0, interlace=1))
        self.assertIn("interlaced", str(caught.exception))

    def test_an_unsupported_bit_depth_is_refused_clearly(self):
        with self.assertRaises(m.MnistError) as caught:
            self.decode(pngmaker.encode(2, 1, [[0] * 6], 2, depth=4))
        self.assertIn("bit depth 4", str(caught.exception))

    def test_a_zero_size_image_is_refused(self):
        content = pngmaker.encode(0, 0, [], 0)
        with self.assertRaises(m.MnistError) as caught:
            self.decode(content)
        self.assertIn("no pixels", str(caught.exception))

    def test_a_huge_image_is_refused_before_decoding(self):
        content = (b"\x89PNG\r\n\x1a\n" + pngmaker.chunk(b"IHDR", m.struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0))
                   + pngmaker.chunk(b"IEND", b""))
        with self.assertRaises(m.MnistError) as caught:
            self.decode(content)
        self.assertIn("40000x40000", str(caught.exception))
        self.assertIn("4 megapixels", str(caught.exception))

    def test_a_bad_checksum_a_cut_short_file_and_bad_data_are_refused(self):
        good = pngmaker.encode(3, 3, [[1, 2, 3]] * 3, 0)
        broken = bytearray(good)
        broken[20] ^= 1
        cases = [(bytes(broken), "bad checksum"), (good[:40], "cut short"),
                 (good[:8] + pngmaker.chunk(b"IHDR", good[16:29]) +
                  pngmaker.chunk(b"IDAT", b"not zlib") + pngmaker.chunk(b"IEND", b""),
                  "damaged PNG image data"),
                 (good[:8] + pngmaker.chunk(b"IEND", b""), "IHDR")]
        for content, fragment in cases:
            with self.assertRaises(m.MnistError) as caught:
                self.decode(content)
            self.assertIn(fragment, str(caught.exception))

    def test_pillow_agrees_where_it_is_installed(self):
        try:      # optional: looked up by name, so nothing here depends on it
            Image = importlib.import_module("PIL.Image")
        except ImportError:
            self.skipTest("Pillow is not installed (the project never needs it)")
        rng = random.Random(3)
        for mode in ("L", "RGB", "P"):
            image = Image.new("RGB", (17, 9))
            image.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(17 * 9)])
            image = image.convert(mode)
            path = os.path.join(self.folder, "pillow.png")
            image.save(path, optimize=True)
            _, _, grey = m.read_image(path)
            reference = list(image.convert("L").getdata())
            self.assertTrue(all(abs(a - b) <= 1 for a, b in zip(grey, reference)), mode)


class NetpbmTests(Folder):
    def test_ascii_and_binary_greymaps(self):
        path = self.write("a.pgm", b"P2\n# a comment\n3 2\n255\n0 128 255\n255 128 0\n")
        self.assertEqual(m.read_image(path), (3, 2, bytes([0, 128, 255, 255, 128, 0])))
        path = self.write("b.pgm", b"P5 3 2 255\n" + bytes([0, 128, 255, 255, 128, 0]))
        self.assertEqual(m.read_image(path), (3, 2, bytes([0, 128, 255, 255, 128, 0])))
        path = self.write("c.pgm", b"P5 2 1 65535\n\xff\xff\x00\x00")
        self.assertEqual(m.read_image(path), (2, 1, bytes([255, 0])))

    def test_bitmaps_have_1_for_black(self):
        path = self.write("a.pbm", b"P1\n3 2\n1 0 1\n0 1 0\n")
        self.assertEqual(m.read_image(path), (3, 2, bytes([0, 255, 0, 255, 0, 255])))
        path = self.write("b.pbm", b"P4\n3 2\n" + bytes([0b10100000, 0b01000000]))
        self.assertEqual(m.read_image(path), (3, 2, bytes([0, 255, 0, 255, 0, 255])))

    def test_pixmaps_become_luminance(self):
        path = self.write("a.ppm", b"P6 2 1 255\n" + bytes([255, 0, 0, 255, 255, 255]))
        self.assertEqual(m.read_image(path), (2, 1, bytes([76, 255])))
        path = self.write("b.ppm", b"P3 1 1 255 0 255 0")
        self.assertEqual(m.read_image(path), (1, 1, bytes([149])))

    def test_broken_netpbm_files_are_refused(self):
        for content, fragment in ((b"P5 3 2 255\n\x00\x01", "cut short"),
                                  (b"P2 3", "damaged P2 header"),
                                  (b"P5 0 4 255\n", "no pixels"),
                                  (b"P5 2 2 0\n\x00\x00\x00\x00", "maximum value")):
            with self.assertRaises(m.MnistError) as caught:
                m.read_image(self.write("x.pgm", content))
            self.assertIn(fragment, str(caught.exception))

    def test_other_files_are_not_images(self):
        for content in (b"", b"GIF89a....", b"<html></html>"):
            with self.assertRaises(m.MnistError) as caught:
                m.read_image(self.write("x.png", content))
            self.assertIn("not an image", str(caught.exception))


def trained_network():
    train, _ = mnist()
    settings = m.Settings(max_train=1000, epochs=5, learning_rate=0.05)
    engine = m.make_engine(m.NeuralNetwork(seed=1), "packed")
    engine = m.fit(engine, train[:1000], None, settings, m.TrainingState(), m.StopFlag())
    return engine.to_network()


class PreparationTests(Folder):
    @classmethod
    def setUpClass(cls):
        cls.network = trained_network()

    def guess(self, image):
        return m.argmax(self.network.predict(image))

    def test_a_test_digit_saved_as_png_gets_the_same_guess_as_from_the_idx_file(self):
        _, test = mnist()
        same = 0
        for k in range(100):
            path = self.write("digit.png", m.png_bytes(28, 28, test.image(k), 1))
            prepared = m.prepare_digit(*m.read_image(path))
            same += self.guess(prepared) == self.guess(test.image(k))
        self.assertGreaterEqual(same, 98)

    def test_a_large_off_centre_dark_on_light_digit_is_found_scaled_and_centred(self):
        _, test = mnist()
        for k in range(10):
            digit = test.image(k)
            width, height, scale = 300, 200, 5
            canvas = bytearray(b"\xe8" * (width * height))          # light grey paper
            for r in range(28 * scale):
                for c in range(28 * scale):
                    canvas[(r + 40) * width + c + 150] = 232 - digit[(r // scale) * 28 + c // scale] * 232 // 255
            path = self.write("big.png", pngmaker.encode(width, height, [list(canvas[r * width:(r + 1) * width])
                                                                           for r in range(height)], 0))
            prepared = m.prepare_digit(*m.read_image(path))
            self.assertEqual(self.guess(prepared), self.guess(digit), k)
            mass = sum(prepared)
            cy = sum((i // 28) * v for i, v in enumerate(prepared)) / mass
            cx = sum((i % 28) * v for i, v in enumerate(prepared)) / mass
            self.assertLess(abs(cy - 14), 1)
            self.assertLess(abs(cx - 14), 1)
            box = m.ink_bounds(bytes(prepared))              # inclusive
            self.assertEqual(max(box[2] - box[0], box[3] - box[1]) + 1, 20)

    def test_a_blank_page_has_no_ink(self):
        self.assertEqual(m.prepare_digit(5, 5, bytes([255] * 25)), bytes(784))


class PredictCommandTests(ModelFolder):
    make_network = staticmethod(trained_network)

    def test_predict_prints_the_top_three_and_draws_what_the_network_saw(self):
        _, test = mnist()
        path = self.write("seven.png", m.png_bytes(28, 28, test.image(0), 1))
        run = run_main("predict", "--load", self.model, path)
        self.assertEqual(run.code, 0, run.err)
        first = run.out.splitlines()[0]
        self.assertRegex(first, r"^%s: predicted 7 \(\d+\.\d%%\), then \d \(\d+\.\d%%\), \d \(\d+\.\d%%\)$"
                         % path.replace(".", r"\."))
        self.assertEqual(len(run.out.splitlines()), 1 + 14)

    def test_an_unreadable_image_is_one_line_and_exit_1(self):
        path = self.write("notes.png", b"these are not pixels")
        run = run_main("predict", "--load", self.model, path)
        self.assertEqual(run.code, 1)
        assert_one_line_error(self, run.err, path, "not an image")

    def test_a_blank_image_is_one_line_and_exit_1(self):
        path = self.write("blank.pgm", b"P5 4 4 255\n" + bytes([255] * 16))
        run = run_main("predict", "--load", self.model, path)
        self.assertEqual(run.code, 1)
        assert_one_line_error(self, run.err, "no ink")

    def test_without_a_model_it_says_how_to_make_one(self):
        run = run_main("predict", "--load", os.path.join(self.folder, "none.safetensors"), "x.png")
        self.assertEqual(run.code, 1)
        assert_one_line_error(self, run.err, "not found", "--save")

    def test_every_kind_of_broken_image_is_one_line_and_exit_1(self):
        header = m.struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
        cases = {"interlaced.png": (pngmaker.encode(2, 2, [[0, 0], [0, 0]], 0, interlace=1),
                                    "interlaced"),
                 "depth.png": (pngmaker.encode(2, 1, [[0] * 6], 2, depth=4), "bit depth 4"),
                 "empty.png": (pngmaker.encode(0, 0, [], 0), "no pixels"),
                 "huge.png": (b"\x89PNG\r\n\x1a\n" + pngmaker.chunk(b"IHDR", header), "megapixels"),
                 "cut.png": (pngmaker.encode(3, 3, [[1, 2, 3]] * 3, 0)[:40], "cut short"),
                 "page.png": (b"<html>404</html>", "not an image"),
                 "cut.pgm": (b"P5 3 2 255\n\x00", "cut short")}
        for name, (content, fragment) in cases.items():
            run = run_main("predict", "--load", self.model, "--no-draw", self.write(name, content))
            self.assertEqual(run.code, 1, name)
            assert_one_line_error(self, run.err, name, fragment)
        run = run_main("predict", "--load", self.model, self.folder)
        assert_one_line_error(self, run.err, "is a folder")

    def test_predict_needs_an_image(self):
        run = run_main("predict")
        self.assertEqual(run.code, 2)
        assert_one_line_error(self, run.err, "IMAGE")


if __name__ == "__main__":
    unittest.main()
