"""The network: its gradients, its learning, and the packed engine's agreement
with the reference engine."""

import math
import random
import unittest

from helpers import mnist, mnist_pure as m


def dense_forward(network, sample):
    """The forward pass written densely with matmul: an independent reference."""
    indices, pixels = sample
    x = [0.0] * m.N_INPUT
    for i, v in zip(indices, pixels):
        x[i] = v / 255.0
    h = m.relu(m.add(m.matmul([x], network.w1)[0], network.b1))
    z = m.add(m.matmul([h], network.w2)[0], network.b2)
    return m.softmax(z)


class GradientTests(unittest.TestCase):
    def test_every_gradient_of_a_small_network_matches_finite_differences(self):
        train, _ = mnist()
        rng = random.Random(5)
        network = m.Network.random(rng, n_hidden=6)
        for k in (0, 1, 2):
            report = m.gradient_check(network, train.sample(k), train.labels[k], rng,
                                      per_tensor=10 ** 6)     # all of them
            self.assertEqual(report["W2"][1], 6 * 10)
            for name, (error, count) in report.items():
                self.assertGreater(count, 0, name)
                self.assertLess(error, 1e-6, "%s on sample %d" % (name, k))

    def test_gradients_of_the_full_network_match_finite_differences(self):
        train, _ = mnist()
        rng = random.Random(6)
        network = m.Network.random(rng)
        report = m.gradient_check(network, train.sample(7), train.labels[7], rng)
        for name, (error, _) in report.items():
            self.assertLess(error, 1e-6, name)

    def test_gradient_check_notices_a_wrong_gradient(self):
        train, _ = mnist()
        rng = random.Random(7)
        network = m.Network.random(rng, n_hidden=6)

        class Broken(m.Network):
            def backward(self, acts, label):
                dz, dh = super().backward(acts, label)
                return [2 * g for g in dz], dh            # a classic slip
        broken = Broken(network.w1, network.b1, network.w2, network.b2)
        report = m.gradient_check(broken, train.sample(0), train.labels[0], rng)
        self.assertGreater(report["b2"][0], 0.1)


class ForwardTests(unittest.TestCase):
    def test_sparse_forward_equals_the_dense_matmul_forward(self):
        train, _ = mnist()
        network = m.Network.random(random.Random(1))
        for k in range(3):
            sparse = network.forward(train.sample(k)).p
            for a, b in zip(sparse, dense_forward(network, train.sample(k))):
                self.assertAlmostEqual(a, b, places=13)

    def test_an_untrained_network_is_unsure_so_its_loss_is_near_ln_10(self):
        train, _ = mnist()
        network = m.Network.random(random.Random(2))
        losses = [m.cross_entropy(network.forward(train.sample(k)).p, train.labels[k])
                  for k in range(200)]
        self.assertAlmostEqual(sum(losses) / len(losses), math.log(10), delta=0.35)

    def test_he_initialisation_has_variance_two_over_fan_in(self):
        network = m.Network.random(random.Random(3))
        weights = [w for row in network.w1 for w in row]
        variance = sum(w * w for w in weights) / len(weights)
        self.assertAlmostEqual(variance, 2 / 784, delta=0.05 * 2 / 784)
        self.assertEqual(network.b1, [0.0] * 128)

    def test_the_same_seed_gives_the_same_weights(self):
        a = m.Network.random(random.Random(9))
        b = m.Network.random(random.Random(9))
        self.assertEqual(a.w1, b.w1)
        self.assertNotEqual(a.w1, m.Network.random(random.Random(10)).w1)


class LearningTests(unittest.TestCase):
    def test_a_training_step_lowers_the_loss_on_that_image(self):
        train, _ = mnist()
        network = m.Network.random(random.Random(4))
        sample, label = train.sample(0), train.labels[0]
        before = m.cross_entropy(network.forward(sample).p, label)
        network.learn(network.forward(sample), label, 0.05)
        self.assertLess(m.cross_entropy(network.forward(sample).p, label), before)

    def test_it_learns_twenty_images_by_heart(self):
        train, _ = mnist()
        for engine in ("lists", "packed"):
            network = m.make_engine(m.Network.random(random.Random(8)), engine)
            samples = [(train.sample(k), train.labels[k]) for k in range(20)]
            for _ in range(30):
                for sample, label in samples:
                    network.learn(network.forward(sample), label, 0.05)
            right = sum(m.argmax(network.forward(s).p) == y for s, y in samples)
            self.assertEqual(right, 20, engine)


