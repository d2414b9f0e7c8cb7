"""Reading MNIST's gzip IDX files: the real ones, and every way one can be broken."""

import gzip
import os
import shutil
import struct
import tempfile
import unittest

from helpers import DATA, assert_one_line_error, mnist, mnist_pure as m, run_main


def read(path):
    with open(path, "rb") as stream:
        return stream.read()


def idx_bytes(magic, dims, body):
    return struct.pack(">I", magic) + struct.pack(">%dI" % len(dims), *dims) + body


class RealFileTests(unittest.TestCase):
    def test_the_committed_files_hold_60000_and_10000_labelled_28x28_images(self):
        train, test = mnist()
        self.assertEqual((len(train), len(test)), (60000, 10000))
        self.assertEqual(len(train.images), 60000 * 784)
        self.assertEqual(set(train.labels), set(range(10)))
        self.assertEqual((train.labels[0], train.labels[1], test.labels[0]), (5, 0, 7))

    def test_the_committed_files_have_the_published_checksums(self):
        warnings = []
        m.load_checked_mnist(DATA, warnings.append)
        self.assertEqual(warnings, [])

    def test_an_image_becomes_its_inked_pixels_divided_by_255(self):
        train, _ = mnist()
        image, _ = train[0]
        indices, x = m.sparse_pixels(image)
        self.assertEqual(len(indices), sum(1 for v in image if v))
        self.assertTrue(all(image[i] == round(v * 255) and v > 0 for i, v in zip(indices, x)))
        self.assertEqual(indices, sorted(indices))
        self.assertEqual(m.sparse_pixels(bytes(784)), ([], []))

    def test_the_c_version_of_sparse_pixels_equals_the_plain_one(self):
        train, _ = mnist()
        for k in range(500):
            indices, pixels = m.inked_pixels(train.image(k))
            self.assertEqual((indices, [v / 255.0 for v in pixels]), m.sparse_pixels(train.image(k)))

    def test_about_a_fifth_of_mnist_pixels_are_inked(self):
        train, _ = mnist()
        inked = sum(len(m.sparse_pixels(image)[0]) for image, _ in train[:1000]) / 1000
        self.assertTrue(130 < inked < 170, inked)

    def test_a_dataset_is_a_sequence_of_images_and_labels(self):
        train, _ = mnist()
        image, label = train[59999]
        self.assertEqual((image, label), (train.image(59999), train.labels[59999]))
        self.assertEqual(train[-1], train[59999])
        tail = train[-5:]
        self.assertEqual(len(tail), 5)
        self.assertEqual(tail[4], train[59999])
        self.assertEqual(train[:3].labels, train.labels[:3])
        self.assertEqual(list(train[10:14]), [train[k] for k in range(10, 14)])
        self.assertEqual(list(train[10:20:3]), [train[k] for k in (10, 13, 16, 19)])
        with self.assertRaises(IndexError):
            train[60000]


