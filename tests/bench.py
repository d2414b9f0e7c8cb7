"""Benchmark: how fast each engine trains and infers on this interpreter, beside
a naive nested-loop network as the baseline, all in one run.

    python tests/bench.py              # CPython: ~1-2 minutes
    pypy3 tests/bench.py
    python tests/bench.py --full-run   # also time `mnist_pure.py --max-train 60000 --epochs 1`

Training is plain per-sample SGD on every image (mastery off), so the figures
are training steps per second; inference is the forward pass alone. Figures on
a shared machine wobble by +-30%: compare the ratios within one run.
"""

import argparse
import os
import platform
import random
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import mnist_pure as m  # noqa: E402

PYPY = sys.implementation.name == "pypy"


class NaiveNetwork:
    """The textbook version: dense 784-vectors, W1 as 128 rows of 784, nested
    Python loops over every weight, no tricks. The same He initialisation and
    the same per-sample SGD as mnist_pure, so only the speed differs."""

    def __init__(self, rng):
        limit1, limit2 = (6 / 784) ** 0.5, (6 / 128) ** 0.5
        self.w1 = [[(2 * rng.random() - 1) * limit1 for _ in range(784)] for _ in range(128)]
        self.b1 = [0.0] * 128
        self.w2 = [[(2 * rng.random() - 1) * limit2 for _ in range(128)] for _ in range(10)]
        self.b2 = [0.0] * 10

    def forward(self, x):
        h = []
        for j in range(128):
            total = self.b1[j]
            for i in range(784):
                total += self.w1[j][i] * x[i]
            h.append(total if total > 0 else 0.0)
        z = []
        for k in range(10):
            total = self.b2[k]
            for j in range(128):
                total += self.w2[k][j] * h[j]
            z.append(total)
        return h, m.softmax(z)

    def train(self, x, label, rate):
        h, p = self.forward(x)
        dz = [p[k] - (1.0 if k == label else 0.0) for k in range(10)]
        dh = []
        for j in range(128):
            total = 0.0
            for k in range(10):
                total += self.w2[k][j] * dz[k]
            dh.append(total if h[j] > 0 else 0.0)
        for k in range(10):
            for j in range(128):
                self.w2[k][j] -= rate * dz[k] * h[j]
            self.b2[k] -= rate * dz[k]
        for j in range(128):
            for i in range(784):
                self.w1[j][i] -= rate * dh[j] * x[i]
            self.b1[j] -= rate * dh[j]


def dense(image):
    return [v / 255.0 for v in image]


def rate(count, seconds):
    return count / seconds if seconds > 0 else float("inf")


def time_naive(train, test, n_train, n_test):
    network = NaiveNetwork(random.Random(1))
    xs = [dense(train.image(k)) for k in range(n_train)]
    started = time.perf_counter()
    for k, x in enumerate(xs):
        network.train(x, train.labels[k], 0.05)
    train_rate = rate(n_train, time.perf_counter() - started)
    xs = [dense(test.image(k)) for k in range(n_test)]
    started = time.perf_counter()
    for x in xs:
        network.forward(x)
    return train_rate, rate(n_test, time.perf_counter() - started)


def time_engine(name, train, test, n_train, n_test, warmup):
    engine = m.make_engine(m.Network.random(random.Random(1)), name)
    labels = train.labels
    for k in range(warmup):                          # lets PyPy's JIT compile first
        engine.learn(engine.forward(train.sample(k)), labels[k], 0.05)
    started = time.perf_counter()
    for k in range(warmup, warmup + n_train):
        engine.learn(engine.forward(train.sample(k)), labels[k], 0.05)
    train_rate = rate(n_train, time.perf_counter() - started)
    started = time.perf_counter()
    for k in range(n_test):
        engine.forward(test.sample(k))
    return train_rate, rate(n_test, time.perf_counter() - started)


def time_loading():
    """Seconds to read all four files and turn all 70,000 images into inputs."""
    started = time.perf_counter()
    train, test = m.load_mnist(os.path.join(os.path.dirname(HERE), "data"), lambda s: None)
    for data in (train, test):
        for k in range(len(data)):
            data.sample(k)
    return time.perf_counter() - started, train, test


def full_run():
    """Wall time and peak memory of the real 60k-image, one-epoch run."""
    script = os.path.join(os.path.dirname(HERE), "mnist_pure.py")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, script, "--max-train", "60000", "--epochs", "1",
                           "--quiet", "--show", "0"], stdout=subprocess.PIPE,
                          universal_newlines=True, check=True)
    wall = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, peak_kib / 1024, done.stdout.strip().splitlines()[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=20000 if PYPY else 3000,
                        help="training steps timed per engine")
    parser.add_argument("--full-run", action="store_true",
                        help="also time the real `--max-train 60000 --epochs 1` run")
    args = parser.parse_args(argv)
    print("mnist_pure benchmark on %s, %s %s" % (m.python_version(), platform.system(),
                                                  platform.machine()))
    load_seconds, train, test = time_loading()
    print("load + prepare all 70,000 images: %.2f s" % load_seconds)
    n_naive = 2000 if PYPY else 150
    rows = [("naive nested loops (baseline)",) + time_naive(train, test, n_naive, n_naive)]
    warmup = 5000 if PYPY else 200
    for name in ("lists", "packed"):
        steps = args.train if name == "packed" or PYPY else max(300, args.train // 6)
        n_test = 10000 if name == "packed" or PYPY else 2000
        rows.append(("%s engine%s" % (name, " (auto)" if m.engine_name(m.Settings()) == name else ""),)
                    + time_engine(name, train, test, steps, n_test, warmup))
    base_train, base_infer = rows[0][1], rows[0][2]
    print()
    print("%-32s %12s %10s %12s %10s %12s" % ("", "train/s", "x naive", "infer/s", "x naive",
                                              "60k epoch"))
    for name, train_rate, infer_rate in rows:
        print("%-32s %12s %9.1fx %12s %9.1fx %11.0f s" % (
            name, format(int(train_rate), ","), train_rate / base_train,
            format(int(infer_rate), ","), infer_rate / base_infer, 60000 / train_rate))
    print()
    print("peak RSS of this benchmark: %.0f MB" % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    if args.full_run:
        wall, peak_mb, last = full_run()
        print("full run `mnist_pure.py --max-train 60000 --epochs 1`: %.1f s wall, peak RSS %.0f MB, %s"
              % (wall, peak_mb, last))
    return 0


if __name__ == "__main__":
    sys.exit(main())