class PackedEngineTests(unittest.TestCase):
    def test_packing_round_trips_the_weights_exactly_on_the_fixed_point_grid(self):
        network = m.Network.random(random.Random(1))
        packed = m.PackedNetwork(network)
        back = packed.to_network()
        for row_a, row_b in zip(network.w1, back.w1):
            for a, b in zip(row_a, row_b):
                self.assertLessEqual(abs(a - b), 0.5 / m.SCALE)
        again = m.PackedNetwork(back).to_network()
        self.assertEqual(again.w1, back.w1)

    def test_pack_and_unpack_lanes_are_inverse(self):
        values = [0, 1, 2 ** 64 - 1, 12345, 2 ** 63]
        self.assertEqual(list(m.unpack_lanes(m.pack_lanes(values), 5)), values)

    def test_packed_and_reference_engines_train_to_the_same_network(self):
        train, test = mnist()
        start = m.Network.random(random.Random(11))
        lists, packed = m.make_engine(start, "lists"), m.make_engine(start, "packed")
        for k in range(400):
            sample, label = train.sample(k), train.labels[k]
            a, b = lists.forward(sample), packed.forward(sample)
            for x, y in zip(a.p, b.p):
                self.assertAlmostEqual(x, y, delta=1e-7)
            lists.learn(a, label, 0.05)
            packed.learn(b, label, 0.05)
        # The packed engine rounds each step to 2**-40 (~1e-12); over 400 steps
        # the two trajectories drift apart by ~1e-8 (measured), far below any
        # weight that matters. Beyond 1e-7 something is wrong.
        result = packed.to_network()
        for name in ("w1", "w2"):
            worst = max(abs(x - y) for ra, rb in zip(getattr(lists, name), getattr(result, name))
                        for x, y in zip(ra, rb))
            self.assertLess(worst, 1e-7, name)
        for name in ("b1", "b2"):
            worst = max(abs(x - y) for x, y in zip(getattr(lists, name), getattr(result, name)))
            self.assertLess(worst, 1e-7, name)
        guesses = [(m.argmax(lists.forward(test.sample(k)).p), m.argmax(packed.forward(test.sample(k)).p))
                   for k in range(300)]
        self.assertTrue(all(a == b for a, b in guesses))

    def test_packed_engine_refuses_to_let_weights_leave_its_range(self):
        train, _ = mnist()
        packed = m.PackedNetwork(m.Network.random(random.Random(1)))
        with self.assertRaises(m.MnistError) as caught:
            for k in range(50):
                sample = train.sample(k)
                packed.learn(packed.forward(sample), train.labels[k], 1e4)
        self.assertIn("diverged", str(caught.exception))
        self.assertLessEqual(packed.max_abs_w1(), m.WEIGHT_LIMIT)

    def test_packed_range_bound_stays_a_true_bound(self):
        train, _ = mnist()
        packed = m.PackedNetwork(m.Network.random(random.Random(2)))
        for k in range(300):
            packed.learn(packed.forward(train.sample(k)), train.labels[k], 0.05)
        self.assertGreaterEqual(packed.weight_bound, packed.max_abs_w1())

    def test_auto_engine_is_packed_on_cpython_and_lists_on_pypy(self):
        engine = m.make_engine(m.Network.random(random.Random(1)), "auto")
        expected = m.Network if m.sys.implementation.name == "pypy" else m.PackedNetwork
        self.assertIsInstance(engine, expected)

    def test_unknown_engine_is_a_clear_error(self):
        with self.assertRaises(m.MnistError):
            m.make_engine(m.Network.random(random.Random(1)), "turbo")


if __name__ == "__main__":
    unittest.main()
