"""Models on disk: the safetensors format written and read with the standard
library, the strict loader, atomic writes, and checkpoints."""

import array
import errno
import importlib
import json
import os
import shutil
import struct
import tempfile
import unittest
from unittest import mock

from helpers import assert_one_line_error, mnist, mnist_pure as m, run_main


def header_and_data(content):
    (length,) = struct.unpack("<Q", content[:8])
    return json.loads(content[8:8 + length]), content[8 + length:], length


def file_with(header, data=b"", raw_header=None):
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def f64(*values):
    return array.array("d", values).tobytes()


class FormatTests(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)
        self.network = m.NeuralNetwork(seed=1)
        self.path = os.path.join(self.folder, "model.safetensors")

    def test_a_saved_model_loads_bit_for_bit_and_predicts_the_same(self):
        m.save_model(self.network, self.path, {"seed": 1})
        loaded, metadata = m.read_model(self.path)
        self.assertEqual((loaded.weights, loaded.biases), (self.network.weights, self.network.biases))
        _, test = mnist()
        for image, _ in test[:20]:
            self.assertEqual(loaded.predict(image), self.network.predict(image))
        self.assertEqual(metadata["seed"], "1")
        self.assertEqual(metadata["format"], "mnist_pure")
        self.assertEqual(metadata["sizes"], "784,128,10")

    def test_a_deeper_model_saves_every_layer_as_fc1_fc2_fc3(self):
        deep = m.NeuralNetwork([784, 32, 16, 10], seed=3)
        m.save_model(deep, self.path)
        with open(self.path, "rb") as stream:
            header, _, _ = header_and_data(stream.read())
        shapes = {name: entry["shape"] for name, entry in header.items() if name != "__metadata__"}
        self.assertEqual(shapes, {"fc1.weight": [32, 784], "fc1.bias": [32],
                                  "fc2.weight": [16, 32], "fc2.bias": [16],
                                  "fc3.weight": [10, 16], "fc3.bias": [10]})
        self.assertEqual(header["__metadata__"]["sizes"], "784,32,16,10")
        loaded = m.load_model(self.path)
        self.assertEqual((loaded.sizes, loaded.weights, loaded.biases),
                         (deep.sizes, deep.weights, deep.biases))

    def test_a_model_whose_layers_do_not_chain_is_refused(self):
        deep = m.NeuralNetwork([784, 32, 16, 10], seed=3)
        tensors = m.network_tensors(deep)
        tensors[2] = ("fc2.weight", (16, 33), [0.0] * (16 * 33))
        m.write_atomically(self.path, m.safetensors_bytes(tensors, {}))
        with self.assertRaises(m.MnistError) as caught:
            m.load_model(self.path)
        self.assertIn("fc2.weight has shape [16, 33]", str(caught.exception))
        m.write_atomically(self.path, m.safetensors_bytes(m.network_tensors(deep)[:4], {}))
        with self.assertRaises(m.MnistError) as caught:
            m.load_model(self.path)
        self.assertIn("16 outputs; a digit reader needs 10", str(caught.exception))

    def test_the_packed_engine_saves_the_same_model_as_its_network(self):
        engine = m.make_engine(self.network, "packed")
        m.save_model(engine, self.path)
        self.assertEqual(m.load_model(self.path).weights, engine.to_network().weights)

    def test_the_file_is_safetensors_with_pytorch_names_and_shapes(self):
        m.save_model(self.network, self.path)
        with open(self.path, "rb") as stream:
            content = stream.read()
        header, data, length = header_and_data(content)
        self.assertEqual(length % 8, 0)
        self.assertTrue(content[8:9] == b"{")
        shapes = {name: (entry["dtype"], entry["shape"]) for name, entry in header.items()
                  if name != "__metadata__"}
        self.assertEqual(shapes, {"fc1.weight": ("F64", [128, 784]), "fc1.bias": ("F64", [128]),
                                  "fc2.weight": ("F64", [10, 128]), "fc2.bias": ("F64", [10])})
        self.assertTrue(all(isinstance(v, str) for v in header["__metadata__"].values()))
        # fc1.weight is [out, in]: row j, column i holds W1[i][j]
        begin = header["fc1.weight"]["data_offsets"][0]
        j, i = 5, 300
        (value,) = struct.unpack("<d", data[begin + 8 * (j * 784 + i):begin + 8 * (j * 784 + i + 1)])
        self.assertEqual(value, self.network.weights[0][i][j])
        ends = sorted(tuple(e["data_offsets"]) for n, e in header.items() if n != "__metadata__")
        self.assertEqual(ends[0][0], 0)
        self.assertEqual(ends[-1][1], len(data))

    def test_float32_files_as_pytorch_writes_them_load_too(self):
        n = 2
        tensors = [("fc1.weight", [n, 784], [0.5] * (n * 784)), ("fc1.bias", [n], [0.0, 1.0]),
                   ("fc2.weight", [10, n], [0.25] * (10 * n)), ("fc2.bias", [10], [0.0] * 10)]
        header, blobs, offset = {}, b"", 0
        for name, shape, values in tensors:
            blob = array.array("f", values).tobytes()
            header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
            blobs += blob
            offset += len(blob)
        with open(self.path, "wb") as stream:
            stream.write(file_with(header, blobs))
        network = m.load_model(self.path)
        self.assertEqual((network.sizes, network.biases[0], network.weights[0][3][1]),
                         ([784, 2, 10], [0.0, 1.0], 0.5))

    def test_the_real_safetensors_library_reads_our_file(self):
        try:      # optional: looked up by name, so nothing here depends on it
            load_file = importlib.import_module("safetensors.numpy").load_file
        except ImportError:
            self.skipTest("safetensors and numpy are not installed (the project never needs them)")
        m.save_model(self.network, self.path, {"seed": 1})
        tensors = load_file(self.path)
        self.assertEqual(tensors["fc1.weight"].shape, (128, 784))
        self.assertEqual(float(tensors["fc1.weight"][7, 400]), self.network.weights[0][400][7])
        self.assertEqual(float(tensors["fc2.weight"][3, 100]), self.network.weights[1][100][3])
        self.assertEqual([float(v) for v in tensors["fc2.bias"]], self.network.biases[1])