class BrokenFileTests(unittest.TestCase):
    """Each broken input gives a MnistError that names the file and the problem."""

    def setUp(self):
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)
        for name in m.TRAIN_FILES + m.TEST_FILES:
            shutil.copy(os.path.join(DATA, name), self.folder)
        self.images = os.path.join(self.folder, m.TEST_FILES[0])
        self.labels = os.path.join(self.folder, m.TEST_FILES[1])

    def write(self, path, content, compress=True):
        with open(path, "wb") as stream:
            stream.write(gzip.compress(content) if compress else content)

    def assert_refused(self, *fragments):
        """The loader refuses with a MnistError, and the program with exit code
        1 and one line on stderr, leaving an existing model file untouched."""
        with self.assertRaises(m.MnistError) as caught:
            m.load_pair(self.folder, *m.TEST_FILES)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        model = os.path.join(self.folder, "model.safetensors")
        with open(model, "wb") as stream:
            stream.write(b"an earlier model")
        run = run_main("--data-dir", self.folder, "--max-train", "10", "--epochs", "1",
                       "--quiet", "--save", model)
        self.assertEqual(run.code, 1)
        assert_one_line_error(self, run.err, *fragments)
        self.assertEqual(read(model), b"an earlier model")
        os.remove(model)
        return message

    def test_a_missing_folder_says_where_the_files_are_expected_and_where_to_get_them(self):
        with self.assertRaises(m.MnistError) as caught:
            m.load_mnist(os.path.join(self.folder, "nowhere"))
        self.assertIn("nowhere", str(caught.exception))
        self.assertIn("yann.lecun.com", str(caught.exception))

    def test_a_missing_file(self):
        os.remove(self.labels)
        self.assert_refused(self.labels, "not found", "yann.lecun.com")

    def test_an_empty_file(self):
        self.write(self.images, b"", compress=False)
        self.assert_refused(self.images)

    def test_an_empty_gzip_stream(self):
        self.write(self.images, b"")
        self.assert_refused(self.images, "too short")

    def test_an_html_page_saved_as_gz(self):
        self.write(self.images, b"<!DOCTYPE html><html>Not Found</html>", compress=False)
        self.assert_refused(self.images, "not a readable gzip file")

    def test_a_truncated_gzip_file(self):
        content = read(self.images)
        self.write(self.images, content[:len(content) // 2], compress=False)
        self.assert_refused(self.images, "truncated")

    def test_a_bad_crc(self):
        content = bytearray(gzip.compress(idx_bytes(0x803, (1, 28, 28), bytes(784))))
        content[-8] ^= 0xFF                   # the CRC-32 in the gzip trailer
        self.write(self.images, bytes(content), compress=False)
        self.assert_refused(self.images, "not a readable gzip file")

    def test_trailing_junk_after_the_gzip_stream(self):
        content = read(self.labels) + b"junk after the end"
        self.write(self.labels, content, compress=False)
        self.assert_refused(self.labels, "not a readable gzip file")

    def test_a_wrong_magic_number(self):
        self.write(self.images, idx_bytes(0x801, (10000,), bytes(10000)))
        self.assert_refused(self.images, "wrong magic number 0x00000801", "0x00000803")

    def test_labels_given_where_images_belong(self):
        shutil.copy(self.labels, self.images)
        self.assert_refused(self.images, "wrong magic number")

    def test_a_wrong_element_type(self):
        self.write(self.images, idx_bytes(0x0D03, (1, 28, 28), bytes(784 * 4)))   # 0x0D: float
        self.assert_refused(self.images, "wrong magic number 0x00000D03")

    def test_fewer_bytes_than_the_dimensions_promise(self):
        self.write(self.images, idx_bytes(0x803, (10000, 28, 28), bytes(784 * 9999)))
        self.assert_refused(self.images, "promises 10000 x 28 x 28 values", "holds 7839216")

    def test_more_bytes_than_the_dimensions_promise(self):
        self.write(self.labels, idx_bytes(0x801, (10000,), bytes(10005)))
        self.assert_refused(self.labels, "promises 10000 values", "holds more")

    def test_a_header_claiming_billions_of_images_is_refused_before_reading(self):
        self.write(self.images, idx_bytes(0x803, (4000000000, 28, 28), bytes(784)))
        self.assert_refused(self.images, "4000000000 x 28 x 28", "holds 784")

    def test_a_cut_short_header(self):
        self.write(self.images, struct.pack(">I", 0x803) + b"\x00\x00")
        self.assert_refused(self.images, "too short to be an IDX file")

    def test_image_and_label_counts_that_disagree(self):
        self.write(self.labels, idx_bytes(0x801, (9999,), bytes(9999)))
        self.assert_refused("10000 images", "9999 labels")

    def test_a_label_outside_0_to_9(self):
        labels = bytearray(read(os.path.join(DATA, m.TEST_FILES[1])))
        body = bytearray(gzip.decompress(bytes(labels)))
        body[8 + 123] = 10
        self.write(self.labels, bytes(body))
        self.assert_refused(self.labels, "a label is 10, outside 0..9")

    def test_images_that_are_not_28x28(self):
        self.write(self.images, idx_bytes(0x803, (10000, 32, 32), bytes(10000 * 1024)))
        self.assert_refused(self.images, "32x32", "28x28")

    def test_a_file_whose_content_differs_from_mnist_is_only_warned_about(self):
        body = bytearray(gzip.decompress(read(self.images)))
        body[1000] ^= 1
        self.write(self.images, bytes(body))
        warnings = []
        _, data = m.load_checked_mnist(self.folder, warnings.append)
        self.assertEqual(len(data), 10000)
        self.assertEqual(len(warnings), 1)
        self.assertIn(self.images, warnings[0])
        self.assertIn("SHA-256", warnings[0])

    def test_a_dataset_in_mnist_format_under_other_names_loads_silently(self):
        other = os.path.join(self.folder, "other")
        os.mkdir(other)
        self.write(os.path.join(other, "a.gz"), idx_bytes(0x803, (2, 28, 28), bytes(range(256)) * 6 + bytes(32)))
        self.write(os.path.join(other, "b.gz"), idx_bytes(0x801, (2,), b"\x03\x09"))
        data = m.load_pair(other, "a.gz", "b.gz")
        self.assertEqual((len(data), data.labels), (2, b"\x03\x09"))


if __name__ == "__main__":
    unittest.main()
