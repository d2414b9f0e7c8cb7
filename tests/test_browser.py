"""serve in a real browser: headless Chromium loads the page, real mouse and
touch events (sent through the DevTools protocol) draw MNIST test digits on it,
and the guess the page shows must be the digit's label.

Chromium is driven with the standard library only, over --remote-debugging-pipe:
the browser reads commands from its file descriptor 3 and writes answers and
events to its descriptor 4, each message a JSON text ended by a NUL byte.
Where there is no Chromium the tests skip; every read has a deadline, and the
browser is killed in cleanup whatever happened.

MNIST_SERVE_SCREENSHOT=docs/serve.png saves the screenshot the tests take
(the README's picture of the page), and MNIST_SERVE_MODEL=model.safetensors
serves that model instead of the small one trained for the tests."""

import base64
import functools
import json
import math
import os
import select
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import unittest
import zlib

import photomaker
import pngmaker
from helpers import mnist, mnist_pure as m, small_trained_network

BROWSER = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
OTHER_SITE = "evil.example"       # a site whose name the browser finds at 127.0.0.1, as after
                                  # DNS rebinding: its pages are another origin, on this server
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--mute-audio", "--remote-debugging-pipe",
         "--host-resolver-rules=MAP %s 127.0.0.1" % OTHER_SITE, "about:blank"]
START_TIMEOUT = 30      # seconds for the browser to start (first start on a cold disk is slow)
TIMEOUT = 10            # seconds for any one command or wait
METADATA = {"test_accuracy": "0.8374", "epochs": "2", "training_images": "2000"}
DIGITS = (0, 1, 3)      # test images 0, 1, 3: a 7, a 2 and a 0
PEN = 13                # pen width, in pixels of a 280-pixel pad: a bit more than one MNIST pixel
INK = 128               # pixels at least this dark are traced


class BrowserError(Exception):
    """The browser did not answer as the protocol says it should."""


class DevTools:
    """A Chromium process and its DevTools pipe."""

    def __init__(self, browser, profile, log):
        to_browser, self.commands = os.pipe()        # we write commands, it reads fd 3
        self.answers, from_browser = os.pipe()       # it writes to fd 4, we read answers
        # The shell moves the two pipe ends to descriptors 3 and 4, then becomes
        # the browser: pass_fds alone keeps their numbers, whatever they are.
        self.process = subprocess.Popen(
            ["/bin/sh", "-c", 'exec "$0" "$@" 3<&%d 4>&%d' % (to_browser, from_browser),
             browser, "--user-data-dir=" + profile] + FLAGS,
            pass_fds=(to_browser, from_browser), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=log)
        os.close(to_browser)
        os.close(from_browser)
        self.unread = b""
        self.last_id = 0

    def send(self, method, params=None, session=None, timeout=TIMEOUT):
        """Run one protocol command and return its result (events are skipped)."""
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        deadline = time.monotonic() + timeout
        self.write(json.dumps(message).encode("utf-8") + b"\0", deadline)
        while True:
            reply = self.read(deadline)
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise BrowserError("%s: %s" % (method, reply["error"].get("message")))
                return reply["result"]

    def write(self, data, deadline):
        while data:
            _, ready, _ = select.select([], [self.commands], [], max(0, deadline - time.monotonic()))
            if not ready:
                raise BrowserError("the browser stopped reading its commands")
            data = data[os.write(self.commands, data):]

    def read(self, deadline):
        while b"\0" not in self.unread:
            ready, _, _ = select.select([self.answers], [], [], max(0, deadline - time.monotonic()))
            if not ready:
                raise BrowserError("no answer from the browser in time")
            chunk = os.read(self.answers, 1 << 16)
            if not chunk:
                raise BrowserError("the browser closed its pipe (it exited?)")
            self.unread += chunk
        message, _, self.unread = self.unread.partition(b"\0")
        return json.loads(message.decode("utf-8"))

    def close(self):
        """Ask the browser to quit; kill it if it does not."""
        try:
            self.send("Browser.close", timeout=3)
        except (BrowserError, OSError):
            pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        for fd in (self.commands, self.answers):
            os.close(fd)


