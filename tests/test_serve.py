"""serve: the drawing page's HTTP server, driven through real sockets. The page,
the predictions, and every way a request can be wrong (the server answers with
a JSON error, and goes on answering)."""

import http.client
import io
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import unittest
import unittest.mock

import pngmaker
from helpers import SCRIPT, assert_one_line_error, mnist, mnist_pure as m, run_main, \
    small_trained_network

METADATA = {"test_accuracy": "0.8374", "epochs": "2", "training_images": "2000"}
TIMEOUT = 10            # seconds any one exchange may take before the test fails


def digit_png(k):
    """Test image k as a 28x28 PNG, bright ink on black, as MNIST stores it."""
    _, test = mnist()
    return m.png_bytes(28, 28, test.image(k), 1)


def drawing_png(k, scale=5):
    """Test image k as the page sends a drawing: dark ink on white paper, 5x larger."""
    _, test = mnist()
    digit = test.image(k)
    side = 28 * scale
    rows = [[255 - digit[(r // scale) * 28 + c // scale] for c in range(side)] for r in range(side)]
    return pngmaker.encode(side, side, rows, 0)


def start_server(network, metadata=None, log=None):
    """A DigitServer on a free port, serving from a thread: (server, stop)."""
    server = m.make_digit_server(network, metadata or {}, "127.0.0.1", 0, log)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)
    return server, stop


class Answer:
    """One HTTP response: status, headers and body (the JSON decoded, if it is)."""

    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    @property
    def json(self):
        return json.loads(self.body.decode("utf-8"))


class ServerTestCase(unittest.TestCase):
    """One server with a small trained network, shared by a class's tests."""

    @classmethod
    def setUpClass(cls):
        cls.network = small_trained_network()
        cls.server, cls.stop = start_server(cls.network, METADATA)
        cls.port = cls.server.server_address[1]

    @classmethod
    def tearDownClass(cls):
        cls.stop()

    def request(self, method, path, body=None, headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Answer(response.status, response.headers, response.read())
        finally:
            connection.close()

    def predict(self, content):
        return self.request("POST", "/api/predict", content, {"Content-Type": "image/png"})

    def raw(self, data):
        """Send bytes as they are and read the reply until the server closes:
        (status, body). For requests http.client would refuse to make."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as connection:
            connection.sendall(data)
            reply = b""
            while True:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                reply += chunk
        if not reply.startswith(b"HTTP/"):      # an answer to an HTTP/0.9 request: no head
            return None, reply
        head, _, body = reply.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    def assertJsonError(self, status, body, code, *fragments):
        self.assertEqual(status, code, body)
        error = json.loads(body.decode("utf-8"))["error"]
        self.assertNotIn("\n", error)
        for fragment in fragments:
            self.assertIn(fragment, error)

    def assertStillAnswers(self):
        self.assertEqual(self.request("GET", "/api/model").status, 200)


class PageTests(ServerTestCase):
    def test_the_page_is_served_at_the_root_as_html_with_a_strict_content_policy(self):
        answer = self.request("GET", "/")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.headers["Content-Type"], "text/html; charset=utf-8")
        self.assertIn("default-src 'none'", answer.headers["Content-Security-Policy"])
        self.assertIn("connect-src 'self'", answer.headers["Content-Security-Policy"])
        self.assertEqual(answer.headers["X-Content-Type-Options"], "nosniff")
        self.assertEqual(int(answer.headers["Content-Length"]), len(answer.body))
        self.assertTrue(answer.body.startswith(b"<!DOCTYPE html>"))

    def test_the_page_refers_to_nothing_outside_itself(self):
        page = self.request("GET", "/").body.decode("utf-8")
        self.assertNotIn("http://", page)
        self.assertNotIn("https://", page)
        self.assertNotIn("//cdn", page)
        self.assertEqual(re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page), ["data:,"])
        self.assertNotIn("@import", page)

    def test_the_page_has_a_pad_for_every_pointer_and_labelled_tools(self):
        page = self.request("GET", "/").body.decode("utf-8")
        self.assertIn("touch-action: none", page)
        self.assertIn("pointerdown", page)
        for element in ("pad", "undo", "clear", "photo", "pen", "guess", "seen", "layers"):
            self.assertIn('id="%s"' % element, page)
        for button in re.findall(r"<button[^>]*>", page):
            self.assertIn("aria-label=", button)
        self.assertIn('accept="image/*"', page)
        self.assertIn('name="viewport"', page)

    def test_a_query_string_still_gets_the_page(self):
        self.assertEqual(self.request("GET", "/?test=1").body, self.request("GET", "/").body)

    def test_head_sends_the_headers_and_no_page(self):
        answer = self.request("HEAD", "/")
        self.assertEqual(answer.status, 200)
        self.assertGreater(int(answer.headers["Content-Length"]), 1000)
        self.assertEqual(answer.body, b"")

    def test_the_model_is_described_by_its_layers_and_its_file(self):
        answer = self.request("GET", "/api/model")
        self.assertEqual(answer.headers["Content-Type"], "application/json")
        self.assertEqual(answer.json, {"architecture": "784-128-10", "layers": [784, 128, 10],
                                       "test_accuracy": 0.8374, "epochs": 2,
                                       "training_images": 2000})


class PredictTests(ServerTestCase):
    def test_test_digits_sent_as_png_are_read_as_their_labels(self):
        _, test = mnist()
        for k in range(5):                       # 7 2 1 0 4
            answer = self.predict(digit_png(k))
            self.assertEqual(answer.status, 200, answer.body)
            self.assertEqual(answer.json["guess"], test.labels[k], k)

    def test_a_drawing_dark_on_white_and_five_times_larger_is_read_the_same(self):
        _, test = mnist()
        for k in range(3):
            self.assertEqual(self.predict(drawing_png(k)).json["guess"], test.labels[k], k)

    def test_the_answer_holds_what_predict_prepares_and_what_the_network_says(self):
        content = drawing_png(0)
        image, _ = m.prepare_digit_with_notes(*m.decode_image("x", content))  # predict's path
        answer = self.predict(content).json
        self.assertEqual(answer["image"], list(image))
        p = self.network.predict(image)
        for mine, theirs in zip(answer["probabilities"], p):
            self.assertAlmostEqual(mine, theirs, places=12)
        self.assertEqual(answer["guess"], m.argmax(p))
        self.assertEqual([len(layer) for layer in answer["hidden"]], [128])
        self.assertTrue(all(v >= 0 for v in answer["hidden"][0]))
        self.assertEqual(answer["warnings"], [])

    def test_netpbm_images_are_read_too(self):
        _, test = mnist()
        pgm = b"P5 28 28 255\n" + test.image(2)
        self.assertEqual(self.predict(pgm).json["guess"], test.labels[2])

    def test_a_blank_page_gets_no_guess_and_a_warning(self):
        answer = self.predict(pngmaker.encode(10, 10, [[255] * 10] * 10, 0))
        self.assertEqual(answer.status, 200)
        self.assertIsNone(answer.json["guess"])
        self.assertEqual(answer.json["warnings"], ["no ink found in the image (no marks stand out from the paper around them)"])
        self.assertEqual(answer.json["image"], [0] * 784)

    def test_ten_requests_at_once_are_all_answered(self):
        _, test = mnist()
        start = threading.Barrier(10, timeout=TIMEOUT)
        guesses = {}

        def client(k):
            start.wait()
            guesses[k] = self.predict(digit_png(k)).json["guess"]
        threads = [threading.Thread(target=client, args=(k,)) for k in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(4 * TIMEOUT)
        self.assertEqual(sorted(guesses), list(range(10)))
        right = sum(guesses[k] == test.labels[k] for k in range(10))
        self.assertGreaterEqual(right, 9)        # this small network misreads test image 8


class BadRequestTests(ServerTestCase):
    def test_a_huge_upload_is_refused_from_its_length_before_its_body_is_sent(self):
        status, body = self.raw(b"POST /api/predict HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Length: 50000000\r\n\r\n")      # and no body at all
        self.assertJsonError(status, body, 413, "50,000,000 bytes", "8 MiB")
        self.assertStillAnswers()

    def test_a_body_without_a_length_is_411(self):
        status, body = self.raw(b"POST /api/predict HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertJsonError(status, body, 411, "Content-Length")
        status, body = self.raw(b"POST /api/predict HTTP/1.1\r\nHost: x\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        self.assertJsonError(status, body, 411, "Content-Length")
        self.assertStillAnswers()

    def test_a_bad_length_is_400(self):
        for length in (b"abc", b"-1", b"1e3", b"\xd9\xa1", b"9" * 40):
            status, body = self.raw(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                    + length + b"\r\n\r\n")
            self.assertJsonError(status, body, 400, "Content-Length")
        status, body = self.raw(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                                b"Content-Length: 4\r\n\r\nabcd")
        self.assertJsonError(status, body, 400, "Content-Length")
        self.assertStillAnswers()

    def test_garbage_and_an_empty_body_are_400_with_the_programs_message(self):
        answer = self.predict(b"\x00garbage\xff" * 100)
        self.assertJsonError(answer.status, answer.body, 400, "upload: not an image",
                             "PNG or PGM/PBM/PPM")
        answer = self.predict(b"")
        self.assertJsonError(answer.status, answer.body, 400, "empty body")
        self.assertStillAnswers()

    def test_damaged_images_are_400_saying_what_is_wrong(self):
        good = digit_png(0)
        damaged = bytearray(good)
        damaged[40] ^= 0xFF
        huge = b"\x89PNG\r\n\x1a\n" + pngmaker.chunk(b"IHDR", m.struct.pack(">IIBBBBB", 40000,
                                                                            40000, 8, 0, 0, 0, 0))
        for content, fragment in ((good[:50], "cut short"), (bytes(damaged), "checksum"),
                                  (huge, "megapixels"), (b"P5 3 2 255\n\x00", "cut short"),
                                  (pngmaker.encode(2, 2, [[0, 0], [0, 0]], 0, interlace=1),
                                   "interlaced")):
            answer = self.predict(content)
            self.assertJsonError(answer.status, answer.body, 400, fragment)
        self.assertStillAnswers()

    def test_unknown_paths_are_404(self):
        for path in ("/nothing", "/api", "/api/", "/api/predict/", "/index.html", "/favicon.ico"):
            answer = self.request("GET", path)
            self.assertJsonError(answer.status, answer.body, 404, "the page is at /")
        self.assertStillAnswers()

    def test_other_methods_are_405_naming_the_allowed_ones(self):
        for method, path, allowed in (("GET", "/api/predict", "POST"), ("POST", "/", "GET, HEAD"),
                                      ("PUT", "/", "GET, HEAD"), ("DELETE", "/api/predict", "POST"),
                                      ("PATCH", "/api/model", "GET, HEAD"),
                                      ("OPTIONS", "/", "GET, HEAD")):
            answer = self.request(method, path, b"" if method in ("POST", "PUT") else None)
            self.assertJsonError(answer.status, answer.body, 405, method)
            self.assertEqual(answer.headers["Allow"], allowed)
        answer = self.request("BREW", "/")            # a method nobody knows: 501, as JSON
        self.assertJsonError(answer.status, answer.body, 501, "BREW")
        self.assertStillAnswers()

    def test_path_tricks_never_reach_a_file(self):
        for target in (b"/../../etc/passwd", b"/%2e%2e/%2e%2e/etc/passwd", b"/..%2f..%2fetc%2fpasswd",
                       b"//etc/passwd", b"/mnist_pure.py", b"/tests/helpers.py",
                       b"/data/t10k-labels-idx1-ubyte.gz", b"http://127.0.0.1/etc/passwd",
                       b"http://127.0.0.1/../mnist_pure.py", b"file:///etc/passwd",
                       b"\\..\\..\\etc\\passwd", b"/./"):
            status, body = self.raw(b"GET " + target + b" HTTP/1.0\r\n\r\n")
            self.assertIn(status, (400, 404), target)
            self.assertNotIn(b"root:", body)
            self.assertNotIn(b"import", body)
        self.assertStillAnswers()

    def test_a_malformed_request_gets_a_json_error(self):
        # (http.server answers a request line it cannot parse as HTTP/0.9 would:
        # the body alone, without a status line)
        for request in (b"NONSENSE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                        b"GET / HTTP/1.1 extra\r\n\r\n", b"\x16\x03\x01\x00\xa5\r\n\r\n"):
            status, body = self.raw(request)
            self.assertIn(status, (None, 400), request)
            self.assertIn("error", json.loads(body.decode("utf-8")))
        self.assertStillAnswers()

    def test_a_client_that_leaves_in_the_middle_of_its_body_does_not_stop_the_server(self):
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as connection:
                connection.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\n"
                                   b"Content-Length: 100000\r\n\r\n" + digit_png(0)[:200])
        self.assertStillAnswers()
        _, test = mnist()
        self.assertEqual(self.predict(digit_png(1)).json["guess"], test.labels[1])


class LoggingTests(unittest.TestCase):
    def test_requests_write_nothing_on_stderr(self):
        server, stop = start_server(small_trained_network())
        self.addCleanup(stop)
        captured, sys.stderr = sys.stderr, io.StringIO()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1],
                                                    timeout=TIMEOUT)
            for method, path, body in (("GET", "/", None), ("POST", "/api/predict", b"junk"),
                                       ("GET", "/nothing", None), ("PUT", "/", b"")):
                connection.request(method, path, body)
                connection.getresponse().read()
                connection.close()
            written = sys.stderr.getvalue()
        finally:
            sys.stderr = captured
        self.assertEqual(written, "")

    def test_verbose_logs_one_line_per_request_with_control_characters_escaped(self):
        lines = []
        server, stop = start_server(small_trained_network(), log=lines.append)
        self.addCleanup(stop)
        with socket.create_connection(("127.0.0.1", server.server_address[1]),
                                      timeout=TIMEOUT) as connection:
            connection.sendall(b"GET /\x1b[2J HTTP/1.0\r\n\r\n")
            while connection.recv(65536):
                pass
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("404", lines[0])
        self.assertIn("\\x1b[2J", lines[0])
        self.assertNotIn("\x1b", lines[0])


class HelperTests(unittest.TestCase):
    def test_network_answer_gives_the_probabilities_and_the_hidden_layer_dense(self):
        network = small_trained_network()
        _, test = mnist()
        p, hidden = m.network_answer(network, test.image(0))
        acts = network.forward(test.image(0))
        self.assertEqual(p, list(acts.p))
        self.assertEqual(len(hidden), 1)
        self.assertEqual(len(hidden[0]), 128)
        self.assertEqual([j for j, v in enumerate(hidden[0]) if v], acts.inputs[1][0])

    def test_network_answer_gives_every_hidden_layer_of_a_deeper_network(self):
        network = m.NeuralNetwork([784, 32, 16, 10], seed=2)
        _, test = mnist()
        p, hidden = m.network_answer(m.make_engine(network, "packed"), test.image(0))
        self.assertEqual([len(layer) for layer in hidden], [32, 16])
        self.assertEqual(m.model_description(network, {})["layers"], [784, 32, 16, 10])

    def test_images_are_read_from_bytes_as_from_files(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        path = os.path.join(folder, "seven.png")
        with open(path, "wb") as stream:
            stream.write(drawing_png(0))
        self.assertEqual(m.read_image(path), m.decode_image("upload", drawing_png(0)))

    def test_model_metadata_that_is_not_a_number_is_left_out(self):
        description = m.model_description(small_trained_network(),
                                          {"test_accuracy": "nan", "epochs": "many"})
        self.assertIsNone(description["test_accuracy"])
        self.assertIsNone(description["epochs"])
        self.assertIsNone(description["training_images"])

    def test_only_loopback_addresses_count_as_private(self):
        for host in ("127.0.0.1", "127.4.5.6", "::1", "localhost"):
            self.assertTrue(m.is_loopback(host), host)
        for host in ("0.0.0.0", "", "::", "192.168.1.20", "example.org"):
            self.assertFalse(m.is_loopback(host), host)

    def test_open_says_where_to_go_when_no_browser_starts(self):
        err = io.StringIO()
        console = m.Console(out=io.StringIO(), err=err, interactive=False)
        with unittest.mock.patch.object(m.webbrowser, "open", return_value=False) as opened:
            m.open_in_browser("http://127.0.0.1:8000/", console)
        opened.assert_called_once_with("http://127.0.0.1:8000/")
        assert_one_line_error(self, err.getvalue(), "open http://127.0.0.1:8000/ yourself")

    def test_the_address_to_open_is_on_this_machine(self):
        self.assertEqual(m.server_url("127.0.0.1", 8000), "http://127.0.0.1:8000/")
        self.assertEqual(m.server_url("0.0.0.0", 8001), "http://127.0.0.1:8001/")
        self.assertEqual(m.server_url("::1", 80), "http://[::1]:80/")


class CommandTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.folder = tempfile.mkdtemp()
        cls.model = os.path.join(cls.folder, "model.safetensors")
        m.save_model(small_trained_network(), cls.model, METADATA)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.folder)

    def test_serve_without_a_model_says_how_to_make_one(self):
        run = run_main("serve", "--load", os.path.join(self.folder, "none.safetensors"))
        self.assertEqual(run.code, 1)
        assert_one_line_error(self, run.err, "not found", "--max-train 60000 --save")

    def test_a_port_in_use_is_one_line_naming_it_and_suggesting_another(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            run = run_main("serve", "--load", self.model, "--port", str(port))
        self.assertEqual(run.code, 1)
        assert_one_line_error(self, run.err, "port %d" % port, "in use", "--port")

    def test_a_bad_port_is_a_usage_error(self):
        for port in ("70000", "-1", "http"):
            run = run_main("serve", "--load", self.model, "--port", port)
            self.assertEqual(run.code, 2, port)
            assert_one_line_error(self, run.err, "--port")

    def test_serve_prints_its_address_answers_and_stops_on_ctrl_c_with_130(self):
        process = subprocess.Popen([sys.executable, SCRIPT, "serve", "--load", self.model,
                                    "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   universal_newlines=True, cwd=self.folder)
        self.addCleanup(process.kill)
        ready, _, _ = select.select([process.stdout], [], [], 4 * TIMEOUT)
        first = process.stdout.readline() if ready else ""
        self.assertIn("(test accuracy 83.74%)", first)
        url = re.search(r"http://127\.0\.0\.1:(\d+)/", first)
        self.assertTrue(url, first)
        port = int(url.group(1))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        connection.request("GET", "/api/model")
        self.assertEqual(connection.getresponse().status, 200)
        connection.close()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=4 * TIMEOUT)
        self.assertEqual(process.returncode, 130, err)
        assert_one_line_error(self, err, "interrupted", "stopped")
        with self.assertRaises(ConnectionRefusedError):        # the socket is closed
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()


if __name__ == "__main__":
    unittest.main()
