"""The network: the worked example, its gradients, its learning, and the packed
engine's agreement with the reference engine, at depth 1 and 2."""

import math
import random
import unittest

from helpers import mnist, mnist_pure as m


def dense_forward(network, image):
    """The forward pass written densely with matmul: an independent reference."""
    h = [v / 255.0 for v in image]
    layers = list(zip(network.weights, network.biases))
    for w, b in layers[:-1]:
        h = m.relu(m.add(m.matmul([h], w)[0], b))
    w, b = layers[-1]
    return m.softmax(m.add(m.matmul([h], w)[0], b))


def worked_example():
    """The 3-2-2 network of section 6's worked example."""
    net = m.NeuralNetwork([3, 2, 2], seed=1)
    net.weights = [[[0.8, -0.5], [1.0, 1.0], [1.0, 0.5]], [[0.5, -0.5], [1.0, 0.0]]]
    net.biases = [[0.0, 0.1], [0.0, 1.0]]
    return net, [255, 0, 51], 0


def assert_close(test, actual, expected, places=12):
    test.assertEqual(len(actual), len(expected))
    for a, e in zip(actual, expected):
        if isinstance(e, list):
            assert_close(test, a, e, places)
        else:
            test.assertAlmostEqual(a, e, places=places)


class WorkedExampleTests(unittest.TestCase):
    """Every number of the worked example in section 6's comment."""

    def test_the_forward_pass_gives_the_numbers_worked_out_by_hand(self):
        net, image, label = worked_example()
        acts = net.forward(image)
        x, h1 = acts.inputs
        assert_close(self, x[1], [1.0, 0.2])
        self.assertEqual(x[0], [0, 2])                     # pixel 2 is blank
        assert_close(self, m.pre_activations(net, image), [[1.0, -0.3], [0.5, 0.5]])
        self.assertEqual(h1, ([0], [1.0]))                 # unit 2 did not fire
        assert_close(self, acts.p, [0.5, 0.5])
        self.assertAlmostEqual(m.cross_entropy(acts.p, label), math.log(2), places=12)

    def test_the_backward_pass_gives_the_numbers_worked_out_by_hand(self):
        net, image, label = worked_example()
        acts = net.forward(image)
        da1, dz = net.backward(acts, label)
        assert_close(self, list(dz[1]), [-0.5, 0.5])
        dh1 = [m.dot(row, dz[1]) for row in net.weights[1]]
        assert_close(self, dh1, [-0.5, -0.5])
        self.assertEqual(da1[0], [0])                      # the gate: only unit 1 passes
        assert_close(self, da1[1], [-0.5])
        gradients = m.analytic_gradients(net, image, label, kink=0.0)
        dw2 = [[0.0] * 2 for _ in range(2)]
        for row, k, g in gradients["W2"]:
            dw2[net.weights[1].index(row)][k] = g
        assert_close(self, dw2, [[-0.5, 0.5], [0.0, 0.0]])
        dw1 = {(net.weights[0].index(row), j): g for row, j, g in gradients["W1"]}
        self.assertAlmostEqual(dw1[(0, 0)], -0.5)
        self.assertAlmostEqual(dw1[(2, 0)], -0.1)
        self.assertEqual(dw1[(0, 1)], 0.0)

    def test_one_sgd_step_moves_each_weight_by_the_rate_times_its_gradient(self):
        net, image, label = worked_example()
        net.learn(net.forward(image), label, 0.1)
        assert_close(self, net.weights[0], [[0.85, -0.5], [1.0, 1.0], [1.01, 0.5]])
        assert_close(self, net.biases[0], [0.05, 0.1])
        assert_close(self, net.weights[1], [[0.55, -0.55], [1.0, 0.0]])
        assert_close(self, net.biases[1], [0.05, 0.95])


