"""Shared by the tests: the module under test, the real data, and ways to run
the program (in-process through main(), or as a real subprocess)."""

import functools
import io
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import mnist_pure  # noqa: E402

SCRIPT = os.path.join(ROOT, "mnist_pure.py")
DATA = os.path.join(ROOT, "data")


@functools.lru_cache(maxsize=None)
def mnist():
    """(train, test) Datasets from the committed data, loaded once."""
    return mnist_pure.load_mnist(DATA)


@functools.lru_cache(maxsize=None)
def small_trained_network():
    """A network trained on 2,000 images for 2 epochs (seed 1): ~84% on the
    test set, in about 1.5 s, once for all the tests that need one."""
    train, _ = mnist()
    settings = mnist_pure.Settings(max_train=2000, epochs=2, rest_sure=False)
    settings.learning_rate = 0.05          # (the tests' digits were chosen with this network)
    engine = mnist_pure.make_engine(mnist_pure.NeuralNetwork(seed=1), "packed")
    engine = mnist_pure.fit(engine, train[:2000], None, settings, mnist_pure.TrainingState(),
                            mnist_pure.StopFlag())
    return mnist_pure.as_network(engine)


def weights(engine):
    """An engine's weights and biases as plain lists, to compare two engines."""
    network = mnist_pure.as_network(engine)
    return network.weights, network.biases


class Folder(unittest.TestCase):
    """A test case with a temporary folder of its own, removed afterwards."""

    def setUp(self):
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)

    def write(self, name, content):
        """A file in the folder holding content (bytes); its path."""
        path = os.path.join(self.folder, name)
        with open(path, "wb") as stream:
            stream.write(content)
        return path


class ModelFolder(Folder):
    """A Folder, and a model file saved once for the whole class: set
    make_network to a function that returns the network to save."""
    make_network = None

    @classmethod
    def setUpClass(cls):
        cls.model_folder = tempfile.mkdtemp()
        cls.model = os.path.join(cls.model_folder, "model.safetensors")
        mnist_pure.save_model(cls.make_network(), cls.model)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.model_folder)


class Run:
    """What one call of main() printed and returned."""

    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    @property
    def last_line(self):
        return self.out.rstrip("\n").splitlines()[-1]


def run_main(*argv, answers=None, interactive=False):
    """Call mnist_pure.main(argv) with captured output; answers feed ask()."""
    out, err = io.StringIO(), io.StringIO()
    replies = list(answers or [])

    def fake_input(prompt):
        out.write(prompt)
        if not replies:
            raise EOFError
        reply = replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply
    console = mnist_pure.Console(out=out, err=err, input=fake_input, interactive=interactive)
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err    # argparse writes --help and usage errors there
    try:
        code = mnist_pure.main(list(argv), console)
    finally:
        sys.stdout, sys.stderr = old
    return Run(code, out.getvalue(), err.getvalue())


def run_script(*argv, env=None, timeout=300, python=None, cwd=None, stdin=subprocess.DEVNULL):
    """Run mnist_pure.py as a separate process: (returncode, stdout, stderr)."""
    environment = dict(os.environ)
    environment.pop("MAX_TRAIN", None)
    environment.pop("MAX_TEST", None)
    environment.update(env or {})
    done = subprocess.run([python or sys.executable, SCRIPT] + list(argv), cwd=cwd or tempfile.gettempdir(),
                          env=environment, stdin=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout, universal_newlines=True)
    return done.returncode, done.stdout, done.stderr


def assert_one_line_error(test, err, *fragments):
    """stderr is exactly one line, no traceback, mentioning every fragment."""
    lines = err.strip().splitlines()
    test.assertEqual(len(lines), 1, "expected one line on stderr, got:\n" + err)
    test.assertNotIn("Traceback", err)
    for fragment in fragments:
        test.assertIn(fragment, lines[0])