class StrictLoaderTests(unittest.TestCase):
    """Every violation: MnistError naming the file and the problem, one line."""

    def setUp(self):
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)
        self.path = os.path.join(self.folder, "bad.safetensors")
        good = os.path.join(self.folder, "good.safetensors")
        m.save_model(m.NeuralNetwork([784, 4, 10], seed=2), good)
        with open(good, "rb") as stream:
            self.good = stream.read()
        self.header, self.data, _ = header_and_data(self.good)

    def assert_refused(self, content, *fragments):
        with open(self.path, "wb") as stream:
            stream.write(content)
        with self.assertRaises(m.MnistError) as caught:
            m.load_run(self.path)
        message = str(caught.exception)
        self.assertTrue(message.startswith(self.path), message)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def changed(self, name, **entry):
        header = json.loads(json.dumps(self.header))
        header[name].update(entry)
        return file_with(header, self.data)

    def test_a_file_too_short_for_the_length_field(self):
        self.assert_refused(b"\x01\x02", "only 2 bytes")

    def test_a_header_length_past_the_end_of_the_file(self):
        self.assert_refused(struct.pack("<Q", 10 ** 6) + b"{}", "does not fit")

    def test_a_huge_header_length(self):
        self.assert_refused(struct.pack("<Q", 2 ** 63) + b"{}" * 8, "does not fit")

    def test_a_header_that_does_not_start_with_a_brace(self):
        self.assert_refused(file_with(None, raw_header=b' {"a": 1}'), "start with '{'")

    def test_a_header_that_is_not_json(self):
        self.assert_refused(file_with(None, raw_header=b'{"a": '), "not valid JSON")

    def test_a_header_that_is_not_utf8(self):
        self.assert_refused(file_with(None, raw_header=b'{"\xff": 1}'), "UTF-8")

    def test_a_deeply_nested_header(self):
        self.assert_refused(file_with(None, raw_header=b"{\"a\":" + b"[" * 100000 + b"]" * 100000 + b"}"),
                            "not valid JSON")

    def test_duplicate_keys(self):
        text = json.dumps(self.header).encode()
        self.assert_refused(file_with(None, self.data, raw_header=text[:-1] + b', "fc1.bias": {}}'),
                            "duplicate key 'fc1.bias'")

    def test_nan_written_into_the_header(self):
        self.assert_refused(file_with(None, raw_header=b'{"x": NaN}'), "NaN")

    def test_an_unknown_dtype(self):
        self.assert_refused(self.changed("fc1.bias", dtype="BF16"), "fc1.bias", "BF16")

    def test_a_shape_that_disagrees_with_the_offsets(self):
        self.assert_refused(self.changed("fc2.bias", shape=[11]), "fc2.bias", "88 bytes")

    def test_a_negative_or_fractional_shape(self):
        self.assert_refused(self.changed("fc2.bias", shape=[-10]), "bad shape")
        self.assert_refused(self.changed("fc2.bias", shape=[10.0]), "bad shape")

    def test_offsets_that_leave_a_gap(self):
        begin, end = self.header["fc2.bias"]["data_offsets"]
        header = json.loads(json.dumps(self.header))
        header["fc2.bias"]["data_offsets"] = [begin + 8, end + 8]
        self.assert_refused(file_with(header, self.data + bytes(8)), "gap or overlap")

    def test_offsets_that_overlap(self):
        header = json.loads(json.dumps(self.header))
        begin, end = header["fc1.bias"]["data_offsets"]
        header["fc1.bias"]["data_offsets"] = [begin - 8, end - 8]
        self.assert_refused(file_with(header, self.data), "gap or overlap")

    def test_offsets_past_the_end_of_the_file(self):
        self.assert_refused(self.good[:-16], "past the end")

    def test_bytes_after_the_last_tensor(self):
        self.assert_refused(self.good + bytes(8), "8 bytes after the last tensor")

    def test_bad_offsets(self):
        self.assert_refused(self.changed("fc2.bias", data_offsets=[5]), "bad data_offsets")
        self.assert_refused(self.changed("fc2.bias", data_offsets="0-80"), "bad data_offsets")

    def test_nan_and_infinite_weights(self):
        for bad in (float("nan"), float("inf"), -float("inf")):
            begin = self.header["fc2.bias"]["data_offsets"][0]
            data = self.data[:begin] + f64(bad) + self.data[begin + 8:]
            self.assert_refused(file_with(self.header, data), "fc2.bias", "NaN or infinite")

    def test_metadata_that_is_not_strings(self):
        header = json.loads(json.dumps(self.header))
        header["__metadata__"] = {"epochs": 3}
        self.assert_refused(file_with(header, self.data), "__metadata__")

    def test_a_missing_tensor(self):
        header = json.loads(json.dumps(self.header))
        begin, end = header.pop("fc2.bias")["data_offsets"]
        self.assert_refused(file_with(header, self.data[:begin]), "no tensor fc2.bias")

    def test_a_model_of_another_architecture(self):
        small_images = [("fc1.weight", (4, 196), [0.0] * 784), ("fc1.bias", (4,), [0.0] * 4),
                        ("fc2.weight", (10, 4), [0.0] * 40), ("fc2.bias", (10,), [0.0] * 10)]
        self.assert_refused(m.safetensors_bytes(small_images, {}), "fc1.weight has shape [4, 196]")
        two_layers = [("fc1.weight", (8, 784), [0.0] * 8 * 784), ("fc1.bias", (8,), [0.0] * 8),
                      ("fc2.weight", (6, 8), [0.0] * 48), ("fc2.bias", (6,), [0.0] * 6)]
        self.assert_refused(m.safetensors_bytes(two_layers, {}), "6 outputs", "needs 10")

    def test_a_truncated_file(self):
        self.assert_refused(self.good[:len(self.good) // 2])

    def test_an_empty_file(self):
        self.assert_refused(b"", "only 0 bytes")

    def test_the_command_line_refuses_a_damaged_model_in_one_line(self):
        cases = [(self.good[:100], "does not fit"), (self.good + b"junk", "after the last tensor"),
                 (b"", "only 0 bytes")]
        for content, fragment in cases:
            with open(self.path, "wb") as stream:
                stream.write(content)
            for option in ("--load", "--resume"):
                run = run_main(option, self.path, "--max-test", "10", "--quiet")
                self.assertEqual(run.code, 1, option)
                assert_one_line_error(self, run.err, self.path, fragment)
            run = run_main("predict", "--load", self.path, "digit.png")
            self.assertEqual(run.code, 1)
            assert_one_line_error(self, run.err, self.path, fragment)

    def test_a_folder_given_as_the_model(self):
        with self.assertRaises(m.MnistError) as caught:
            m.load_model(self.folder)
        self.assertIn("is a folder", str(caught.exception))

    def test_a_damaged_training_state(self):
        header = json.loads(json.dumps(self.header))
        header["__metadata__"]["training_state"] = '{"epoch": "three"}'
        self.assert_refused(file_with(header, self.data), "damaged training state")

    def test_a_training_state_with_impossible_settings(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        path = os.path.join(folder, "ok.safetensors")
        m.save_run(path, m.NeuralNetwork([784, 3, 10], seed=1),
                   m.Settings(learning_rate=0.05, epochs=10, augment=""),
                   m.TrainingState())
        with open(path, "rb") as stream:
            header, data, _ = header_and_data(stream.read())
        for field, bad in (("decay_every", 0), ("epochs", -1), ("learning_rate", float("nan")),
                           ("augment", "yes"), ("mastery", 2.0), ("hidden", True),
                           ("hidden", [0]), ("optimizer", "lbfgs"), ("batch_size", 0),
                           ("dropout", 1.0), ("nesterov", 1)):
            state = json.loads(header["__metadata__"]["training_state"])
            state["recipe"][field] = bad
            changed = json.loads(json.dumps(header))
            changed["__metadata__"]["training_state"] = json.dumps(state)
            self.assert_refused(file_with(changed, data), "damaged training state", field)


class AtomicWriteTests(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)
        self.path = os.path.join(self.folder, "model.safetensors")
        with open(self.path, "wb") as stream:
            stream.write(b"the old model")

    def old_model_is_intact(self):
        with open(self.path, "rb") as stream:
            self.assertEqual(stream.read(), b"the old model")
        self.assertEqual(os.listdir(self.folder), ["model.safetensors"])

    def test_a_full_disk_leaves_the_old_file_and_no_temporary_file(self):
        with mock.patch("os.fsync", side_effect=OSError(errno.ENOSPC, "No space left on device")):
            with self.assertRaises(m.MnistError) as caught:
                m.write_atomically(self.path, b"new content")
        self.assertIn("No space left on device", str(caught.exception))
        self.old_model_is_intact()

    def test_ctrl_c_in_the_middle_of_a_write_leaves_the_old_file(self):
        with mock.patch("os.fsync", side_effect=KeyboardInterrupt):
            with self.assertRaises(KeyboardInterrupt):
                m.write_atomically(self.path, b"new content")
        self.old_model_is_intact()

    def test_a_device_like_dev_full_is_refused_not_replaced(self):
        if not os.path.exists("/dev/full"):
            self.skipTest("no /dev/full here")
        with self.assertRaises(m.MnistError) as caught:
            m.write_atomically("/dev/full", b"x")
        self.assertIn("not a regular file", str(caught.exception))
        self.assertFalse(os.path.isfile("/dev/full"))

    def test_a_missing_folder_is_named(self):
        with self.assertRaises(m.MnistError) as caught:
            m.write_atomically(os.path.join(self.folder, "no", "such", "m.st"), b"x")
        self.assertIn("does not exist", str(caught.exception))

    def test_a_folder_as_the_target_is_refused(self):
        with self.assertRaises(m.MnistError) as caught:
            m.write_atomically(self.folder, b"x")
        self.assertIn("it is a folder", str(caught.exception))

    def test_a_successful_write_replaces_the_file_with_normal_permissions(self):
        new = os.path.join(self.folder, "new.bin")
        m.write_atomically(new, b"content")
        with open(new, "rb") as stream:
            self.assertEqual(stream.read(), b"content")
        umask = os.umask(0)
        os.umask(umask)
        self.assertEqual(os.stat(new).st_mode & 0o777, 0o666 & ~umask)

    def test_an_unwritable_save_path_is_refused_before_training_in_one_line(self):
        for target, fragment in ((os.path.join(self.folder, "missing", "m.st"), "does not exist"),
                                 ("/dev/full", "not a regular file"),
                                 (self.folder, "it is a folder")):
            run = run_main("--max-train", "100", "--epochs", "1", "--max-test", "100", "--quiet",
                           "--show", "0", "--save", target)
            self.assertEqual(run.code, 1)
            assert_one_line_error(self, run.err, fragment)
            self.assertEqual(run.out, "")          # refused before any training
        self.old_model_is_intact()


class CheckpointTests(unittest.TestCase):
    def test_a_checkpoint_holds_the_recipe_and_the_state_to_resume(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        path = os.path.join(folder, "ck.safetensors")
        settings = m.Settings(max_train=100, epochs=3, learning_rate=0.05, seed=4, augment="")
        state = m.TrainingState(epoch=1, position=40,
                                running=m.EpochStats(2, 0.05, loss_sum=3.0, seen=40, correct=30),
                                history=[m.EpochStats(1, 0.05, 10.0, 100, 80, 90, 10, 0.5)],
                                best_epoch=1, best_accuracy=0.8,
                                best_network=m.NeuralNetwork(seed=9))
        engine = m.make_engine(m.NeuralNetwork(seed=4), "packed")
        m.save_run(path, engine, settings, state)
        network, metadata, recipe, loaded = m.load_run(path)
        self.assertEqual(network.weights, engine.to_network().weights)
        self.assertEqual((recipe["seed"], recipe["epochs"], recipe["max_train"]), (4, 3, 100))
        self.assertEqual((loaded.epoch, loaded.position), (1, 40))
        self.assertEqual(loaded.running, state.running)
        self.assertEqual(loaded.history, state.history)
        self.assertEqual(loaded.best_network.weights, state.best_network.weights)
        self.assertIn("rng", json.loads(metadata["training_state"]))

    def test_a_model_file_holds_the_model_alone_and_a_checkpoint_what_training_needs(self):
        """A model file's tensors are PyTorch's state_dict of the network, so
        load_state_dict(strict=True) takes it; a checkpoint keeps beside them
        which images rest, the best epoch and the optimizer's state."""
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        train, _ = mnist()
        settings = m.Settings(max_train=200, epochs=1, augment="", momentum=0.9, validation=1,
                              hidden=(16, 8))
        settings.choose_defaults(200)
        state = m.TrainingState()
        engine = m.fit(m.make_engine(m.NeuralNetwork(settings.sizes(), 1), "packed"),
                       train[:200], train[-50:], settings, state, m.StopFlag())
        names = {}
        for kind, checkpoint in (("model", False), ("checkpoint", True)):
            path = os.path.join(folder, kind + ".safetensors")
            m.save_run(path, engine, settings, state, 0.5, checkpoint=checkpoint)
            names[kind] = set(m.read_safetensors(path)[0])
        model = {"fc%d.%s" % (l, kind) for l in (1, 2, 3) for kind in ("weight", "bias")}
        self.assertEqual(names["model"], model)
        prefixes = {name.split(".")[0] for name in names["checkpoint"] - model}
        self.assertEqual(prefixes, {"best", "rest", "optimizer"})


if __name__ == "__main__":
    unittest.main()