class GradientTests(unittest.TestCase):
    def check(self, sizes, seed, samples=(0, 1, 2), per_tensor=10 ** 6):
        train, _ = mnist()
        rng = random.Random(seed)
        network = m.NeuralNetwork(sizes, seed=seed)
        for k in samples:
            image, label = train[k]
            report = m.gradient_check(network, image, label, rng, per_tensor=per_tensor)
            self.assertEqual(sorted(report), sorted(
                ["W%d" % l for l in range(1, len(sizes))] + ["b%d" % l for l in range(1, len(sizes))]))
            for name, (error, count) in report.items():
                self.assertGreater(count, 0, name)
                self.assertLess(error, 1e-6, "%s on image %d" % (name, k))

    def test_every_gradient_of_a_small_network_matches_finite_differences(self):
        self.check([784, 6, 10], seed=5)

    def test_every_gradient_of_a_two_hidden_layer_network_matches_finite_differences(self):
        self.check([784, 8, 6, 10], seed=4)

    def test_gradients_of_three_hidden_layers_match_finite_differences(self):
        self.check([784, 32, 16, 12, 10], seed=3, samples=(4,), per_tensor=80)

    def test_gradients_of_the_full_network_match_finite_differences(self):
        self.check([784, 128, 10], seed=6, samples=(7,), per_tensor=60)

    def test_gradient_check_notices_a_wrong_gradient(self):
        train, _ = mnist()
        rng = random.Random(7)

        class Broken(m.NeuralNetwork):
            def backward(self, acts, label):
                deltas = super().backward(acts, label)
                indices, values = deltas[-1]
                deltas[-1] = (indices, [2 * g for g in values])     # a classic slip
                return deltas
        broken = Broken([784, 6, 10], seed=7)
        report = m.gradient_check(broken, *train[0], rng)
        self.assertGreater(report["b2"][0], 0.1)


class ForwardTests(unittest.TestCase):
    def test_sparse_forward_equals_the_dense_matmul_forward_at_any_depth(self):
        train, _ = mnist()
        for sizes in ([784, 128, 10], [784, 64, 32, 10]):
            network = m.NeuralNetwork(sizes, seed=1)
            for k in range(3):
                image = train[k][0]
                assert_close(self, network.forward(image).p, dense_forward(network, image), 13)

    def test_an_untrained_network_is_unsure_so_its_loss_is_near_ln_10(self):
        train, _ = mnist()
        network = m.NeuralNetwork(seed=2)
        losses = [m.cross_entropy(network.forward(image).p, label) for image, label in train[:200]]
        self.assertAlmostEqual(sum(losses) / len(losses), math.log(10), delta=0.35)

    def test_he_initialisation_has_variance_two_over_fan_in(self):
        network = m.NeuralNetwork([784, 128, 64, 10], seed=3)
        for w, fan_in in zip(network.weights, (784, 128, 64)):
            weights = [v for row in w for v in row]
            variance = sum(v * v for v in weights) / len(weights)
            self.assertAlmostEqual(variance, 2 / fan_in, delta=0.1 * 2 / fan_in)
        self.assertEqual(network.biases[0], [0.0] * 128)

    def test_the_default_network_is_784_128_10(self):
        network = m.NeuralNetwork()
        self.assertEqual(network.sizes, [784, 128, 10])
        self.assertEqual([(len(w), len(w[0])) for w in network.weights], [(784, 128), (128, 10)])

    def test_the_same_seed_gives_the_same_weights(self):
        a, b = m.NeuralNetwork(seed=9), m.NeuralNetwork(seed=9)
        self.assertEqual(a.weights, b.weights)
        self.assertNotEqual(a.weights, m.NeuralNetwork(seed=10).weights)

    def test_sizes_that_cannot_make_a_network_are_a_clear_error(self):
        for sizes in ([784], [784, 0, 10], [784, 12.5, 10], "784-128-10"):
            with self.assertRaises(m.MnistError) as caught:
                m.NeuralNetwork(sizes)
            self.assertIn("sizes", str(caught.exception))

    def test_predict_reads_bytes_a_list_or_28_rows(self):
        _, test = mnist()
        network = m.NeuralNetwork(seed=1)
        image = test[0][0]
        p = network.predict(image)
        self.assertEqual(len(p), 10)
        self.assertAlmostEqual(sum(p), 1.0)
        self.assertEqual(network.predict(list(image)), p)
        self.assertEqual(network.predict([list(image[r * 28:(r + 1) * 28]) for r in range(28)]), p)

    def test_predict_refuses_what_is_not_a_28x28_image(self):
        network = m.NeuralNetwork(seed=1)
        for bad in ([0] * 783, [0] * 783 + [256], [0] * 783 + [-1], [[0] * 28] * 27, ["a"] * 784):
            with self.assertRaises(m.MnistError) as caught:
                network.predict(bad)
            self.assertIn("784 values 0..255", str(caught.exception))


