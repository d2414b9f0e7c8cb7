"""Several processes (--workers): the averaging, the sharing out, exact repeats
and resumes, Ctrl-C, a worker that dies, and the spawn start method."""

import array
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from unittest import mock

from helpers import SCRIPT, mnist, weights, mnist_pure as m


def fit_with_workers(n, size=3000, epochs=1, engine="packed", start_method=None, **fields):
    """A seeded network trained on the first `size` images by n processes,
    averaging every 500 images: (engine, state)."""
    train, test = mnist()
    settings = m.Settings(max_train=size, epochs=epochs, engine=engine, workers=n,
                          start_method=start_method, learning_rate=0.05, **fields)
    engine = m.make_engine(m.NeuralNetwork(settings.sizes(), settings.seed), engine)
    workers = m.start_workers(settings, train[:size], None, test[:500])
    state = m.TrainingState()
    try:
        with mock.patch.object(m, "ROUND_IMAGES", 500):
            engine = m.fit(engine, train[:size], None, settings, state, m.StopFlag(),
                           workers=workers)
    finally:
        if workers is not None:
            workers.close()
    return engine, state


class AveragingTests(unittest.TestCase):
    def test_flat_weights_round_trip_for_both_engines_at_depth_1_and_2(self):
        for sizes in ([784, 16, 10], [784, 16, 8, 10]):
            network = m.NeuralNetwork(sizes, seed=3)
            for name in ("lists", "packed"):
                engine = m.make_engine(network, name)
                flat = m.flat_weights(engine)
                self.assertEqual(len(flat), sum(a * b + b for a, b in zip(sizes, sizes[1:])))
                other = m.make_engine(m.NeuralNetwork(sizes, seed=4), name)
                m.load_flat_weights(other, flat)
                self.assertEqual(m.flat_weights(other), flat)
                self.assertEqual(weights(other), weights(engine))

    def test_loading_keeps_the_lists_a_trainer_holds(self):
        network = m.NeuralNetwork([784, 4, 10], seed=1)
        rows = network.weights[1]
        m.load_flat_weights(network, m.flat_weights(m.NeuralNetwork([784, 4, 10], seed=2)))
        self.assertIs(network.weights[1], rows)
        self.assertEqual(network.weights, m.NeuralNetwork([784, 4, 10], seed=2).weights)

    def test_the_mean_of_weights_is_taken_element_by_element(self):
        a, b, c = (array.array("d", v) for v in ([1, 2, 4], [3, 2, 0], [2, 5, 2]))
        self.assertEqual(list(m.mean_of([a, b])), [2.0, 2.0, 2.0])
        self.assertEqual(list(m.mean_of([a, b, c])), [2.0, 3.0, 2.0])


class SharingTests(unittest.TestCase):
    def test_an_epoch_is_cut_into_consecutive_shares_of_whole_batches(self):
        workers = m.Workers.__new__(m.Workers)
        workers.size = 3
        self.assertEqual(workers.shares(0, 300, 1), [(0, 100), (100, 200), (200, 300)])
        self.assertEqual(workers.shares(1000, 1010, 4), [(1000, 1004), (1004, 1008), (1008, 1010)])
        self.assertEqual(workers.shares(5, 6, 1), [(5, 6), (6, 6), (6, 6)])

    def test_two_workers_learn_as_well_as_one(self):
        _, test = mnist()
        one, _ = fit_with_workers(1, epochs=2)
        two, state = fit_with_workers(2, epochs=2)
        self.assertEqual([s.seen for s in state.history], [3000, 3000])
        self.assertGreater(m.test(two, test[:2000]), m.test(one, test[:2000]) - 0.03)

    def test_the_same_worker_count_and_seed_repeat_a_run_exactly(self):
        a, state_a = fit_with_workers(2, size=1500, seed=5)
        b, state_b = fit_with_workers(2, size=1500, seed=5)
        self.assertEqual(weights(a), weights(b))
        self.assertEqual(state_a.history[0].updated, state_b.history[0].updated)

    def test_scoring_shared_out_gives_the_same_guesses_as_one_process(self):
        train, test = mnist()
        engine = m.make_engine(m.NeuralNetwork(seed=1), "packed")
        settings = m.Settings(workers=2, learning_rate=0.05, epochs=1, augment="",
                              engine="packed")          # the helpers' engine too
        workers = m.start_workers(settings, train[:10], None, test[:701])
        try:
            shared = m.evaluate(engine, test[:701], None, workers)
        finally:
            workers.close()
        alone = m.evaluate(engine, test[:701])
        self.assertEqual((shared.guesses, shared.confidences), (alone.guesses, alone.confidences))

    def test_workers_start_with_the_spawn_method_too(self):
        # spawn is the default on macOS and Windows: the helpers import the
        # module afresh and receive the data through a pipe.
        engine, state = fit_with_workers(2, size=1000, start_method="spawn")
        self.assertEqual(state.history[0].seen, 1000)
        same, _ = fit_with_workers(2, size=1000)
        self.assertEqual(weights(engine), weights(same))

    def test_a_lists_engine_with_momentum_trains_in_workers_too(self):
        _, test = mnist()
        engine, _ = fit_with_workers(2, size=1000, engine="lists", hidden=(32,), momentum=0.5,
                                     batch_size=10)
        self.assertGreater(m.test(engine, test[:500]), 0.6)