class Page:
    """One tab of the browser, attached with its own session."""

    def __init__(self, devtools):
        self.devtools = devtools
        self.target = devtools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = devtools.send("Target.attachToTarget",
                                     {"targetId": self.target, "flatten": True})["sessionId"]

    def send(self, method, params=None, timeout=TIMEOUT):
        return self.devtools.send(method, params, self.session, timeout)

    def evaluate(self, expression, wait=False):
        """The expression's value in the page (wait: it is a promise; its result)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": wait})
        if "exceptionDetails" in result:
            raise BrowserError("%s: %s" % (expression, result["exceptionDetails"].get("text")))
        return result["result"].get("value")

    def wait_for(self, expression, timeout=TIMEOUT):
        """Evaluate until the expression is true; its last value if it never is."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.05)

    def viewport(self, width, height):
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                         "deviceScaleFactor": 1, "mobile": False})

    def box(self, element_id):
        """(left, top, width, height) of an element, in CSS pixels of the viewport."""
        return self.evaluate("(() => { const b = document.getElementById(%s)"
                             ".getBoundingClientRect(); return [b.left, b.top, b.width, b.height]; })()"
                             % json.dumps(element_id))

    def mouse(self, kind, x, y):
        self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                               "buttons": 0 if kind == "mouseReleased" else 1,
                                               "clickCount": 1})

    def click(self, element_id):
        left, top, width, height = self.box(element_id)
        self.mouse("mousePressed", left + width / 2, top + height / 2)
        self.mouse("mouseReleased", left + width / 2, top + height / 2)

    def stroke_with_mouse(self, points):
        self.mouse("mousePressed", *points[0])
        for x, y in points[1:]:
            self.mouse("mouseMoved", x, y)
        self.mouse("mouseReleased", *points[-1])

    def stroke_with_finger(self, points):
        for kind, (x, y) in zip(["touchStart"] + ["touchMove"] * (len(points) - 1), points):
            self.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]})
        self.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})

    def choose_file(self, path):
        """Choose a file with the page's Photo... button's file input."""
        document = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": document, "selector": "#file"})
        self.send("DOM.setFileInputFiles", {"files": [path], "nodeId": node["nodeId"]})

    def close(self):
        self.devtools.send("Target.closeTarget", {"targetId": self.target})

    def settled(self):
        """Wait until the answer on show is the one for the drawing as it is."""
        return self.wait_for("window.mnistState && !mnistState.busy && "
                             "mnistState.answeredVersion === mnistState.drawingVersion")


def traced_strokes(image, box):
    """A 28x28 image as strokes a hand could draw on the pad at box: each run of
    dark pixels in a row is one horizontal stroke through their centres, with a
    point every third pixel and at the last (so the page sees pointer moves)."""
    left, top, width, height = box
    cell_x, cell_y = width / 28, height / 28
    strokes = []
    for r in range(28):
        c = 0
        while c < 28:
            if image[r * 28 + c] < INK:
                c += 1
                continue
            start = c
            while c < 28 and image[r * 28 + c] >= INK:
                c += 1
            strokes.append([(left + (k + 0.5) * cell_x, top + (r + 0.5) * cell_y)
                            for k in sorted(set(range(start, c, 3)) | {c - 1})])
    return strokes


def smooth_three(box, steps=30):
    """A 3 as a hand draws it, in one stroke: two bowls, one above the other."""
    left, top, width, height = box
    points = []
    for cx, cy, radius, start, end in ((0.5, 0.34, 0.15, -160, 90), (0.5, 0.67, 0.18, -90, 160)):
        for s in range(steps + 1):
            angle = math.radians(start + (end - start) * s / steps)
            points.append((left + width * (cx + radius * math.cos(angle)),
                           top + height * (cy + radius * math.sin(angle))))
    return points


@functools.lru_cache(maxsize=None)
def photo_page(width, height, k):
    """(width, height, luminance): MNIST test image k, 360 pixels tall, dark on
    a page of paper width x height, its left third in a soft shadow, with
    camera noise: a photo like a phone's, made once."""
    _, test = mnist()
    left, top = (width - 360) // 2 + width // 10, (height - 360) // 2 + height // 20
    ink = photomaker.ink_layer(width, height, [(test.image(k), left, top, 360)])
    return width, height, photomaker.photo(width, height, ink, photomaker.shadow(width))


def bmp_bytes(width, height, grey):
    """A 24-bit BMP of luminance bytes: a format browsers read and this program
    does not (rows bottom-up, blue green red, each row padded to 4 bytes)."""
    stride = (3 * width + 3) // 4 * 4
    rows = []
    for r in reversed(range(height)):
        row = bytearray(stride)
        for channel in range(3):
            row[channel:3 * width:3] = grey[r * width:(r + 1) * width]
        rows.append(bytes(row))
    pixels = b"".join(rows)
    return (b"BM" + struct.pack("<IHHI", 54 + len(pixels), 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835,
                          0, 0)
            + pixels)