class LearningTests(unittest.TestCase):
    def test_a_training_step_lowers_the_loss_on_that_image(self):
        train, _ = mnist()
        network = m.NeuralNetwork(seed=4)
        image, label = train[0]
        before = m.cross_entropy(network.forward(image).p, label)
        network.learn(network.forward(image), label, 0.05)
        self.assertLess(m.cross_entropy(network.forward(image).p, label), before)

    def test_it_learns_twenty_images_by_heart_with_either_engine_at_depth_1_and_2(self):
        train, _ = mnist()
        samples = list(train[:20])
        for sizes in ([784, 128, 10], [784, 64, 32, 10]):
            for engine in ("lists", "packed"):
                network = m.make_engine(m.NeuralNetwork(sizes, seed=8), engine)
                for _ in range(30):
                    for image, label in samples:
                        network.learn(network.forward(image), label, 0.05)
                right = sum(m.argmax(network.forward(s).p) == y for s, y in samples)
                self.assertEqual(right, 20, (sizes, engine))


    def test_pixels_scaled_to_0_1_are_refused_saying_to_multiply_by_255(self):
        _, test = mnist()
        scaled = [v / 255.0 for v in test[0][0]]
        for engine in ("lists", "packed"):
            with self.assertRaises(m.MnistError) as caught:
                m.make_engine(m.NeuralNetwork(seed=1), engine).predict(scaled)
            self.assertIn("multiply them by 255", str(caught.exception))
        self.assertEqual(len(m.NeuralNetwork(seed=1).predict(bytes(784))), 10)   # blank is fine

    def test_a_label_outside_0_to_9_is_a_clear_error_before_training(self):
        _, test = mnist()
        for label in (12, -1, 2.0, "3"):
            with self.assertRaises(m.MnistError) as caught:
                m.train_until_mastery(m.NeuralNetwork([784, 8, 10]), [(test[0][0], label)])
            self.assertIn("0..9", str(caught.exception))