def helper_processes(pid):
    """The pids of the child processes of pid (Linux /proc)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as stream:
                    fields = stream.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return children


@unittest.skipUnless(os.path.isdir("/proc") and hasattr(signal, "SIGKILL"), "needs Linux /proc")
class ProcessTests(unittest.TestCase):
    """The real program, as a process with its helpers."""

    def setUp(self):
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)
        self.checkpoint = os.path.join(self.folder, "ck.safetensors")

    def start(self, *extra, until="epoch"):
        """The program, started; once its output shows a line beginning with
        `until`, its helper has started and worked for a moment."""
        command = [sys.executable, SCRIPT, "--max-train", "60000", "--epochs", "3",
                   "--workers", "2", "--max-test", "500", "--show", "0",
                   "--checkpoint", self.checkpoint] + list(extra)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL, universal_newlines=True,
                                   cwd=self.folder)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        while True:                                 # until the epoch table starts
            line = process.stdout.readline()
            if not line:
                self.fail("the program ended early: " + process.stderr.read())
            if line.startswith(until):
                break
        deadline = time.monotonic() + 60
        while len(helper_processes(process.pid)) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)                             # well into the first round
        return process

    def finish(self, process):
        out, err = process.communicate(timeout=120)
        return process.returncode, out, err

    def assert_nothing_left(self, pid):
        time.sleep(0.5)
        self.assertEqual(helper_processes(pid), [])

    def test_ctrl_c_saves_one_checkpoint_exits_130_and_leaves_no_process(self):
        process = self.start()
        children = helper_processes(process.pid)
        process.send_signal(signal.SIGINT)
        code, out, err = self.finish(process)
        self.assertEqual(code, 130, err)
        self.assertNotIn("Traceback", err)
        self.assertNotIn("resource_tracker", err)
        self.assertRegex(err, r"interrupted in epoch 1 at image [\d,]+ of 60,000; saved a "
                              r"checkpoint to .*ck\.safetensors")
        self.assertTrue(os.path.exists(self.checkpoint))
        for child in children:
            self.assertFalse(os.path.exists("/proc/%d" % child), "helper %d left behind" % child)

    def test_a_worker_killed_outright_gives_one_line_a_checkpoint_and_exit_1(self):
        process = self.start()
        (helper,) = helper_processes(process.pid)
        os.kill(helper, signal.SIGKILL)
        code, out, err = self.finish(process)
        self.assertEqual(code, 1, err)
        lines = err.strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertIn("worker process 1 was killed by signal 9", lines[0])
        self.assertIn("saved the last consistent weights to", lines[0])
        self.assertTrue(os.path.exists(self.checkpoint))
        self.assert_nothing_left(process.pid)

    def test_a_run_stopped_with_two_workers_resumes_with_one(self):
        # 50 epochs, so that even PyPy is still training when Ctrl-C comes
        # (on CPython, in epoch 2); the resumed run goes on for two more.
        process = self.start("--seed", "3", "--max-train", "12000", "--epochs", "50",
                             until="    1")
        process.send_signal(signal.SIGINT)
        self.assertEqual(self.finish(process)[0], 130)
        done_epochs = m.load_run(self.checkpoint)[3].epoch
        done = subprocess.run([sys.executable, SCRIPT, "--resume", self.checkpoint,
                               "--epochs", str(done_epochs + 2), "--workers", "1",
                               "--max-test", "500", "--show", "0", "--quiet", "--json"],
                              cwd=self.folder, timeout=300,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertRegex(done.stdout, r"resuming (in epoch %d at image|after epoch %d)"
                         % (done_epochs + 1, done_epochs))
        summary = json.loads(done.stdout.splitlines()[-1])
        self.assertEqual((summary["epochs"], summary["workers"], summary["train_images"]),
                         (done_epochs + 2, 1, 12000))
        # A broken resume reads ~10%. The bar is below 0.9 because per-sample
        # SGD at this rate (0.032) swings: measured here, 86.5-92.9% on 2,000
        # test images from one 2,000 training images to the next.
        self.assertGreater(summary["test_accuracy"], 0.85)


if __name__ == "__main__":
    unittest.main()
