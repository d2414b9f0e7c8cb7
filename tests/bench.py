"""Benchmark: how fast each engine trains and infers on this interpreter, beside
a naive nested-loop network as the baseline; one and two worker processes, and
a model of their cost that projects the time to 98% on 4, 8 and 16 cores; the
options of Part II beside plain SGD; and, when NumPy happens to be importable,
NumPy's per-sample SGD of the same network as a reference. All in one run.

    python tests/bench.py              # CPython: ~3 minutes
    pypy3 tests/bench.py
    python tests/bench.py --full-run   # also time `mnist_pure.py --max-train 60000 --epochs 1`

Training is per-sample SGD on every image (mastery off), so the figures are
training steps per second; inference is the forward pass alone. Figures on a
shared machine wobble by +-30%: compare the ratios within one run. The
project never needs NumPy; the reference row is skipped without it.
"""

import argparse
import dataclasses
import importlib
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
    xs = [dense(image) for image, _ in train[:n_train]]
    started = time.perf_counter()
    for k, x in enumerate(xs):
        network.train(x, train.labels[k], 0.05)
    train_rate = rate(n_train, time.perf_counter() - started)
    xs = [dense(image) for image, _ in test[:n_test]]
    started = time.perf_counter()
    for x in xs:
        network.forward(x)
    return train_rate, rate(n_test, time.perf_counter() - started)


def time_engine(name, train, test, n_train, n_test, warmup):
    engine = m.make_engine(m.NeuralNetwork(seed=1), name)
    for image, label in train[:warmup]:             # lets PyPy's JIT compile first
        engine.learn(engine.forward(image), label, 0.05)
    started = time.perf_counter()
    for image, label in train[warmup:warmup + n_train]:
        engine.learn(engine.forward(image), label, 0.05)
    train_rate = rate(n_train, time.perf_counter() - started)
    started = time.perf_counter()
    for image, _ in test[:n_test]:
        engine.forward(image)
    return train_rate, rate(n_test, time.perf_counter() - started)


def time_workers(n, train, test, n_train):
    """Training steps/s (mastery off) of one epoch of n_train images in n
    processes, and test images scored per second, the way --workers runs them."""
    settings = m.Settings(max_train=n_train, epochs=1, workers=n, mastery=0.0, augment="")
    settings.choose_defaults(n_train)
    engine = m.make_engine(m.NeuralNetwork(seed=1), settings.engine_name())
    workers = m.start_workers(settings, train[:n_train], None, test)
    try:
        started = time.perf_counter()
        m.fit(engine, train[:n_train], None, settings, m.TrainingState(), m.StopFlag(),
              workers=workers)
        train_rate = rate(n_train, time.perf_counter() - started)
        started = time.perf_counter()
        m.evaluate(engine, test, None, workers)
        return train_rate, rate(len(test), time.perf_counter() - started)
    finally:
        if workers is not None:
            workers.close()


def time_epoch(n, train, test, n_train):
    """Seconds, updates and rounds of one epoch of n_train images in n
    processes, with the tool's recipe (mastery on): the first epoch of
    `mnist_pure.py --max-train N --workers n`, its testing left out."""
    settings = m.Settings(max_train=n_train, epochs=1, workers=n)
    settings.choose_defaults(n_train)
    engine = m.make_engine(m.NeuralNetwork(seed=1), settings.engine_name())
    workers = m.start_workers(settings, train[:n_train], None, test[:10])
    state, rounds = m.TrainingState(), []
    if workers is not None:
        train_round = workers.train_round
        workers.train_round = lambda *args: rounds.append(1) or train_round(*args)
    try:
        m.fit(engine, train[:n_train], None, settings, state, m.StopFlag(), workers=workers)
    finally:
        if workers is not None:
            workers.close()
    return state.history[0].seconds, state.history[0].updated, len(rounds)


