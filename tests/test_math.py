"""The math kernels, hand-rolled exp/log, activations and loss."""

import math
import random
import unittest

from helpers import mnist_pure as m


def ulps(a, b):
    """Distance between two floats in units of the last place of b."""
    if a == b:
        return 0.0
    return abs(a - b) / math.ulp(b)


class KernelTests(unittest.TestCase):
    def test_dot_is_the_sum_of_products(self):
        self.assertEqual(m.dot([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]), 32.0)
        self.assertEqual(m.dot([], []), 0.0)

    def test_matmul_multiplies_rows_by_columns(self):
        self.assertEqual(m.matmul([[1, 2], [3, 4]], [[5, 6], [7, 8]]), [[19, 22], [43, 50]])
        self.assertEqual(m.matmul([[1, 2]], [[3], [4]]), [[11]])

    def test_sparse_vecmat_equals_the_dense_product(self):
        rng = random.Random(3)
        w = [[rng.uniform(-1, 1) for _ in range(7)] for _ in range(12)]
        dense_x = [0.0] * 12
        for i in (1, 5, 6, 11):
            dense_x[i] = rng.uniform(0, 1)
        sparse = m.sparse_vecmat(m.nonzero(dense_x), w)
        reference = m.matmul([dense_x], w)[0]
        for a, b in zip(sparse, reference):
            self.assertAlmostEqual(a, b, places=14)

    def test_subtract_outer_changes_only_the_listed_rows_and_columns(self):
        w = [[1.0] * 4 for _ in range(3)]
        m.subtract_outer(w, ([0, 2], [1.0, 2.0]), ([1, 3], [0.5, 1.0]), 0.1)
        self.assertEqual(w[1], [1.0] * 4)
        self.assertEqual(w[0], [1.0, 1.0 - 0.05, 1.0, 1.0 - 0.1])
        self.assertEqual(w[2], [1.0, 1.0 - 0.1, 1.0, 1.0 - 0.2])

    def test_nonzero_and_dense_are_inverse_views(self):
        self.assertEqual(m.nonzero([0.0, 2.0, 0.0, -1.0]), ([1, 3], [2.0, -1.0]))
        indices, values = m.dense([4.0, 5.0])
        self.assertEqual((list(indices), values), ([0, 1], [4.0, 5.0]))

    def test_argmax_takes_the_first_of_ties(self):
        self.assertEqual(m.argmax([0.1, 0.7, 0.7, 0.2]), 1)
        self.assertEqual(m.argmax([5.0]), 0)


class ExpLogTests(unittest.TestCase):
    def test_exp_is_within_one_ulp_of_math_exp_over_every_float_it_can_return(self):
        rng = random.Random(1)
        points = ([rng.uniform(-745.1, 709.78) for _ in range(20000)] +
                  [rng.uniform(-1, 1) for _ in range(5000)] +
                  [rng.uniform(-1e-8, 1e-8) for _ in range(1000)] +
                  [0.0, -0.0, 1.0, -1.0, 709.78, -708.39, -700.0])
        worst = max(ulps(m.exp(x), math.exp(x)) for x in points if math.exp(x) >= 2.2250738585072014e-308)
        self.assertLessEqual(worst, 1.0)

    def test_exp_of_subnormal_results_is_within_one_subnormal_step(self):
        rng = random.Random(2)
        for x in [rng.uniform(-745.1, -708.4) for _ in range(2000)]:
            self.assertLessEqual(abs(m.exp(x) - math.exp(x)), 5e-324)

    def test_exp_of_large_negatives_underflows_to_zero(self):
        for x in (-745.2, -746.0, -1000.0, -1e308, float("-inf")):
            self.assertEqual(m.exp(x), 0.0)

    def test_exp_of_too_large_arguments_overflows_like_math(self):
        with self.assertRaises(OverflowError):
            m.exp(710.0)
        with self.assertRaises(OverflowError):
            math.exp(710.0)

    def test_exp_keeps_nan(self):
        self.assertTrue(math.isnan(m.exp(float("nan"))))

    def test_log_is_within_one_ulp_of_math_log_over_every_positive_float(self):
        rng = random.Random(3)
        points = ([math.exp(rng.uniform(-744, 709)) for _ in range(20000)] +
                  [rng.uniform(0.5, 2.0) for _ in range(10000)] +
                  [rng.uniform(1e-12, 1.0) for _ in range(2000)] +
                  [5e-324, 1e-320, 2.2250738585072014e-308, 1.7976931348623157e308, 0.5, 2.0, 10.0])
        worst = max(ulps(m.log(y), math.log(y)) for y in points if math.log(y) != 0.0)
        self.assertLessEqual(worst, 1.0)
        self.assertEqual(m.log(1.0), 0.0)

    def test_log_of_zero_is_minus_infinity_and_of_negatives_an_error(self):
        self.assertEqual(m.log(0.0), float("-inf"))
        with self.assertRaises(ValueError):
            m.log(-1.0)

    def test_ln2_constants_add_up_to_ln2(self):
        self.assertEqual(m.LN2, math.log(2.0))


class ActivationTests(unittest.TestCase):
    def test_relu_zeroes_negatives_only(self):
        self.assertEqual(m.relu([-2.0, 0.0, 3.5]), [0.0, 0.0, 3.5])

    def test_softmax_of_known_values(self):
        p = m.softmax([0.0, math.log(2.0), math.log(5.0)])     # e**z = 1, 2, 5
        for got, want in zip(p, [0.125, 0.25, 0.625]):
            self.assertAlmostEqual(got, want, places=15)

    def test_softmax_sums_to_one_and_survives_huge_logits(self):
        p = m.softmax([1000.0, 1001.0, -1000.0])
        self.assertAlmostEqual(sum(p), 1.0, places=15)
        self.assertAlmostEqual(p[1] / p[0], math.e, places=12)
        self.assertEqual(p[2], 0.0)

    def test_softmax_is_unchanged_by_adding_a_constant(self):
        a, b = m.softmax([1.0, 2.0, 3.0]), m.softmax([101.0, 102.0, 103.0])
        for x, y in zip(a, b):
            self.assertAlmostEqual(x, y, places=14)

    def test_cross_entropy_of_known_values(self):
        self.assertAlmostEqual(m.cross_entropy([0.25, 0.75], 1), -math.log(0.75), places=15)
        self.assertEqual(m.cross_entropy([0.0, 1.0], 1), 0.0)

    def test_cross_entropy_of_a_zero_probability_is_clamped_not_infinite(self):
        loss = m.cross_entropy([1.0, 0.0], 1)
        self.assertAlmostEqual(loss, -math.log(m.LOG_FLOOR), places=12)


if __name__ == "__main__":
    unittest.main()
