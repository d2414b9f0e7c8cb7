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


def start_server(network, metadata=None, log=None, allowed_hosts=()):
    """A DigitServer on a free port, serving from a thread: (server, stop)."""
    server = m.make_digit_server(network, metadata or {}, "127.0.0.1", 0, log, allowed_hosts)
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

    def test_the_pages_limit_on_a_file_it_sends_as_it_is_is_the_servers(self):
        page = self.request("GET", "/").body.decode("utf-8")
        shift = re.search(r"const FILE_LIMIT = (\d+) << (\d+);", page)
        self.assertEqual(int(shift.group(1)) << int(shift.group(2)), m.SERVE_MAX_BODY)

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

    def test_a_blank_page_gets_no_guess_no_probabilities_and_a_warning(self):
        answer = self.predict(pngmaker.encode(10, 10, [[255] * 10] * 10, 0))
        self.assertEqual(answer.status, 200)
        self.assertIsNone(answer.json["guess"])
        self.assertIsNone(answer.json["probabilities"])     # no digit: no claim of one
        self.assertIsNone(answer.json["hidden"])
        self.assertEqual(answer.json["warnings"], ["no ink found in the image (no marks stand "
                                                   "out from the paper around them)"])
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


class LoadTests(ServerTestCase):
    def test_a_hundred_clients_at_once_five_requests_each_are_all_answered(self):
        # http.server's listen queue of 5 reset a third of these connections.
        clients, each = 100, 5
        start = threading.Barrier(clients, timeout=4 * TIMEOUT)
        content = digit_png(0)
        answers, failures = [], []

        def client():
            start.wait()
            for _ in range(each):
                try:
                    answer = self.predict(content)
                    answers.append((answer.status, answer.json, answer.headers["Retry-After"]))
                except (OSError, http.client.HTTPException, ValueError) as e:
                    failures.append(repr(e))
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(12 * TIMEOUT)
        self.assertEqual(failures, [])
        self.assertEqual(len(answers), clients * each)
        _, test = mnist()
        for status, value, retry in answers:      # an answer, or a polite "try again"
            if status == 503:
                self.assertEqual(retry, str(m.RETRY_AFTER))
                self.assertIn("busy", value["error"])
            else:
                self.assertEqual((status, value["guess"]), (200, test.labels[0]))

    def test_a_request_that_waits_too_long_for_its_turn_gets_503_with_retry_after(self):
        for _ in range(m.PREPARE_AT_ONCE):               # every turn taken, by someone slow
            self.server.preparing.acquire()
        try:
            with unittest.mock.patch.object(m, "PREPARE_WAIT", 0.2):
                answer = self.predict(digit_png(0))
        finally:
            for _ in range(m.PREPARE_AT_ONCE):
                self.server.preparing.release()
        self.assertJsonError(answer.status, answer.body, 503, "busy", "try again")
        self.assertEqual(answer.headers["Retry-After"], str(m.RETRY_AFTER))
        self.assertEqual(self.predict(digit_png(0)).status, 200)      # and once free, it is


