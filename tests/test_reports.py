"""What the program shows: progress bars, tables, digits, SVG and PNG pictures."""

import io
import os
import re
import shutil
import struct
import tempfile
import unittest
from unittest import mock
import xml.etree.ElementTree as ElementTree
import zlib

from helpers import mnist, mnist_pure as m

SVG = "{http://www.w3.org/2000/svg}"


class FakeStream(io.StringIO):
    def __init__(self, terminal):
        super().__init__()
        self.terminal = terminal

    def isatty(self):
        return self.terminal


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def history(epochs=4, with_test=True):
    return [m.EpochStats(e, 0.05, loss_sum=100.0 / e, seen=100, correct=80 + 4 * e,
                         updated=50, skipped=50, seconds=1.0,
                         test_accuracy=(0.8 + 0.03 * e) if with_test else -1.0)
            for e in range(1, epochs + 1)]


def check_png(test, content):
    """A stdlib check of a PNG: signature, every chunk's CRC, IHDR, and the
    decompressed size. Returns (width, height, colour type)."""
    test.assertEqual(content[:8], b"\x89PNG\r\n\x1a\n")
    at, chunks = 8, []
    while at < len(content):
        length, kind = struct.unpack(">I4s", content[at:at + 8])
        data = content[at + 8:at + 8 + length]
        (crc,) = struct.unpack(">I", content[at + 8 + length:at + 12 + length])
        test.assertEqual(zlib.crc32(kind + data) & 0xFFFFFFFF, crc, kind)
        chunks.append((kind, data))
        at += 12 + length
    test.assertEqual([k for k, _ in chunks][0], b"IHDR")
    test.assertEqual([k for k, _ in chunks][-1], b"IEND")
    width, height, depth, colour, _, _, _ = struct.unpack(">IIBBBBB", chunks[0][1])
    channels = {0: 1, 2: 3}[colour]
    raw = zlib.decompress(b"".join(d for k, d in chunks if k == b"IDAT"))
    test.assertEqual(len(raw), height * (1 + width * channels * depth // 8))
    return width, height, colour


def drive(bar, clock, counts, total, seconds_per_call):
    """Call the bar with each count, the fake clock advancing between calls."""
    for done in counts:
        clock.now += seconds_per_call
        bar(done, total)


class ProgressBarTests(unittest.TestCase):
    def test_on_a_terminal_it_redraws_one_line_in_place(self):
        stream, clock = FakeStream(terminal=True), FakeClock()
        bar = m.ProgressBar(stream, "epoch 1", clock=clock)
        drive(bar, clock, range(0, 1001, 100), 1000, 0.2)
        self.assertNotIn("\n", stream.getvalue())
        self.assertEqual(stream.getvalue().count("\r"), 11)
        last = stream.getvalue().split("\r")[-1]
        self.assertIn("epoch 1 100%|########################| 1,000/1,000", last)
        self.assertRegex(last, r"\[0:02<0:00, 454/s\]")
        bar.finish()
        self.assertTrue(stream.getvalue().endswith("\r"))

    def test_on_a_terminal_it_redraws_at_most_ten_times_a_second(self):
        stream, clock = FakeStream(terminal=True), FakeClock()
        bar = m.ProgressBar(stream, "x", clock=clock)
        drive(bar, clock, range(100), 100, 0.001)
        self.assertEqual(stream.getvalue().count("\r"), 1)

    def test_on_a_pipe_it_writes_a_few_plain_lines(self):
        stream, clock = FakeStream(terminal=False), FakeClock()
        bar = m.ProgressBar(stream, "epoch 1", clock=clock, every=10.0)
        drive(bar, clock, range(0, 60000, 200), 60000, 0.1)     # a 30-second epoch
        bar.finish()
        lines = stream.getvalue().splitlines()
        self.assertNotIn("\r", stream.getvalue())
        self.assertEqual(len(lines), 2)
        self.assertTrue(all(line.startswith("epoch 1 ") for line in lines))

    def test_a_short_job_on_a_pipe_writes_nothing(self):
        stream, clock = FakeStream(terminal=False), FakeClock()
        bar = m.ProgressBar(stream, "testing", clock=clock)
        drive(bar, clock, range(0, 1000, 100), 1000, 0.1)
        self.assertEqual(stream.getvalue(), "")

    def test_ending_the_line_keeps_the_bar_and_moves_below_it(self):
        for terminal, expected in ((True, "\n"), (False, "")):
            stream, clock = FakeStream(terminal=terminal), FakeClock()
            bar = m.ProgressBar(stream, "testing", clock=clock, every=0.5)
            drive(bar, clock, range(0, 1000, 100), 1000, 0.2)
            drawn = stream.getvalue()
            bar.end_line()
            self.assertEqual(stream.getvalue(), drawn + expected)
            bar.end_line()                          # once only
            self.assertEqual(stream.getvalue(), drawn + expected)

    def test_durations_read_like_a_clock(self):
        self.assertEqual(m.format_duration(7), "0:07")
        self.assertEqual(m.format_duration(754), "12:34")
        self.assertEqual(m.format_duration(3723), "1:02:03")


class TableTests(unittest.TestCase):
    def test_the_confusion_matrix_counts_every_test_image_once(self):
        evaluation = m.Evaluation([0, 1, 1, 2, 9], [0, 1, 7, 2, 4], [0.9] * 5)
        matrix = evaluation.confusion()
        self.assertEqual(sum(map(sum, matrix)), 5)
        self.assertEqual((matrix[1][1], matrix[1][7], matrix[9][4]), (1, 1, 1))
        self.assertEqual((evaluation.correct, evaluation.accuracy), (3, 0.6))
        text = m.format_confusion(matrix)
        self.assertIn("50.00%", text)                           # digit 1: one of two
        self.assertEqual(len(text.splitlines()), 11)

    def test_the_confusion_matrix_of_a_real_run_sums_to_the_test_count(self):
        _, test = mnist()
        network = m.NeuralNetwork(seed=1)
        evaluation = m.evaluate(network, test[:300])
        self.assertEqual(sum(map(sum, evaluation.confusion())), 300)

    def test_an_epoch_row_lines_up_with_the_header(self):
        row = m.format_epoch_row(history()[0])
        self.assertEqual(len(row), len(m.epoch_header()))
        self.assertIn("83.00%", row)
        no_test = m.format_epoch_row(history(with_test=False)[0])
        self.assertEqual(len(no_test), len(m.epoch_header()))

    def test_with_early_stopping_the_table_shows_validation_accuracy(self):
        stats = history()[0]
        stats.validation_accuracy = 0.948
        header, row = m.epoch_header(validation=True), m.format_epoch_row(stats, validation=True)
        self.assertEqual(len(row), len(header))
        self.assertIn("valid acc", header)
        column = header.index("valid acc")
        self.assertEqual(row[column:column + len("valid acc") + 1].strip(), "94.80%")

    def test_the_most_confident_mistakes_come_first(self):
        evaluation = m.Evaluation([1, 2, 3, 4], [1, 5, 6, 7], [0.99, 0.6, 0.95, 0.7])
        self.assertEqual(m.most_confident_mistakes(evaluation, 2), [2, 3])


class DigitDrawingTests(unittest.TestCase):
    def test_a_digit_is_drawn_in_half_blocks(self):
        _, test = mnist()
        lines = m.render_digit(test.image(0))
        self.assertEqual((len(lines), {len(line) for line in lines}), (7, {14}))
        full = m.render_digit(test.image(0), half=False)
        self.assertEqual((len(full), {len(line) for line in full}), (14, {28}))
        self.assertTrue(set("".join(full)) <= set(" ▀▄█"))
        self.assertEqual(m.render_digit(bytes(784)), [" " * 14] * 7)

    def test_the_grid_captions_right_guesses_and_marks_mistakes(self):
        _, test = mnist()
        items = [(test.image(0), 7, 7, 0.987), (test.image(1), 2, 3, 0.6)]
        text = m.format_digit_grid(items)
        caption = text.splitlines()[-1]
        self.assertIn("7  99%", caption)
        self.assertIn("x3 (2)", caption)
        self.assertNotIn("\033", text)
        self.assertIn("\033[31m", m.format_digit_grid(items, colour=True))

    def test_a_console_that_cannot_show_blocks_gets_question_marks_not_a_crash(self):
        raw = io.BytesIO()
        stream = io.TextIOWrapper(raw, encoding="ascii")
        m.Console(out=stream, err=stream).say("digit: █▀▄")
        self.assertEqual(raw.getvalue(), b"digit: ???\n")

    def test_colour_only_on_a_terminal_and_never_with_no_color(self):
        old = os.environ.pop("NO_COLOR", None)
        self.addCleanup(lambda: os.environ.pop("NO_COLOR", None) if old is None
                        else os.environ.__setitem__("NO_COLOR", old))
        self.assertTrue(m.Console(out=FakeStream(terminal=True)).colour())
        self.assertFalse(m.Console(out=FakeStream(terminal=False)).colour())
        os.environ["NO_COLOR"] = "1"
        self.assertFalse(m.Console(out=FakeStream(terminal=True)).colour())

    def test_five_columns_fit_in_eighty_characters(self):
        _, test = mnist()
        items = [(test.image(k), 1, 1, 1.0) for k in range(25)]
        self.assertLessEqual(max(map(len, m.format_digit_grid(items).splitlines())), 80)


class PictureTests(unittest.TestCase):
    def test_the_svg_is_xml_with_one_polyline_per_curve_and_a_point_per_epoch(self):
        root = ElementTree.fromstring(m.svg_curves(history(epochs=6)))
        lines = root.findall(SVG + "polyline")
        titles = sorted(line.find(SVG + "title").text for line in lines)
        self.assertEqual(titles, ["loss", "test accuracy", "train accuracy"])
        for line in lines:
            self.assertEqual(len(line.get("points").split()), 6)
        texts = [t.text for t in root.iter(SVG + "text")]
        self.assertIn("epoch", texts)
        self.assertIn("loss", texts)

    def test_curves_that_were_not_measured_are_left_out(self):
        root = ElementTree.fromstring(m.svg_curves(history(epochs=3, with_test=False)))
        self.assertEqual(len(root.findall(SVG + "polyline")), 2)

    def test_the_png_curves_digits_and_weights_are_valid_pngs(self):
        _, test = mnist()
        self.assertEqual(check_png(self, m.png_curves(history())), (900, 420, 2))
        items = [(test.image(k), test.labels[k], (test.labels[k] + k % 2) % 10, 0.9) for k in range(23)]
        width, height, _ = check_png(self, m.png_digit_grid(items))
        self.assertEqual((width, height), (10 * 64 + 8, 3 * 80 + 8))
        self.assertEqual(check_png(self, m.png_weights(m.NeuralNetwork(seed=1)))[:2],
                         (16 * 58 + 2, 8 * 58 + 2))
        self.assertEqual(check_png(self, m.png_bytes(3, 2, bytes(6), 1)), (3, 2, 0))

    def test_our_png_reader_reads_our_png_writer(self):
        _, test = mnist()
        import tempfile
        import os
        folder = tempfile.mkdtemp()
        path = os.path.join(folder, "digit.png")
        try:
            with open(path, "wb") as stream:
                stream.write(m.png_bytes(28, 28, test.image(3), 1))
            self.assertEqual(m.read_image(path), (28, 28, test.image(3)))
        finally:
            os.remove(path)
            os.rmdir(folder)

    def test_nice_ticks_are_round_and_cover_the_range(self):
        ticks = m.nice_ticks(0.13, 2.9)
        self.assertLessEqual(ticks[0], 0.13)
        self.assertGreaterEqual(ticks[-1], 2.9)
        self.assertEqual(ticks, [0.0, 1.0, 2.0, 3.0])
        self.assertEqual(m.nice_ticks(90.5, 98.2), [90.0, 92.0, 94.0, 96.0, 98.0, 100.0])
        self.assertEqual(m.nice_ticks(5, 5)[0], 5)

    def test_the_epoch_axis_is_labelled_in_whole_epochs(self):
        # Under each panel, the labels of the x (epoch) axis: in the SVG, the
        # texts 18 px below the frame; in the PNG, those drawn 9 px below it.
        bottom = 50 + 250
        for epochs in (1, 2, 3, 10, 60):
            root = ElementTree.fromstring(m.svg_curves(history(epochs)))
            svg = [t.text for t in root.iter(SVG + "text") if t.get("y") == str(bottom + 18)]
            drawn = []
            original = m.Canvas.text

            def text(canvas, x, y, words, *rest, **options):
                if y == bottom + 9:
                    drawn.append(words)
                return original(canvas, x, y, words, *rest, **options)
            with mock.patch.object(m.Canvas, "text", text):
                m.png_curves(history(epochs))
            for labels in (svg, drawn):
                self.assertGreaterEqual(len(labels), 2 * 2, (epochs, labels))   # 2 panels
                self.assertTrue(all(re.fullmatch(r"\d+", label) for label in labels),
                                (epochs, labels))
                self.assertIn(str(epochs), labels)
            self.assertEqual(svg, drawn)



def run_on_a_terminal(*argv):
    """main(argv) with its output and errors on one fake terminal, as a shell
    shows them; (exit code, the lines as they read on the screen: each line's
    text after its last carriage return)."""
    screen = FakeStream(terminal=True)
    code = m.main(list(argv), m.Console(out=screen, err=screen, interactive=False))
    return code, [line.split("\r")[-1] for line in screen.getvalue().split("\n")]


class BarLineTests(unittest.TestCase):
    """A bar's line is finished before the next text: wiped when it is done;
    after Ctrl-C, ended, so that the message starts a line of its own."""

    def setUp(self):
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)
        self.checkpoint = os.path.join(self.folder, "ck.st")

    def ctrl_c_while_testing(self, engine, data, start=0, stop=None, progress=None):
        progress(0)                                 # the bar is drawn ...
        raise KeyboardInterrupt                     # ... when Ctrl-C comes

    def test_ctrl_c_while_testing_after_training_ends_the_bars_line_first(self):
        with mock.patch.object(m, "answers", self.ctrl_c_while_testing):
            code, lines = run_on_a_terminal("--max-train", "100", "--epochs", "1", "--max-test",
                                            "100", "--show", "0", "--checkpoint", self.checkpoint)
        self.assertEqual(code, 130)
        (message,) = [line for line in lines if "interrupted" in line]
        self.assertTrue(message.startswith("interrupted after training, while testing"), message)
        self.assertTrue(lines[lines.index(message) - 1].startswith("testing   0%|"))

    def test_ctrl_c_while_testing_a_loaded_model_ends_the_bars_line_first(self):
        model = os.path.join(self.folder, "m.st")
        m.save_model(m.NeuralNetwork(seed=1), model)
        with mock.patch.object(m, "answers", self.ctrl_c_while_testing):
            code, lines = run_on_a_terminal("--load", model, "--max-test", "100")
        self.assertEqual(code, 130)
        self.assertEqual([line for line in lines if "interrupted" in line], ["interrupted"])

    def test_each_epochs_test_bar_is_wiped_before_its_row(self):
        code, lines = run_on_a_terminal("--max-train", "100", "--epochs", "2", "--max-test",
                                        "100", "--show", "0", "--test-each-epoch")
        self.assertEqual(code, 0)
        row = r" +[12] +0\.0\d{4} +\d\.\d{4} "            # epoch, rate, loss ...
        rows = [line for line in lines if re.search(row, line)]
        self.assertEqual(len(rows), 2, lines)
        for line in rows:
            self.assertRegex(line, "^" + row)


if __name__ == "__main__":
    unittest.main()