def time_per_image(train, n_images):
    """Seconds per image of the tool's loop (section 12's train_share) on the
    auto engine, for a network trained one epoch on 10,000 images: an image
    answered from the resting table (no pass at all), a forward pass alone
    (a mastered image), and what an update adds (backward pass and step).
    Each is timed on its second run over the same images (PyPy's JIT has
    compiled the loop by then)."""
    settings = m.Settings(max_train=len(train), augment="")
    settings.choose_defaults(len(train))
    recipe = settings.recipe()
    options = dataclasses.replace(settings.options(), rest_sure=False)
    engine = m.make_engine(m.NeuralNetwork(seed=1), settings.engine_name())
    trainer = m.Trainer(engine, options, recipe.seed)
    stats = m.EpochStats(1, recipe.learning_rate)
    start = 10000
    m.train_share(trainer, train, recipe, 0, 0, start, stats)
    order = m.epoch_order(len(train), recipe.seed, 0)
    resting = m.Resting(len(train))
    resting.until = [1] * len(train)                 # every image rests in epoch 0
    rester = m.Trainer(engine, dataclasses.replace(options, rest_sure=True), recipe.seed,
                       train, resting)

    def forwards(trainer):                           # epoch_steps' path for a mastered image
        trainer.start(0, start, recipe.learning_rate)
        started = time.perf_counter()
        for position in range(start, start + n_images):
            image, label = train[order[position]]
            m.record(stats, label, trainer.forward(image).p, False)
        return (time.perf_counter() - started) / n_images

    def updates():                                   # every image forward and learned
        started = time.perf_counter()
        m.train_share(trainer, train, dataclasses.replace(recipe, mastery=0.0), 0, start,
                      start + n_images, stats)
        return (time.perf_counter() - started) / n_images
    forwards(rester), forwards(trainer), updates()   # a first run of each, for PyPy's JIT
    t_rest, t_forward, t_both = forwards(rester), forwards(trainer), updates()
    return t_rest, t_forward, t_both - t_forward


def time_sync_round(train, test, rounds):
    """Seconds of one round's exchange between two real processes (a round
    of no images: this process's slot written, the commands through the pipes,
    the helper's slot read and written, its changes added, share_out), and
    what each further helper adds to this process's part (its slot read and
    its changes added, every row of W1 changed, as in a real round)."""
    data = train[:2000]
    settings = m.Settings(max_train=len(data), epochs=1, workers=2, augment="")
    settings.choose_defaults(len(data))
    recipe = settings.recipe()
    engine = m.make_engine(m.NeuralNetwork(seed=1), settings.engine_name())
    trainer = m.Trainer(engine, settings.options(), recipe.seed, data, m.Resting(len(data)))
    stats = m.EpochStats(1, recipe.learning_rate)
    workers = m.start_workers(settings, data, None, test[:10])
    try:
        for _ in range(3):
            workers.train_round(trainer, data, recipe, 0, 0, 0, stats, m.StopFlag())
        started = time.perf_counter()
        for _ in range(rounds):
            workers.train_round(trainer, data, recipe, 0, 0, 0, stats, m.StopFlag())
        two = (time.perf_counter() - started) / rounds
    finally:
        workers.close()
    theirs = m.make_engine(m.as_network(engine), settings.engine_name())
    m.train_share(m.Trainer(theirs, settings.options(), recipe.seed), data,
                  dataclasses.replace(recipe, mastery=0.0), 0, 0, 500, stats)
    slot = bytearray(m.slot_size(engine.sizes))
    m.write_slot(slot, theirs)
    start = m.copy_weights(engine)
    started = time.perf_counter()
    for _ in range(rounds):
        m.add_changes(engine, start, m.read_slot(slot, engine))
    return two, (time.perf_counter() - started) / rounds


# What a run of all 60,000 images does up to the end of its first epoch at
# >= 98% test accuracy (the tool's recipe, --workers N), each the mean of
# seeds 1, 2, 3: epochs, forward passes, updates, images answered from the
# resting table, and rounds. Measured by simulating the N processes in one
# (on PyPy; the weights are exactly those of N real processes, as
# tests/test_workers.py checks), so it holds for any core count.
# (With 16, seed 3 had not reached 98% after 10 epochs: its 10 are counted.)
RUN_TO_98 = {1: (6.3, 306711, 75941, 73289, 0), 2: (6.3, 317443, 84903, 62557, 53),
             4: (6.3, 328838, 96165, 51162, 58), 8: (5.7, 304060, 101853, 35940, 59),
             16: (8.0, 425434, 136379, 54566, 77)}