class PackedEngineTests(unittest.TestCase):
    def test_float_pixels_are_read_as_the_whole_numbers_they_round_to(self):
        train, test = mnist()
        network = m.NeuralNetwork(seed=1)
        packed = m.make_engine(network, "packed")
        image = test[0][0]
        floats = [v + 0.3 if 0 < v < 255 else float(v) for v in image]
        self.assertEqual(packed.predict(floats), packed.predict(image))
        for a, b in zip(packed.predict(floats), network.predict(floats)):
            self.assertAlmostEqual(a, b, delta=1e-3)          # (the lists engine keeps the .3)
        images = [([float(v) for v in image], label) for image, label in train[:20]]
        trained = m.train_until_mastery(m.make_engine(network, "packed"), images, epochs=1)
        same = m.train_until_mastery(m.make_engine(network, "packed"), train[:20], epochs=1)
        self.assertEqual(m.as_network(trained).weights, m.as_network(same).weights)

    def test_packing_round_trips_the_weights_exactly_on_the_fixed_point_grid(self):
        network = m.NeuralNetwork(seed=1)
        back = m.PackedNetwork(network).to_network()
        for row_a, row_b in zip(network.weights[0], back.weights[0]):
            for a, b in zip(row_a, row_b):
                self.assertLessEqual(abs(a - b), 0.5 / m.SCALE)
        self.assertEqual(m.PackedNetwork(back).to_network().weights, back.weights)
        self.assertEqual(back.weights[1], network.weights[1])

    def test_pack_and_unpack_lanes_are_inverse(self):
        values = [0, 1, 2 ** 64 - 1, 12345, 2 ** 63]
        self.assertEqual(list(m.unpack_lanes(m.pack_lanes(values), 5)), values)

    def test_inked_pixels_equals_sparse_pixels_times_255(self):
        train, _ = mnist()
        for k in range(5):
            image = train[k][0]
            indices, values = m.sparse_pixels(image)
            fast_indices, pixels = m.inked_pixels(image)
            self.assertEqual(fast_indices, indices)
            self.assertEqual([v / 255.0 for v in pixels], values)

    def check_engines_agree(self, sizes, seed):
        train, test = mnist()
        start = m.NeuralNetwork(sizes, seed=seed)
        lists, packed = m.make_engine(start, "lists"), m.make_engine(start, "packed")
        for k in range(400):
            image, label = train[k]
            a, b = lists.forward(image), packed.forward(image)
            for x, y in zip(a.p, b.p):
                self.assertAlmostEqual(x, y, delta=1e-7)
            lists.learn(a, label, 0.05)
            packed.learn(b, label, 0.05)
        # The packed engine rounds each step of W1 to 2**-40 (~1e-12); over 400
        # steps the two trajectories drift apart by ~1e-8 (measured), far below
        # any weight that matters. Beyond 1e-7 something is wrong.
        result = packed.to_network()
        for l in range(len(sizes) - 1):
            worst = max(abs(x - y) for ra, rb in zip(lists.weights[l], result.weights[l])
                        for x, y in zip(ra, rb))
            self.assertLess(worst, 1e-7, "W%d" % (l + 1))
            worst = max(abs(x - y) for x, y in zip(lists.biases[l], result.biases[l]))
            self.assertLess(worst, 1e-7, "b%d" % (l + 1))
        guesses = [(m.argmax(lists.forward(image).p), m.argmax(packed.forward(image).p))
                   for image, _ in test[:300]]
        self.assertTrue(all(a == b for a, b in guesses))

    def test_packed_and_reference_engines_train_to_the_same_network(self):
        self.check_engines_agree([784, 128, 10], seed=11)

    def test_they_agree_with_two_hidden_layers_too(self):
        self.check_engines_agree([784, 64, 32, 10], seed=12)

    def test_packed_engine_refuses_to_let_weights_leave_its_range(self):
        train, _ = mnist()
        packed = m.PackedNetwork(m.NeuralNetwork(seed=1))
        with self.assertRaises(m.MnistError) as caught:
            for image, label in train[:50]:
                packed.learn(packed.forward(image), label, 1e4)
        self.assertIn("diverged", str(caught.exception))
        self.assertLessEqual(packed.max_abs_w1(), m.WEIGHT_LIMIT)

    def test_packed_range_bound_stays_a_true_bound(self):
        train, _ = mnist()
        packed = m.PackedNetwork(m.NeuralNetwork(seed=2))
        for image, label in train[:300]:
            packed.learn(packed.forward(image), label, 0.05)
        self.assertGreaterEqual(packed.weight_bound, packed.max_abs_w1())

    def test_auto_engine_is_packed_on_cpython_and_lists_on_pypy(self):
        engine = m.make_engine(m.NeuralNetwork(seed=1), "auto")
        expected = m.NeuralNetwork if m.ON_PYPY else m.PackedNetwork
        self.assertIsInstance(engine, expected)

    def test_unknown_engine_is_a_clear_error(self):
        with self.assertRaises(m.MnistError):
            m.make_engine(m.NeuralNetwork(seed=1), "turbo")


if __name__ == "__main__":
    unittest.main()