def interlaced_png(width, height, rows):
    """An 8-bit grey PNG, interlaced (Adam7: seven passes over ever finer grids,
    each pass's rows unfiltered): browsers read it, this program does not."""
    raw = b""
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                           (1, 0, 2, 2), (0, 1, 1, 2)):
        for y in range(y0, height, dy):
            if x0 < width:
                raw += b"\0" + bytes(rows[y][x0::dx])
    return (m.PNG_SIGNATURE + pngmaker.chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                                   0, 0, 1))
            + pngmaker.chunk(b"IDAT", zlib.compress(raw)) + pngmaker.chunk(b"IEND", b""))


def served_model():
    """(network, metadata): MNIST_SERVE_MODEL's, or the tests' small network."""
    path = os.environ.get("MNIST_SERVE_MODEL")
    return m.read_model(path) if path else (small_trained_network(), METADATA)


@unittest.skipUnless(BROWSER, "no Chromium here (Debian: apt-get install chromium)")
class BrowserTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.requests = []                 # the server's log: a line per request
        cls.server = m.make_digit_server(*served_model(), host="127.0.0.1", port=0,
                                         log=cls.requests.append)
        cls.server_thread = threading.Thread(target=cls.server.serve_forever, daemon=True)
        cls.server_thread.start()
        cls.profile = tempfile.mkdtemp(prefix="mnist-chromium-")
        cls.log = tempfile.TemporaryFile()
        cls.devtools = None
        try:
            cls.devtools = DevTools(BROWSER, cls.profile, cls.log)
            cls.devtools.send("Browser.getVersion", timeout=START_TIMEOUT)
            cls.page = Page(cls.devtools)
            cls.page.viewport(1000, 700)
            cls.page.send("Page.navigate", {"url": "http://127.0.0.1:%d/?test=1"
                                                   % cls.server.server_address[1]})
            loaded = cls.page.wait_for("document.readyState === 'complete' && !!window.mnistState")
        except (BrowserError, OSError) as e:
            cls.tearDownClass()
            raise unittest.SkipTest("Chromium at %s does not start here: %s" % (BROWSER, e))
        if not loaded:
            cls.tearDownClass()
            raise AssertionError("the page did not load in %d s" % TIMEOUT)

    @classmethod
    def tearDownClass(cls):
        if cls.devtools:
            cls.devtools.close()
        cls.log.close()
        shutil.rmtree(cls.profile, ignore_errors=True)
        cls.server.shutdown()
        cls.server.server_close()
        cls.server_thread.join(TIMEOUT)

    def setUp(self):
        self.page.viewport(1000, 700)
        self.page.evaluate("document.getElementById('pen').value = %d" % PEN)
        self.page.click("clear")
        self.assertTrue(self.page.settled())

    def draw(self, k, stroke):
        """Test image k, traced on the pad by `stroke` (mouse or finger); the
        page's guess once it has settled."""
        _, test = mnist()
        for points in traced_strokes(test.image(k), self.page.box("pad")):
            stroke(points)
        self.assertTrue(self.page.settled(), "the page never settled")
        self.assertIsNone(self.page.evaluate("mnistState.error"))
        return self.page.evaluate("document.getElementById('guess').textContent")

    def test_digits_drawn_with_the_mouse_are_read_as_their_labels(self):
        _, test = mnist()
        for k in DIGITS:
            self.page.click("clear")
            self.assertEqual(self.draw(k, self.page.stroke_with_mouse), str(test.labels[k]), k)
            self.assertEqual(self.page.evaluate("mnistState.guess"), test.labels[k])

    def test_a_smooth_three_drawn_with_the_default_pen_is_read_as_3(self):
        self.page.evaluate("pen.value = pen.defaultValue")
        self.page.stroke_with_mouse(smooth_three(self.page.box("pad")))
        self.assertTrue(self.page.settled())
        self.assertEqual(self.page.evaluate("document.getElementById('guess').textContent"), "3")
        # The README's picture of the page: a screenshot with the 3 and its answer,
        # the viewport as tall as the page.
        self.page.viewport(1000, self.page.evaluate("document.documentElement.scrollHeight"))
        screenshot = self.page.send("Page.captureScreenshot", {"format": "png"})["data"]
        png = base64.b64decode(screenshot)
        self.assertTrue(png.startswith(m.PNG_SIGNATURE))
        path = os.environ.get("MNIST_SERVE_SCREENSHOT")
        if path:
            with open(path, "wb") as stream:
                stream.write(png)

    def test_a_digit_drawn_with_a_finger_is_read_as_its_label(self):
        _, test = mnist()
        self.assertEqual(self.draw(2, self.page.stroke_with_finger), str(test.labels[2]))

    def write(self, name, content):
        path = os.path.join(self.profile, name)
        with open(path, "wb") as stream:
            stream.write(content)
        return path

    def read_photo(self, path):
        """Choose the file with Photo...: the page's state once it has read it."""
        before = self.page.evaluate("mnistState.drawingVersion")
        self.page.choose_file(path)
        self.assertTrue(self.page.wait_for("mnistState.drawingVersion > %d" % before))
        self.assertTrue(self.page.settled(), "the page never settled")
        return self.page.evaluate("mnistState")

    def assertReadAsPredictReads(self, state, path):
        """The page's answer is what `predict` makes of the PNG file at path."""
        image, warnings = m.read_digit(path)
        p = self.server.network.predict(image)
        self.assertIsNone(state["error"])
        self.assertEqual(state["image"], list(image))
        self.assertEqual(state["guess"], m.argmax(p))
        self.assertEqual(state["warnings"], warnings)
        for mine, theirs in zip(state["probabilities"], p):
            self.assertAlmostEqual(mine, theirs, places=9)
        shown = self.page.evaluate("document.getElementById('guess').textContent")
        self.assertEqual(shown, str(m.argmax(p)))

    def test_a_photo_chosen_with_the_photo_button_is_read(self):
        _, test = mnist()
        digit = test.image(4)                       # a 4, as a large grey photo of dark ink
        side, scale = 200, 5
        paper = [[225] * side for _ in range(side)]
        for r in range(28 * scale):
            for c in range(28 * scale):
                paper[r + 40][c + 20] = 225 - digit[(r // scale) * 28 + c // scale] * 225 // 255
        path = self.write("photo.png", pngmaker.encode(side, side, paper, 0))
        self.assertEqual(self.read_photo(path)["guess"], test.labels[4])

    def test_a_4_by_3_and_a_3_by_4_photo_are_read_as_predict_reads_the_same_file(self):
        # The page once squared a photo onto white paper: the white beside the
        # photo outshone its paper, and its edges and shadow read as ink.
        _, test = mnist()
        for width, height, k in ((800, 600, 4), (600, 800, 1)):
            path = self.write("photo-%dx%d.png" % (width, height),
                              m.png_bytes(*photo_page(width, height, k), 1))
            state = self.read_photo(path)
            self.assertEqual(state["sent"], "file")          # the file itself, byte for byte
            self.assertReadAsPredictReads(state, path)
            self.assertEqual(state["guess"], test.labels[k])   # (and predict reads it right)

    def test_a_photo_in_a_format_the_server_cannot_read_goes_as_a_png_at_its_own_shape(self):
        width, height, grey = photo_page(600, 800, 1)
        state = self.read_photo(self.write("photo.bmp", bmp_bytes(width, height, grey)))
        self.assertEqual(state["sent"], "png 600x800")
        self.assertReadAsPredictReads(state, self.write("same.png", m.png_bytes(width, height,
                                                                                 grey, 1)))

    def test_a_png_the_server_cannot_read_is_sent_as_the_browser_decodes_it(self):
        _, test = mnist()
        digit = test.image(0)              # a 7, dark on white, 4x larger: 112x84 with a margin
        rows = [[255 - digit[min(27, r // 3) * 28 + c // 4] if c < 112 else 255
                 for c in range(120)] for r in range(84)]
        state = self.read_photo(self.write("interlaced.png", interlaced_png(120, 84, rows)))
        self.assertEqual(state["sent"], "png 120x84")        # once the server refused the file
        self.assertReadAsPredictReads(state, self.write("plain.png",
                                                        pngmaker.encode(120, 84, rows, 0)))

    def test_strokes_drawn_over_a_photo_are_sent_on_the_photo_at_its_own_shape(self):
        state = self.read_photo(self.write("photo.png", m.png_bytes(*photo_page(800, 600, 4), 1)))
        self.assertEqual(state["sent"], "file")
        left, top, width, height = self.page.box("pad")       # a bar across the 4's middle
        self.page.stroke_with_mouse([(left + width * x / 10, top + height * 0.5)
                                     for x in range(3, 8)])
        self.assertTrue(self.page.settled())
        changed = self.page.evaluate("mnistState")
        self.assertEqual(changed["sent"], "png 800x600")
        self.assertNotEqual(changed["image"], state["image"])
        self.page.click("undo")                                 # the stroke undone: the file again
        self.assertTrue(self.page.settled())
        self.assertEqual(self.page.evaluate("[mnistState.sent, mnistState.image]"),
                         ["file", state["image"]])

    def test_a_blank_photo_shows_no_guess_and_no_activity(self):
        path = self.write("blank.png", pngmaker.encode(40, 30, [[230] * 40] * 30, 0))
        state = self.read_photo(path)
        self.assertIsNone(state["error"])
        self.assertIsNone(state["guess"])
        self.assertIsNone(state["probabilities"])
        self.assertIn("no ink found", self.page.evaluate("document.getElementById('status')"
                                                         ".textContent"))
        self.assertEqual(self.page.evaluate("document.getElementById('guess').textContent"), "?")
        self.assertNotIn("active", self.captions())

    def captions(self):
        return self.page.evaluate("[...document.querySelectorAll('#layers figcaption')]"
                                  ".map(c => c.textContent).join(' | ')")

    def test_clear_leaves_no_hidden_layer_activity_on_show(self):
        self.draw(0, self.page.stroke_with_mouse)
        self.assertIn("units active", self.captions())
        self.page.click("clear")
        self.assertTrue(self.page.settled())
        self.assertEqual(self.captions(), "Hidden layer 1: 128 units")

    def test_a_page_of_another_site_can_neither_load_nor_use_the_server(self):
        port = self.server.server_address[1]
        other = Page(self.devtools)
        self.addCleanup(other.close)
        # DNS rebinding: the other site's name leads here; its Host header gives it away.
        other.send("Page.navigate", {"url": "http://%s:%d/" % (OTHER_SITE, port)})
        self.assertTrue(other.wait_for("document.readyState === 'complete'"))
        self.assertIn("not this server's", other.evaluate("document.body.textContent"))
        self.assertEqual(other.evaluate("fetch('/api/model').then(r => r.status)", wait=True), 403)
        # A POST such as any page may send anywhere without asking: refused, unread.
        before = len(self.requests)
        other.evaluate("fetch('http://127.0.0.1:%d/api/predict', {method: 'POST', mode: 'no-cors',"
                       " headers: {'Content-Type': 'text/plain'}, body: 'P5 1 1 255 x'})"
                       ".then(() => 0, () => 0)" % port, wait=True)
        self.assertTrue(any('"POST /api/predict HTTP/1.1" 403' in line
                            for line in self.requests[before:]), self.requests[before:])
        # The page itself, under another of this server's names, still works.
        other.send("Page.navigate", {"url": "http://localhost:%d/?test=1" % port})
        self.assertTrue(other.wait_for("document.readyState === 'complete' && !!window.mnistState"))
        status = other.evaluate("fetch('/api/predict', {method: 'POST', body: new Blob("
                                "[new Uint8Array(%s)]), headers: {'Content-Type': 'image/png'}})"
                                ".then(r => r.status)" % list(m.png_bytes(28, 28,
                                                                          mnist()[1].image(0), 1)),
                                wait=True)
        self.assertEqual(status, 200)

    def test_the_page_shows_what_the_server_prepared_and_every_hidden_layer(self):
        self.draw(0, self.page.stroke_with_mouse)
        state = self.page.evaluate("[mnistState.image.length, mnistState.hidden.map(l => l.length), "
                                   "document.querySelectorAll('#layers canvas').length, "
                                   "mnistState.requests]")
        self.assertEqual(state[:3], [784, [128], 1])
        self.assertGreaterEqual(state[3], 1)

    def test_undo_takes_back_stroke_after_stroke_until_nothing_is_left(self):
        self.draw(1, self.page.stroke_with_mouse)
        strokes = len(traced_strokes(mnist()[1].image(1), self.page.box("pad")))
        for _ in range(strokes):
            self.page.click("undo")
        self.assertTrue(self.page.settled())
        self.assertEqual(self.page.evaluate("document.getElementById('guess').textContent"), "?")
        self.assertIsNone(self.page.evaluate("mnistState.guess"))

    def test_the_page_fits_a_phone_screen(self):
        self.page.viewport(375, 740)
        fits = self.page.wait_for("document.documentElement.scrollWidth <= innerWidth")
        self.assertTrue(fits, "the page is wider than a 375-pixel phone screen")
        left, _, width, _ = self.page.box("pad")
        self.assertGreater(width, 250)
        self.assertLessEqual(left + width, 375)
        figures = self.page.evaluate("[...document.querySelectorAll('.inside figure')]"
                                     ".map(f => f.getBoundingClientRect().top)")
        self.assertEqual(figures[0], figures[1], "the 28x28 image and the hidden layer are not side by side")


if __name__ == "__main__":
    unittest.main()