def print_projection(t_rest, t_forward, t_update, sync_two, per_helper):
    """The model: N processes share the images' work, and pay each round's
    exchange, whose part in this process grows by one helper's read-and-add
    per further process. (It leaves out the time processes wait for the
    slowest one in a round, and the start of the helpers.)"""
    print("%-8s %7s %10s %10s %8s %8s %12s %9s" % (
        "--workers", "epochs", "forwards", "updates", "rounds", "sync/rd", "sync, all", "to 98%"))
    for n, (epochs, forwards, updates, rested, rounds) in sorted(RUN_TO_98.items()):
        work = (forwards * t_forward + updates * t_update + rested * t_rest) / n
        sync = 0.0 if n == 1 else sync_two + (n - 2) * per_helper
        print("%-8d %7.1f %10s %10s %8.0f %6.1f ms %10.1f s %7.1f s" % (
            n, epochs, format(int(forwards), ","), format(int(updates), ","),
            rounds if n > 1 else 0, 1000 * sync, rounds * sync, work + rounds * sync))


OPTIONS = [("plain SGD (the lesson's)", {}),
           ("--batch-size 32", {"batch_size": 32}),
           ("--momentum 0.9 (mini-batches of 32)", {"momentum": 0.9}),
           ("--momentum 0.9 --nesterov (batches of 32)", {"momentum": 0.9, "nesterov": True}),
           ("--optimizer adam (mini-batches of 64)", {"optimizer": "adam"}),
           ("--weight-decay 1e-4 (mini-batches of 32)", {"weight_decay": 1e-4}),
           ("--momentum 0.9 --batch-size 1", {"momentum": 0.9, "batch_size": 1}),
           ("--dropout 0.2", {"dropout": 0.2})]
OPTIONS += [("--augment " + name, {"augment": name}) for name in m.DISTORTIONS]


def time_option(fields, train, n_train, warmup):
    """Training steps/s (mastery off) with the options in fields, at their
    defaults for all 60,000 images (section 10's batch and rate; a small set
    takes smaller batches), on the engine that auto picks."""
    fields = dict({"augment": ""}, **fields)
    settings = m.Settings(max_train=len(train), mastery=0.0, **fields)
    settings.choose_defaults(len(train))
    engine = m.make_engine(m.NeuralNetwork(seed=1), settings.engine_name())
    trainer = m.make_trainer(engine, settings.options(), 1)
    recipe = m.Recipe(1, 0.01, mastery=0.0)
    stats = m.EpochStats(1, 0.01)
    m.train_share(trainer, train, recipe, 0, 0, warmup, stats)
    started = time.perf_counter()
    m.train_share(trainer, train, recipe, 0, warmup, warmup + n_train, stats)
    return settings.engine_name(), rate(n_train, time.perf_counter() - started)


def time_numpy(train, n_train):
    """NumPy per-sample SGD of the same network, float64, one core: the usual
    dense update (W1 -= lr * outer(x, da) over all 784 x 128), and the same
    with the update limited to the inked rows. None without NumPy."""
    try:
        np = importlib.import_module("numpy")
    except ImportError:
        return None
    rng = np.random.default_rng(1)
    images = np.frombuffer(train.images, dtype=np.uint8).reshape(-1, 784)[:n_train] / 255.0
    labels = np.frombuffer(train.labels, dtype=np.uint8)[:n_train]
    figures = []
    for sparse in (False, True):
        w1 = rng.uniform(-1, 1, (784, 128)) * (6 / 784) ** 0.5
        w2 = rng.uniform(-1, 1, (128, 10)) * (6 / 128) ** 0.5
        b1, b2 = np.zeros(128), np.zeros(10)
        started = time.perf_counter()
        for x, y in zip(images, labels):
            a = x @ w1 + b1
            h = np.maximum(a, 0.0)
            z = h @ w2 + b2
            p = np.exp(z - z.max())
            p /= p.sum()
            p[y] -= 1.0                                    # dz
            dh = (w2 @ p) * (a > 0)
            w2 -= 0.01 * np.outer(h, p)
            b2 -= 0.01 * p
            if sparse:
                inked = np.nonzero(x)[0]
                w1[inked] -= 0.01 * np.outer(x[inked], dh)
            else:
                w1 -= 0.01 * np.outer(x, dh)
            b1 -= 0.01 * dh
        figures.append(rate(n_train, time.perf_counter() - started))
    return np.__version__, figures