class OtherSiteTests(ServerTestCase):
    def test_a_host_header_naming_another_site_is_403_saying_what_to_open(self):
        # DNS rebinding: evil.example's name points at 127.0.0.1, and its page
        # reads this server's answers as its own. The Host header gives it away.
        for host in ("evil.example:%d" % self.port, "evil.example", "127.0.0.1.evil.example",
                     "localhost.evil.example:%d" % self.port, "127.0.0.1@evil.example",
                     "192.168.1.20:%d" % self.port, "", "[::1"):
            for method, path in (("GET", "/"), ("GET", "/api/model"), ("POST", "/api/predict")):
                answer = self.request(method, path, digit_png(0) if method == "POST" else None,
                                      {"Host": host, "Content-Type": "image/png"})
                self.assertJsonError(answer.status, answer.body, 403,
                                     "not this server's", "--allow-host",
                                     "http://127.0.0.1:%d/" % self.port)

    def test_the_servers_own_names_are_answered(self):
        for host in ("127.0.0.1:%d" % self.port, "localhost:%d" % self.port, "LocalHost",
                     "[::1]:%d" % self.port, "[0:0::1]", "127.0.0.1"):
            self.assertEqual(self.request("GET", "/", headers={"Host": host}).status, 200, host)
        status, body = self.raw(b"GET / HTTP/1.0\r\n\r\n")     # no Host: no browser sends that
        self.assertEqual(status, 200)

    def test_two_host_headers_are_403(self):
        status, body = self.raw(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n"
                                b"Connection: close\r\n\r\n")
        self.assertJsonError(status, body, 403, "more than one Host")

    def test_a_post_from_another_sites_page_is_403_and_not_read(self):
        # What a page on evil.example can make a browser send, without asking anyone:
        # a POST with a "simple" Content-Type, and the page's origin.
        for origin in ("http://evil.example", "null", "https://127.0.0.1:%d" % self.port,
                       "http://127.0.0.1:%d" % (self.port + 1), "http://localhost:%d" % self.port,
                       "http://127.0.0.1:%d.evil.example" % self.port):
            answer = self.request("POST", "/api/predict", digit_png(0),
                                  {"Origin": origin, "Content-Type": "text/plain"})
            self.assertJsonError(answer.status, answer.body, 403, "another site", "own page")
            self.assertNotIn("guess", answer.json)
        self.assertStillAnswers()

    def test_a_post_from_the_servers_own_page_is_answered(self):
        for host, origin in (("127.0.0.1:%d" % self.port, "http://127.0.0.1:%d" % self.port),
                             ("localhost:%d" % self.port, "http://localhost:%d" % self.port),
                             ("[::1]:%d" % self.port, "http://[::1]:%d" % self.port)):
            answer = self.request("POST", "/api/predict", digit_png(0),
                                  {"Host": host, "Origin": origin, "Content-Type": "image/png"})
            self.assertEqual(answer.status, 200, answer.body)
            self.assertEqual(answer.json["guess"], mnist()[1].labels[0])

    def test_names_allowed_with_allow_host_are_answered_and_no_others(self):
        server, stop = start_server(self.network, allowed_hosts=("mybox.local", "192.168.1.20"))
        self.addCleanup(stop)
        port = server.server_address[1]
        for host, status in (("mybox.local:%d" % port, 200), ("MYBOX.local", 200),
                             ("192.168.1.20:%d" % port, 200), ("localhost", 200),
                             ("other.local:%d" % port, 403), ("192.168.1.21", 403)):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
            connection.request("GET", "/api/model", headers={"Host": host})
            self.assertEqual(connection.getresponse().status, status, host)
            connection.close()

    def test_listening_on_every_interface_any_ip_address_may_be_named_but_no_other_name(self):
        # (the server is made, never started: it answers nobody)
        server = m.make_digit_server(self.network, {}, "0.0.0.0", 0)
        self.addCleanup(server.server_close)
        for name in ("192.168.1.20", "10.0.0.7", "127.0.0.1", "localhost", "fe80::1"):
            self.assertTrue(server.allows_host(m.host_name(name)), name)
        for name in ("evil.example", "mybox.local"):
            self.assertFalse(server.allows_host(m.host_name(name)), name)
        mine = m.make_digit_server(self.network, {}, "127.0.0.1", 0)
        self.addCleanup(mine.server_close)
        self.assertFalse(mine.allows_host("192.168.1.20"))