def time_loading():
    """Seconds to read all four files and turn all 70,000 images into inputs."""
    started = time.perf_counter()
    train, test = m.load_mnist(os.path.join(os.path.dirname(HERE), "data"))
    for data in (train, test):
        for image, _ in data:
            m.sparse_pixels(image)
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


def print_table(rows, base_train, base_infer):
    print("%-40s %12s %10s %12s %10s %12s" % ("", "train/s", "x naive", "infer/s", "x naive",
                                              "60k epoch"))
    for name, train_rate, infer_rate in rows:
        print("%-40s %12s %9.1fx %12s %9.1fx %11.0f s" % (
            name, format(int(train_rate), ","), train_rate / base_train,
            format(int(infer_rate), ","), infer_rate / base_infer, 60000 / train_rate))


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
    auto = m.Settings().engine_name()
    for name in ("lists", "packed"):
        steps = args.train if name == "packed" or PYPY else max(300, args.train // 6)
        n_test = 10000 if name == "packed" or PYPY else 2000
        rows.append(("%s engine%s" % (name, " (auto)" if auto == name else ""),)
                    + time_engine(name, train, test, steps, n_test, warmup))
    for n in (1, 2):
        rows.append(("%s engine, --workers %d (one epoch)" % (auto, n),)
                    + time_workers(n, train, test, 40000 if PYPY else 12000))
    print()
    print_table(rows, rows[0][1], rows[0][2])
    numpy = time_numpy(train, 3000)
    if numpy is None:
        print("NumPy reference: skipped (NumPy is not installed; the project never needs it)")
    else:
        version, (dense_rate, sparse_rate) = numpy
        two = rows[-1][1]
        print("NumPy %s per-sample SGD, float64, one core: %s steps/s (dense update), %s steps/s "
              "(inked rows only); --workers 2 above: %.2fx the dense one"
              % (version, format(int(dense_rate), ","), format(int(sparse_rate), ","),
                 two / dense_rate))
    print()
    n_epoch = 20000
    one, one_updates, _ = time_epoch(1, train, test, n_epoch)
    two, two_updates, rounds = time_epoch(2, train, test, n_epoch)
    print("a %s-image epoch, the tool's recipe (mastery on): --workers 1 %.2f s (%s updates), "
          "--workers 2 %.2f s (%s updates, %d rounds): %.2fx"
          % (format(n_epoch, ","), one, format(one_updates, ","), two,
             format(two_updates, ","), rounds, one / two))
    t_rest, t_forward, t_update = time_per_image(train, 5000 if PYPY else 1000)
    sync_two, per_helper = time_sync_round(train, test, 20)
    print("per image: %.1f us resting, %.1f us a forward pass, %.1f us more for an update; "
          "a sync round: %.1f ms with two processes, %.1f ms more per further process"
          % (1e6 * t_rest, 1e6 * t_forward, 1e6 * t_update, 1000 * sync_two,
             1000 * per_helper))
    print("Projected training time to 98% on all 60,000 images, N processes on N cores "
          "(a model from the figures above):")
    print_projection(t_rest, t_forward, t_update, sync_two, per_helper)
    print()
    print("%-46s %8s %10s %10s" % ("Part II's options (mastery off)", "engine", "train/s",
                                   "x plain"))
    n_option = 5000 if PYPY else 1280
    plain = None
    for name, fields in OPTIONS:
        engine, steps = time_option(fields, train, n_option, warmup)
        plain = plain or steps
        print("%-46s %8s %10s %9.2fx" % (name, engine, format(int(steps), ","), steps / plain))
    print()
    print("peak RSS of this benchmark: %.0f MB"
          % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    if args.full_run:
        wall, peak_mb, last = full_run()
        print("full run `mnist_pure.py --max-train 60000 --epochs 1`: %.1f s wall, peak RSS "
              "%.0f MB, %s" % (wall, peak_mb, last))
    return 0


if __name__ == "__main__":
    sys.exit(main())