class BadRequestTests(ServerTestCase):
    def test_a_huge_upload_is_refused_from_its_length_before_its_body_is_sent(self):
        status, body = self.raw(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                b"Content-Length: 50000000\r\n\r\n")      # and no body at all
        self.assertJsonError(status, body, 413, "50,000,000 bytes", "8 MiB")
        self.assertStillAnswers()

    def test_a_body_without_a_length_is_411(self):
        status, body = self.raw(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertJsonError(status, body, 411, "Content-Length")
        status, body = self.raw(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        self.assertJsonError(status, body, 411, "Content-Length")
        self.assertStillAnswers()

    def test_a_bad_length_is_400(self):
        for length in (b"abc", b"-1", b"1e3", b"\xd9\xa1", b"9" * 40):
            status, body = self.raw(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    b"Content-Length: " + length + b"\r\n\r\n")
            self.assertJsonError(status, body, 400, "Content-Length")
        status, body = self.raw(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")
        self.assertJsonError(status, body, 400, "Content-Length")
        self.assertStillAnswers()

    def test_a_form_upload_is_400_saying_to_send_the_file_itself(self):
        # What curl -F file=@x.png sends: the file inside a multipart form.
        boundary = b"------------------------d74496d66958873e"
        body = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"file\"; "
                b"filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n" + digit_png(0)
                + b"\r\n--" + boundary + b"--\r\n")
        answer = self.request("POST", "/api/predict", body, {
            "Content-Type": "multipart/form-data; boundary=" + boundary.decode("ascii")})
        self.assertJsonError(answer.status, answer.body, 400, "the image file itself",
                             "--data-binary @", "http://127.0.0.1:%d/api/predict" % self.port)
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
                connection.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
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
        self.assertEqual(m.read_digit(drawing_png(0)), m.read_digit(path))   # (a path or bytes)
        with self.assertRaises(m.MnistError) as caught:
            m.read_digit(b"not an image")
        self.assertIn("image: not an image", str(caught.exception))
        with self.assertRaises(m.MnistError):
            m.read_digit(12)

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

    def test_host_headers_are_read_as_name_and_port(self):
        for text, named in (("127.0.0.1:8000", ("127.0.0.1", 8000)),
                            ("LocalHost", ("localhost", None)), ("[::1]:80", ("::1", 80)),
                            ("[0:0:0:0:0:0:0:1]", ("::1", None)),
                            (" mybox.local:8000 ", ("mybox.local", 8000))):
            self.assertEqual(m.host_and_port(text), named, text)
        for text in ("", "a b", "x:y", "127.0.0.1@evil", "http://x", "[::1", "::1", "x:123456"):
            self.assertIsNone(m.host_and_port(text), text)

    def test_an_origin_is_the_pages_own_with_the_same_scheme_name_and_port(self):
        self.assertTrue(m.same_origin("http://127.0.0.1:8000", "127.0.0.1:8000"))
        self.assertTrue(m.same_origin("http://localhost", "localhost:80"))
        self.assertTrue(m.same_origin("http://[::1]:8000", "[0::1]:8000"))
        for origin in ("https://127.0.0.1:8000", "http://127.0.0.1:8001", "http://127.0.0.1",
                       "http://localhost:8000", "null", "", "http://127.0.0.1:8000/x"):
            self.assertFalse(m.same_origin(origin, "127.0.0.1:8000"), origin)

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

    def test_allow_host_takes_names_and_addresses_and_refuses_anything_else(self):
        args = m.build_serve_parser().parse_args(["--allow-host", "MyBox.local", "--allow-host",
                                                  "[::1]", "--allow-host", "192.168.1.20"])
        self.assertEqual(args.allow_host, ["mybox.local", "::1", "192.168.1.20"])
        for name in ("http://mybox.local", "mybox.local:8000", "", "a b", "*"):
            run = run_main("serve", "--load", self.model, "--allow-host", name)
            self.assertEqual(run.code, 2, name)
            assert_one_line_error(self, run.err, "--allow-host", "not a host name")

    def test_a_bad_port_is_a_usage_error(self):
        for port in ("70000", "-1", "http"):
            run = run_main("serve", "--load", self.model, "--port", port)
            self.assertEqual(run.code, 2, port)
            assert_one_line_error(self, run.err, "--port")

    def test_serve_prints_its_address_answers_and_stops_on_ctrl_c_with_130(self):
        self.serve_and_stop(ignoring_ctrl_c=False)

    def test_serve_stops_on_ctrl_c_even_when_started_with_ctrl_c_ignored(self):
        self.serve_and_stop(ignoring_ctrl_c=True)        # as a shell's background job is

    def serve_and_stop(self, ignoring_ctrl_c):
        ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignoring_ctrl_c else None
        process = subprocess.Popen([sys.executable, SCRIPT, "serve", "--load", self.model,
                                    "--port", "0", "--allow-host", "mybox.local"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   universal_newlines=True, cwd=self.folder, preexec_fn=ignore)
        self.addCleanup(process.kill)
        self.addCleanup(process.stdout.close)
        self.addCleanup(process.stderr.close)
        ready, _, _ = select.select([process.stdout], [], [], 4 * TIMEOUT)
        first = process.stdout.readline() if ready else ""
        self.assertIn("(test accuracy 83.74%)", first)
        url = re.search(r"http://127\.0\.0\.1:(\d+)/", first)
        self.assertTrue(url, first)
        port = int(url.group(1))
        for host, status in (("127.0.0.1:%d" % port, 200), ("mybox.local:%d" % port, 200),
                             ("evil.example:%d" % port, 403)):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
            connection.request("GET", "/api/model", headers={"Host": host})
            self.assertEqual(connection.getresponse().status, status, host)
            connection.close()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=4 * TIMEOUT)
        self.assertEqual(process.returncode, 130, err)
        assert_one_line_error(self, err, "interrupted", "stopped")
        with self.assertRaises(ConnectionRefusedError):        # the socket is closed
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()


if __name__ == "__main__":
    unittest.main()
