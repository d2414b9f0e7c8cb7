"""mnist_pure: a neural network that learns to read handwritten digits, in pure Python.

    python mnist_pure.py          train on 1,000 MNIST images, test on all 10,000
    python mnist_pure.py --help   all the rest: more data, saving, your own digit

Nothing but Python's standard library: every step of the arithmetic (dot
products, exp and log, softmax, the gradients) is written out here.

How to read this file: top to bottom; no name is used before it is defined
(section 6, the network, is the heart, if you would rather start there). Part I
is the lesson, and it stands alone: cut the file at the line "# Part II" and
what is left is a module whose load_mnist, NeuralNetwork, train_until_mastery
and test load MNIST, train a network and test it.

  Part I    the lesson           1. the recipe   2. math kernels   3. exp and log
                                 4. activations and loss   5. data
                                 6. the network: each layer's forward and backward  <- start here
                                 7. training until mastery   8. testing
  Part II   more ways to learn   mini-batches, momentum, Adam, dropout, distortions
  Part III  the fast engines     a pixel's weights in one integer; several processes
  Part IV   looking inside       one step traced, every gradient checked
  Part V    the tool             reports, pictures, model files, your own digit,
                                 a web page to draw on, the command line

Notation (one image at a time; shapes in brackets, for the default 784-128-10)
    x      [784]        the pixels row by row, 0 (paper) .. 1 (ink)
    W1     [784][128]   W1[i][j]: the weight from pixel i to hidden unit j
    b1     [128]        the hidden units' biases
    a1     [128]        a1 = x @ W1 + b1, what each hidden unit receives
    h1     [128]        h1 = relu(a1) = max(0, a1), the hidden layer
    W2     [128][10]    W2[j][k]: the weight from hidden unit j to digit k
    b2     [10]
    z      [10]         z = h1 @ W2 + b2, the logits: one score per digit
    p      [10]         p = softmax(z), p[k] = e**z[k] / sum_j e**z[j]: how sure
                        the network is of k (ten numbers 0..1 that add up to 1)
    y, loss             the true label 0..9, and loss = -ln p[y] (cross-entropy)
    dX                  d(loss)/d(X), the gradient: the same shape as X
A deeper network, sizes [784, 256, 128, 10], repeats the hidden step:
h1 = relu(x @ W1 + b1), h2 = relu(h1 @ W2 + b2), z = h2 @ W3 + b3. W is stored
the way x @ W reads it, a row per input (PyTorch's files store W transposed).

Words: a *weight* W[i][j] scales what input i sends to unit j. A *gradient*
says how the loss changes when a weight changes; *backpropagation* works them
out with the chain rule, from the loss back to the first layer. *SGD*
(stochastic gradient descent) moves every weight a small step against its
gradient after each image; the *learning rate* is the size of that step. An
*epoch* is one pass over the training images. onehot(y) is ten zeros with a 1
at y. A *sparse* vector is a pair (indices, values) listing only some entries,
usually the nonzero ones. An image is *mastered* when the network answers it
right with p[y] >= 0.99: it then gets no update (section 7). *CPython* is the
usual Python; *PyPy* is another, whose just-in-time compiler makes plain loops
fast. This project began as a 154-line script ("the original script"), which
read 10% of the test digits right.
"""

# =============================================================================
# Part I: the lesson
# =============================================================================

import dataclasses
import gzip
import math
import os
import random
import struct
import zlib

# =============================================================================
# 1. The recipe
# =============================================================================
# Section 7 explains the schedule and mastery.

HERE = os.path.dirname(os.path.abspath(__file__))     # paths are relative to this file
DATA_DIR = os.path.join(HERE, "data")                 # MNIST's four .gz files

IMAGE_SIDE = 28
N_PIXELS = IMAGE_SIDE * IMAGE_SIDE   # 784 inputs
N_DIGITS = 10                        # 10 outputs, one per digit 0..9
DEFAULT_SIZES = (N_PIXELS, 128, N_DIGITS)

DEFAULT_EPOCHS = 10          # passes over the training images
DEFAULT_LR_DECAY = 0.7       # the learning rate is multiplied by this ...
DEFAULT_DECAY_EVERY = 5      # ... every this many epochs
DEFAULT_MASTERY = 0.99       # no update for an image answered right with p[y] >= this
DEFAULT_SEED = 1             # the same seed repeats a run exactly


class MnistError(Exception):
    """A problem the user can fix (a missing file, a bad argument ...)."""


# Each choice of the recipe: (int or float, lowest, highest value that makes
# sense; a learning rate of 0, say, would train nothing).
RECIPE_LIMITS = {"epochs": (int, 1, 10 ** 9), "learning_rate": (float, 1e-12, 1e6),
                 "lr_decay": (float, 1e-12, 1.0), "decay_every": (int, 1, 10 ** 9),
                 "mastery": (float, 0.0, 1.0), "seed": (int, 0, 2 ** 63)}


@dataclasses.dataclass
class Recipe:
    """How to train: every choice of section 7 in one object, each checked:
    MnistError names one that cannot train (a learning rate of 0, say, would
    train nothing, silently)."""
    epochs: int = DEFAULT_EPOCHS
    learning_rate: float = 0.03       # up to ~14,000 images (default_learning_rate)
    lr_decay: float = DEFAULT_LR_DECAY
    decay_every: int = DEFAULT_DECAY_EVERY
    mastery: float = DEFAULT_MASTERY  # 0: mastery off, every image is learned
    seed: int = DEFAULT_SEED

    def __post_init__(self):
        for name, (kind, low, high) in RECIPE_LIMITS.items():
            value = getattr(self, name)
            number = isinstance(value, int if kind is int else (int, float))
            if not (number and not isinstance(value, bool) and low <= value <= high):
                raise MnistError("cannot train with %s = %r" % (name, value))


# =============================================================================
# 2. Math kernels: vectors and matrices as plain lists
# =============================================================================
# A vector is a list of floats; a matrix is a list of rows. A *sparse* vector
# is a pair (indices, values) listing only its nonzero entries: an MNIST image
# has ~150 inked pixels out of 784, and after ReLU about half of the hidden
# units are 0, so most of what a dense kernel would compute is x * 0.

def dot(u, v):
    """u . v = sum_i u[i] * v[i].   (n,), (n,) -> float.  dot([1, 2], [3, 4]) == 11"""
    total = 0.0
    for a, b in zip(u, v):
        total += a * b
    return total


def matmul(a, b):
    """a @ b.   (n, m), (m, k) -> (n, k).  matmul([[1, 2]], [[3], [4]]) == [[11]]

    The dense textbook product: the reference the sparse kernels must equal."""
    columns = list(zip(*b))
    return [[dot(row, column) for column in columns] for row in a]


def sparse_vecmat(x, w):
    """x @ w for a sparse vector x = (indices, values).   (n,), (n, k) -> (k,)

    x @ w = sum_i x[i] * w[i], a weighted sum of the rows of w: rows whose
    x[i] is zero add nothing, so only the listed rows are read."""
    indices, values = x
    out = [0.0] * len(w[0])
    for i, xi in zip(indices, values):
        row = w[i]
        for k in range(len(out)):          # (index loops: PyPy makes them fastest)
            out[k] += xi * row[k]
    return out


def sparse_dot(u, v):
    """u . v for a dense u and a sparse v = (indices, values)."""
    total = 0.0
    for k, vk in zip(*v):
        total += u[k] * vk
    return total


def subtract_outer(w, u, v, scale):
    """w -= scale * outer(u, v), in place, for sparse u and v.   w: (n, k)

    outer(u, v)[i][k] = u[i] * v[k] is zero unless both are nonzero, so only
    the rows of u's indices and the columns of v's indices change."""
    v_indices, v_values = v
    for i, ui in zip(*u):
        row, step = w[i], scale * ui
        for t in range(len(v_indices)):
            row[v_indices[t]] -= step * v_values[t]


def add(u, v):
    """u + v, element by element.   (n,), (n,) -> (n,)"""
    return [a + b for a, b in zip(u, v)]


def nonzero(v):
    """The sparse form (indices, values) of a dense vector v."""
    indices = [i for i, a in enumerate(v) if a != 0.0]
    return indices, [v[i] for i in indices]


def dense(v):
    """A dense vector seen as a sparse one whose every entry is listed."""
    return range(len(v)), v


def argmax(v):
    """The index of the largest entry (the first one, on ties)."""
    return max(range(len(v)), key=v.__getitem__)


# =============================================================================
# 3. exp and log, by hand
# =============================================================================
# softmax needs e**z and the loss needs ln p, written here so that nothing in
# the arithmetic is a black box. Each reduces its argument to a small range
# where a short series converges fast, then undoes the reduction exactly (by a
# power of two). A float carries 53 significant bits, so its relative precision
# is 2**-53, "one unit in the last place": both stay within that of math.exp and
# math.log (tests check it); math only takes floats apart (frexp: x = m * 2**e)
# and puts them together (ldexp), without rounding.
# ln 2 split in two, as Cody and Waite's classic exp does: LN2_HI has trailing
# zero bits, so k * LN2_HI is exact for the k we meet, and LN2_LO carries the
# rest of ln 2; so x - k ln2 loses no digits to rounding.
LN2_HI = 6.93147180369123816490e-01
LN2_LO = 1.90821492927058770002e-10
LN2 = LN2_HI + LN2_LO                 # 0.6931471805599453
EXP_MAX = 709.782712893384            # exp(x) > largest float beyond this
EXP_MIN = -745.1332191019412          # exp(x) < smallest float / 2 below this


def exp(x):
    """e**x.  x = k ln2 + r with |r| <= ln2/2, so e**x = 2**k * e**r, and the
    Taylor series e**r = 1 + r + r**2/2! + ... needs 14 terms for full precision
    (the first term left out, r**14/14!, is below 2**-53 relative)."""
    if x != x:
        return x                       # nan stays nan
    if x > EXP_MAX:
        raise OverflowError("exp(%r) is too large for a float" % x)
    if x < EXP_MIN:
        return 0.0                     # underflows cleanly, as math.exp does
    k = int(x / LN2 + (0.5 if x >= 0 else -0.5))      # nearest integer to x / ln2
    r = (x - k * LN2_HI) - k * LN2_LO
    # Horner's rule (a polynomial from the inside out, a multiply and an add
    # a term): 1 + r(1 + r/2(1 + r/3(1 + ... (1 + r/13)))).
    series = 1.0
    for n in range(13, 0, -1):
        series = 1.0 + series * r / n
    return math.ldexp(series, k)       # series * 2**k, exact (rounds below 2**-1022)


def log(x):
    """Natural log.  x = m * 2**e with sqrt(1/2) <= m < sqrt(2), so
    ln x = e ln2 + ln(1 + f) with f = m - 1 (exact). With s = f / (2 + f),
    |s| <= 0.172, 1 + f = (1 + s) / (1 - s), whose log is the series of
    2 atanh(s):
        ln(1 + f) = 2s + 2s**3/3 + 2s**5/5 + ...  =  f - s (f - R),
        R = s**2 (2/3 + 2s**2/5 + 2s**4/7 + ...)      (using 2s = f - s f).
    Written this way the big term f is exact and only a small correction is
    rounded; ten terms of R reach full precision (the first one left out,
    2 s**23 / 23, is below 2**-53 of 2s)."""
    if x != x or x == float("inf"):
        return x
    if x <= 0.0:
        if x == 0.0:
            return float("-inf")
        raise ValueError("log of a negative number: %r" % x)
    m, e = math.frexp(x)               # x = m * 2**e, 0.5 <= m < 1 (exact)
    if m < 0.7071067811865476:         # sqrt(1/2): keep m near 1
        m, e = m * 2.0, e - 1
    f = m - 1.0
    s = f / (2.0 + f)
    s2 = s * s
    series = 0.0
    for n in range(21, 1, -2):          # Horner, inside out: 2/21, 2/19 + s2 (2/21) ... 2/3
        series = 2.0 / n + s2 * series
    return e * LN2_HI + ((f - s * (f - s2 * series)) + e * LN2_LO)


# =============================================================================
# 4. Activations and loss
# =============================================================================

LOG_FLOOR = 1e-12   # p[y] is clamped here: a confident mistake costs -ln 1e-12 = 27.63


def relu(v):
    """max(0, v_i) for each entry: the hidden layers' non-linearity (without
    one, layers would collapse into a single linear map). Its slope is 1
    where v_i > 0 and 0 elsewhere, so in the backward pass a gradient passes
    through a unit only if it fired."""
    return [a if a > 0.0 else 0.0 for a in v]


def softmax(z):
    """p_k = e**z_k / sum_j e**z_j: logits to probabilities that sum to 1.

    Subtracting max(z) first leaves p unchanged (it cancels in the ratio) and
    keeps every exponent <= 0, so nothing overflows."""
    top = max(z)
    e = [exp(a - top) for a in z]
    total = sum(e)
    return [a / total for a in e]


def cross_entropy(p, label):
    """loss = -ln p[label]: 0 when the network is sure and right, large when it
    is sure and wrong. With softmax before it, its gradient with respect to the
    logits is simply p - onehot(label) (derived at output_delta, section 6)."""
    return -log(max(p[label], LOG_FLOOR))


# =============================================================================
# 5. Data: MNIST's gzip IDX files
# =============================================================================
# IDX (numbers big-endian: high byte first): a 4-byte "magic number" that
# says what the file holds, 0x0000 0803 for images (0x08:
# unsigned bytes, 3 sizes follow: count, 28, 28) and 0x0000 0801 for labels
# (1 size: count), each size 4 bytes, then the values, one byte each.

TRAIN_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
MNIST_URL = "https://yann.lecun.com/exdb/mnist/"
MAX_IDX_BYTES = 1 << 30      # refuse files that unpack to more than 1 GiB


def read_idx(path, magic):
    """(sizes, values) of a gzip IDX file; MnistError if it is not one."""
    n_sizes = magic & 0xFF
    try:
        with gzip.open(path, "rb") as stream:
            header = stream.read(4 + 4 * n_sizes)
            if len(header) < 4 + 4 * n_sizes:
                raise MnistError("%s: empty, or too short to be an IDX file" % path)
            if struct.unpack(">I", header[:4])[0] != magic:
                raise MnistError("%s: wrong magic number 0x%s (expected 0x%08X)"
                                 % (path, header[:4].hex().upper(), magic))
            sizes = struct.unpack(">%dI" % n_sizes, header[4:])
            count = math.prod(sizes)
            values = stream.read(min(count, MAX_IDX_BYTES) + 1)     # one more: any extra?
    except FileNotFoundError:
        raise MnistError("%s: file not found. MNIST's four .gz files are expected in %s "
                         "(from %s)" % (path, os.path.dirname(path) or ".", MNIST_URL))
    except EOFError:                       # what gzip raises for a file cut short
        raise MnistError("%s: truncated gzip file (it ends early)" % path)
    except (OSError, zlib.error) as e:     # not gzip, a bad checksum, junk after the end
        raise MnistError("%s: not a readable gzip file (%s)" % (path, e))
    if len(values) != count:
        held = len(values) if len(values) < count else "more"     # (it read one more)
        raise MnistError("%s: the header promises %s values, the file holds %s"
                         % (path, " x ".join(map(str, sizes)), held))
    return sizes, values


class Dataset:
    """Images of 28x28 bytes (0 = paper, 255 = ink) and their labels 0..9.

    data[k] is (image k, its label); data[:1000] the first 1,000, as a Dataset.
    The pixels stay in one `bytes` object: 60,000 images are 45 MiB (as Python
    floats they would take ~1.4 GiB)."""

    def __init__(self, images, labels):
        self.images, self.labels = bytes(images), bytes(labels)

    def __len__(self):
        return len(self.labels)

    def image(self, k):
        """The 784 pixel bytes of image k, row by row."""
        return self.images[k * N_PIXELS:(k + 1) * N_PIXELS]

    def __getitem__(self, k):
        if isinstance(k, slice):
            chosen = range(len(self))[k]
            return Dataset(b"".join(map(self.image, chosen)), bytes(self.labels[i] for i in chosen))
        if not -len(self) <= k < len(self):
            raise IndexError("image %d of %d" % (k, len(self)))
        k %= len(self)
        return self.image(k), self.labels[k]

    def __iter__(self):
        return (self[k] for k in range(len(self)))


def load_pair(data_dir, image_file, label_file):
    """One Dataset from an images file and its labels file."""
    if not os.path.isdir(data_dir):
        raise MnistError("data folder %s not found. It should hold MNIST's four .gz files "
                         "(from %s)" % (data_dir, MNIST_URL))
    image_path, label_path = os.path.join(data_dir, image_file), os.path.join(data_dir, label_file)
    (count, rows, columns), images = read_idx(image_path, 0x803)
    (n_labels,), labels = read_idx(label_path, 0x801)
    if (rows, columns) != (IMAGE_SIDE, IMAGE_SIDE) or n_labels != count:
        raise MnistError("%s holds %d images of %dx%d and %s %d labels; expected 28x28 "
                         "images, one label each" % (image_path, count, rows, columns,
                                                     label_path, n_labels))
    if labels and max(labels) >= N_DIGITS:
        raise MnistError("%s: a label is %d, outside 0..9" % (label_path, max(labels)))
    return Dataset(images, labels)


def load_mnist(data_dir=DATA_DIR):
    """(training set, test set): 60,000 and 10,000 images, from data_dir."""
    return load_pair(data_dir, *TRAIN_FILES), load_pair(data_dir, *TEST_FILES)


# =============================================================================
# 6. The network: layers of x @ W + b, ReLU between them, softmax at the end
# =============================================================================
# Forward, one image at a time (shapes for the default 784-128-10):
#     x    = pixels / 255                  [784]  ~150 nonzero
#     a1   = x @ W1 + b1                   [128]  W1 [784][128], b1 [128]
#     h1   = relu(a1)                      [128]  about half are 0
#     z    = h1 @ W2 + b2                  [10]   W2 [128][10],  b2 [10]
#     p    = softmax(z)                    [10]   p[k]: how sure it is of k
#     loss = -ln p[y]                             y: the true label
# Backward: the same lines in reverse order, each one the chain rule applied
# to the forward line it stands for. (The chain rule: if the loss depends on a
# through b, then d(loss)/da = d(loss)/db * db/da. So the gradient of a line's
# input is the gradient of its output times the line's own derivative.)
#     dz   = p - onehot(y)                 [10]   softmax and loss together
#     dW2  = outer(h1, dz),  db2 = dz             from z = h1 @ W2 + b2,
#     dh1  = W2 @ dz                       [128]  the same line, with respect to h1:
#                                                 dh1_j = sum_k W2[j][k] dz_k
#     da1  = dh1 where a1 > 0, else 0      [128]  from h1 = relu(a1)
#     dW1  = outer(x, da1),  db1 = da1            from a1 = x @ W1 + b1
# A deeper network repeats the middle lines once per hidden layer. Then SGD
# moves every parameter (each W and b) a small step downhill:  W -= learning_rate * dW.
#
# A worked example to check by hand: sizes [3, 2, 2], pixels (255, 0, 51),
# so x = (1, 0, 0.2), label y = 0,
#     W1 = [[0.8, -0.5],   b1 = [0, 0.1]     W2 = [[0.5, -0.5],   b2 = [0, 1]
#           [1.0,  1.0],                           [1.0,  0.0]]
#           [1.0,  0.5]]
#   forward   a1 = (0.8 + 0.2, -0.5 + 0.1 + 0.1) = (1, -0.3)
#             h1 = (1, 0)                      unit 2 did not fire
#             z  = (0.5 + 0, -0.5 + 1) = (0.5, 0.5),  so p = (0.5, 0.5)
#             loss = -ln 0.5 = 0.6931
#   backward  dz  = (0.5 - 1, 0.5) = (-0.5, 0.5)
#             dW2 = outer(h1, dz) = [[-0.5, 0.5], [0, 0]],   db2 = (-0.5, 0.5)
#             dh1 = W2 @ dz = (-0.25 - 0.25, -0.5 + 0) = (-0.5, -0.5)
#             da1 = (-0.5, 0)                  the gate: unit 2 passes nothing
#             (the code never computes dh1 for unit 2: h1 lists unit 1 only)
#             dW1 = outer(x, da1) = [[-0.5, 0], [0, 0], [-0.1, 0]],   db1 = (-0.5, 0)
# (tests/test_network.py builds this network and checks every number.)


def sparse_pixels(image):
    """x = pixels / 255 as a sparse vector: only the inked pixels, ~150 of 784.
    A blank pixel adds nothing to x @ W1, and the weights out of it get no
    gradient, so the network never needs to look at it."""
    indices = [i for i in range(len(image)) if image[i]]
    return indices, [image[i] / 255.0 for i in indices]


# One layer, a = x @ W + b: its forward pass, then its backward pass in two
# parts, given delta = d(loss)/da (the gradient with respect to its output):
# the gradient it hands down to its input, and the update of W and b.

def layer_forward(x, w, b):
    """a = x @ W + b, for a sparse input x.   x [n_in], W [n_in][n_out] -> a [n_out]"""
    return add(sparse_vecmat(x, w), b)


def input_delta(x, w, delta):
    """d(loss)/dx = W @ delta, at x's listed entries only.

    a_j = sum_i x_i W[i][j] + b_j, so x_i reaches every a_j through W[i][j], and
    d(loss)/d(x_i) = sum_j W[i][j] delta_j = W[i] . delta. When x is a hidden
    layer h = relu(a_prev), its listed entries are exactly the units that fired,
    so this is d(loss)/d(a_prev) too: ReLU's slope is 1 there, 0 elsewhere."""
    return x[0], [sparse_dot(w[i], delta) for i in x[0]]


def layer_update(x, w, b, delta, learning_rate):
    """One SGD step, given delta = d(loss)/da:
        dW = outer(x, delta)   (d(a_j)/d(W[i][j]) = x_i)
        db = delta             (d(a_j)/d(b_j) = 1)
    W -= learning_rate * dW and b -= learning_rate * db: only the rows of
    nonzero inputs and the columns of nonzero deltas change."""
    subtract_outer(w, x, delta, learning_rate)
    for j, g in zip(*delta):
        b[j] -= learning_rate * g


def hidden_layer(a):
    """h = relu(a), kept sparse: the units that fired (a > 0) and their values.
    The next layer reads only these, and only they pass a gradient back."""
    return nonzero(relu(a))


def output_delta(p, label):
    """dz = d(loss)/dz = p - onehot(label), for p = softmax(z), loss = -ln p[label].

    loss = -z_y + ln(sum_j e**z_j), so d(loss)/d(z_k) = -[k == y] + e**z_k / sum_j e**z_j
    = p_k - [k == y] ([k == y]: 1 if k == y, else 0): the probabilities minus the
    answer. 0 when the network is sure and right; large for the digits it
    wrongly believes in, and for the right one, if it doubts it."""
    dz = list(p)
    dz[label] -= 1.0
    return dz


class Activations:
    """What one forward pass computed, kept for the backward pass: each layer's
    input as a sparse vector (x, then each hidden layer's live units), and p."""
    __slots__ = ("inputs", "p")

    def __init__(self, inputs, p):
        self.inputs, self.p = inputs, p


def he_layer(n_in, n_out, rng):
    """An n_in x n_out weight matrix, He initialisation: uniform in +-L with
    L = sqrt(6 / n_in), so the variance is L**2 / 3 = 2 / n_in, and a ReLU layer
    hands on signals of the size it receives (ReLU zeroes half of them; the
    factor 2 makes up for it). Much smaller weights and the signal fades; equal
    weights and every unit learns the same thing (the script this project grew
    from started so: 10% accuracy). rng.random() repeats for a seed on every Python."""
    limit = math.sqrt(6.0 / n_in)
    return [[(2.0 * rng.random() - 1.0) * limit for _ in range(n_out)] for _ in range(n_in)]


def image_values(image, n):
    """image as n numbers 0..255: bytes, a flat list, or rows (28 rows of 28)."""
    if isinstance(image, (list, tuple)) and image and isinstance(image[0], (list, tuple)):
        image = [v for row in image for v in row]
    if not (isinstance(image, (bytes, bytearray, list, tuple)) and len(image) == n and
            all(type(v) in (int, float) and 0 <= v <= 255 for v in image)):
        raise MnistError("an image must be %d values 0..255 (28x28 row by row, ink = 255)" % n)
    if 0 < max(image) <= 1:
        raise MnistError("an image's pixels go 0..255 (ink = 255), and these are all at most 1: "
                         "multiply them by 255")
    return image


class NeuralNetwork:
    """sizes[0] inputs -> hidden ReLU layers -> sizes[-1] softmax outputs.

    NeuralNetwork([784, 128, 10], seed=1) is the default; [784, 256, 128, 10]
    has two hidden layers. weights[l] and biases[l] are layer l+1's W and b."""

    def __init__(self, sizes=DEFAULT_SIZES, seed=DEFAULT_SEED):
        if len(sizes) < 2 or not all(type(n) is int and n >= 1 for n in sizes):
            raise MnistError("sizes must be two or more whole numbers >= 1, like "
                             "[784, 128, 10]; got %r" % (sizes,))
        rng = random.Random(seed)
        self.sizes = list(sizes)
        self.weights = [he_layer(n_in, n_out, rng) for n_in, n_out in zip(sizes, sizes[1:])]
        self.biases = [[0.0] * n_out for n_out in sizes[1:]]

    def forward(self, image):
        """One image (sizes[0] pixel values 0..255) through the network."""
        inputs = [sparse_pixels(image)]                   # x, sparse
        layers = list(zip(self.weights, self.biases))
        for w, b in layers[:-1]:
            inputs.append(hidden_layer(layer_forward(inputs[-1], w, b)))    # h = relu(x @ W + b)
        w, b = layers[-1]
        z = layer_forward(inputs[-1], w, b)               # z = h @ W + b
        return Activations(inputs, softmax(z))

    def backward(self, acts, label):
        """[d(loss)/da for each layer], first layer first, each sparse. The last
        layer's is dz; each earlier one is W @ delta of the layer above, taken
        at the units that fired (input_delta)."""
        delta = dense(output_delta(acts.p, label))        # dz = p - onehot(y)
        deltas = [delta]
        for l in range(len(self.weights) - 1, 0, -1):     # back from the last layer
            delta = input_delta(acts.inputs[l], self.weights[l], delta)
            deltas.append(delta)
        return deltas[::-1]

    def update(self, acts, deltas, learning_rate):
        """One SGD step for every layer: W -= learning_rate * outer(input, delta)."""
        for x, w, b, delta in zip(acts.inputs, self.weights, self.biases, deltas):
            layer_update(x, w, b, delta, learning_rate)

    def learn(self, acts, label, learning_rate):
        """Backward pass and update, for an image whose forward pass gave acts.
        (Every delta is worked out before any weight changes: backward needs the
        weights the forward pass used.)"""
        self.update(acts, self.backward(acts, label), learning_rate)

    def predict(self, image):
        """The ten probabilities for a 28x28 image: 784 values 0..255 (bytes or
        a list) or 28 rows of 28, ink bright on a dark background, as in MNIST."""
        return self.forward(image_values(image, self.sizes[0])).p


# =============================================================================
# 7. Training until mastery
# =============================================================================
# Stochastic gradient descent, one image at a time: each epoch visits the
# training images in a fresh random order, and after each image every weight
# takes a small step against its gradient.
#
# Train until mastery: every image is forwarded every epoch, but a mastered one
# gets no backward pass and no update. Its gradient is nearly zero anyway
# (sum |dz_k| = 2 (1 - p[y]) <= 0.02, against at least 1 for a mistake), and
# mastery is checked afresh at every visit, so an image the network forgets is
# learned again. On all 60,000 images it does ~15% of the updates and reaches
# 98% 1.6x sooner; skipping an image for good after 3 right answers in a row
# (the original script's rule) starves the hard ones: never 98%.

def default_learning_rate(n_train):
    """0.03 up to ~14,000 images, then falling as 1/sqrt(n) to 0.0144 at 60,000.
    A small set gets few steps an epoch, and a large rate learns it fastest,
    but too large a one swings: on 1,000 images for 3, 5 or 10 epochs (seeds
    1-3), 0.05 scored 78-90% and 0.03 87.5-89.6%. A big set gets many steps,
    and each also undoes a little of what earlier images taught: on all 60,000,
    0.05 ends 10 epochs at ~96.4% where 0.0144 reaches ~98.2%."""
    return min(0.03, 0.05 * math.sqrt(5000.0 / max(n_train, 1)))


def learning_rate_at(recipe, epoch):
    """The step size for epoch (0-based): the start rate times lr_decay for every
    decay_every epochs done. Large steps travel fast early; smaller ones later
    let the weights settle instead of bouncing around a minimum (without the
    decay, accuracy on the full set stalls near 97.5%)."""
    return recipe.learning_rate * recipe.lr_decay ** (epoch // recipe.decay_every)


def is_mastered(p, label, threshold):
    """Answered right with probability at least threshold (0 = never mastered)."""
    return 0.0 < threshold <= p[label] and argmax(p) == label


def shuffled(n, rng):
    """0..n-1 in random order (Fisher-Yates). Uses only rng.random(), whose
    sequence every Python version and PyPy repeat for a seed."""
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        order[i], order[j] = order[j], order[i]
    return order


def epoch_order(n, seed, epoch):
    """The order of epoch `epoch`, drawn from (seed, epoch) alone: a run stopped
    anywhere goes on exactly as an unbroken one would."""
    return shuffled(n, random.Random("mnist_pure %d %d" % (seed, epoch)))


def epoch_steps(model, data, recipe, epoch, start=0, stop=None, order=None):
    """Train model on data for epoch `epoch` (0-based), from position start up
    to stop of its order, yielding (position, label, p, learned) after each
    image. The lesson runs it to the end; the tool also watches each step (a
    progress bar, Ctrl-C, the epoch's figures), and several processes each run
    a share of an epoch, round after round: they pass the epoch's order, drawn
    once (drawing 60,000 takes ~40 ms on CPython)."""
    learning_rate = learning_rate_at(recipe, epoch)
    if order is None:
        order = epoch_order(len(data), recipe.seed, epoch)
    for position in range(start, len(order) if stop is None else stop):
        image, label = data[order[position]]
        acts = model.forward(image)                       # the network's answer
        learned = not is_mastered(acts.p, label, recipe.mastery)
        if learned:
            model.learn(acts, label, learning_rate)       # backward pass and update
        yield position, label, acts.p, learned


def train_until_mastery(net, data, epochs=DEFAULT_EPOCHS, learning_rate=None,
                        mastery=DEFAULT_MASTERY, seed=DEFAULT_SEED,
                        lr_decay=DEFAULT_LR_DECAY, decay_every=DEFAULT_DECAY_EVERY):
    """Train net on data (a Dataset) with per-sample SGD for `epochs` epochs,
    each image learned until the network masters it; returns net.
    learning_rate None chooses it from the number of images."""
    if not all(type(label) is int and 0 <= label < N_DIGITS for _, label in data):
        raise MnistError("every label must be a whole number 0..9")
    if learning_rate is None:
        learning_rate = default_learning_rate(len(data))
    recipe = Recipe(epochs, learning_rate, lr_decay, decay_every, mastery, seed)
    for epoch in range(recipe.epochs):
        for _ in epoch_steps(net, data, recipe, epoch):
            pass
    return net


# =============================================================================
# 8. Testing
# =============================================================================
# The network's guess is the digit with the largest probability; accuracy is
# how often that guess is the label, on images it never trained on.

def test(net, data):
    """The fraction of data's images that net reads right, 0..1."""
    right = sum(argmax(net.forward(image).p) == label for image, label in data)
    return right / max(len(data), 1)


# =============================================================================
# Part II: more ways to learn
# =============================================================================
# The lesson's recipe is plain per-sample SGD. The classic variations, each as
# its few lines of math beside that plain step: distortions of the training
# images (section 9); mini-batches, momentum, Adam, weight decay and dropout
# (section 10). A Trainer wraps the network and offers epoch_steps the same two
# calls, forward and learn, so the lesson's loop runs every one of them unchanged.

# =============================================================================
# 9. Distortions: the same digit, drawn a little differently each time
# =============================================================================
# With few images the network soon knows each one by heart (100% on them,
# ~90% on new ones). Data augmentation shows it each training image a little
# changed at every visit, as another hand might have drawn it: the label stays,
# the pixels do not, so learning them by heart no longer works.
#
#   shift     moved by whole pixels, up to 2 each way
#   affine    rotated (+-12 degrees), scaled (+-12%), made wider or narrower
#             (+-8%), slanted (shear +-0.25) and moved (+-2 pixels)
#   elastic   bent by a smooth random field (Simard, Steinkraus and Platt, 2003)
#   thickness strokes made a little thicker or thinner
#
# A warp (affine, elastic) is computed by *inverse mapping*: each new pixel p
# asks where it comes from in the old image, a point q = T(p), and takes the
# value of the old pixel nearest to q. (Pushing old pixels forward would leave
# holes where the map stretches.) Nearest-pixel reading keeps the strokes as
# sharp as MNIST's; interpolating between pixels was measured no more accurate,
# blurrier (30% more inked pixels, so slower steps) and twice the cost.
# Each distortion calls rng.random() a fixed number of times: a run repeats on
# every Python, and the visit's random numbers do not depend on the image.

def visit_random(seed, epoch, position):
    """A random generator for one visit of one image, drawn from (seed, epoch,
    position) alone: a run resumed anywhere, or split over several processes,
    draws exactly the distortions and dropout masks an unbroken one does."""
    return random.Random((seed * 100003 + epoch) * 100000007 + position)


def uniform(rng, limit):
    """A number uniform in [-limit, +limit), from one rng.random()."""
    return (2.0 * rng.random() - 1.0) * limit


MAX_SHIFT = 2      # the shift distortion moves an image by up to this many pixels


def shift(image, rng):
    """The image moved by dx, dy in -2..2 pixels; ink pushed off the edge is lost.
    Row by row, with slices (copied in C)."""
    span = 2 * MAX_SHIFT + 1
    dx, dy = int(rng.random() * span) - MAX_SHIFT, int(rng.random() * span) - MAX_SHIFT
    out = bytearray(N_PIXELS)
    left, right = max(0, -dx), IMAGE_SIDE - max(0, dx)      # the columns that stay in
    for row in range(max(0, -dy), IMAGE_SIDE - max(0, dy)):
        start = row * IMAGE_SIDE
        target = (row + dy) * IMAGE_SIDE + dx
        out[target + left:target + right] = image[start + left:start + right]
    return bytes(out)


def ink_bounds(image, width=IMAGE_SIDE):
    """(left, top, right, bottom), inclusive, around the nonzero pixels of an
    image (bytes) `width` pixels wide; None if blank. bytes.strip(b"\\0") finds
    the first and last ink in C."""
    core = image.strip(b"\0")
    if not core:
        return None
    first = len(image) - len(image.lstrip(b"\0"))
    top, bottom = first // width, (first + len(core) - 1) // width
    left, right = width, -1
    for row in range(top, bottom + 1):
        line = image[row * width:(row + 1) * width]
        inked = line.strip(b"\0")
        if inked:
            start = len(line) - len(line.lstrip(b"\0"))
            left, right = min(left, start), max(right, start + len(inked) - 1)
    return left, top, right, bottom


def warp(image, matrix, centre, offset, field=None):
    """The image as seen through q = centre + matrix @ (p - centre - offset) + d(p):
    new pixel p = (x, y) takes the old pixel nearest to q. matrix = (m00, m01,
    m10, m11) row by row; field = (dx, dy, spread): d(p) = (dx[p], dy[p]), 784
    each, |d| <= spread. Only the new pixels whose q can land within half a
    pixel of the old ink are computed: the ink's box, mapped forward (by the
    inverse of matrix) and widened by the field's spread. About a third of the
    image, for a digit."""
    bounds = ink_bounds(image)
    if bounds is None:
        return bytes(N_PIXELS)
    left, top, right, bottom = bounds
    x_low, x_high, y_low, y_high = left - 0.5, right + 0.5, top - 0.5, bottom + 0.5
    m00, m01, m10, m11 = matrix
    (cx, cy), (ox, oy) = centre, offset
    det = m00 * m11 - m01 * m10
    a00, a01, a10, a11 = m11 / det, -m01 / det, -m10 / det, m00 / det    # matrix^-1
    corners = [(qx - cx, qy - cy) for qx in (x_low, x_high) for qy in (y_low, y_high)]
    xs = [cx + ox + a00 * u + a01 * v for u, v in corners]
    ys = [cy + oy + a10 * u + a11 * v for u, v in corners]
    spread = 0.0 if field is None else field[2] * max(abs(a00) + abs(a01), abs(a10) + abs(a11))
    first_column = max(0, int(min(xs) - spread))
    last_column = min(IMAGE_SIDE - 1, int(max(xs) + spread) + 1)
    out = bytearray(N_PIXELS)
    last_row = min(IMAGE_SIDE - 1, int(max(ys) + spread) + 1)
    for y in range(max(0, int(min(ys) - spread)), last_row + 1):
        px, py = first_column - cx - ox, y - cy - oy
        qx, qy = cx + m00 * px + m01 * py, cy + m10 * px + m11 * py    # one step right adds
        for x in range(first_column, last_column + 1):                 # (m00, m10) to q
            k = y * IMAGE_SIDE + x
            sx, sy = (qx, qy) if field is None else (qx + field[0][k], qy + field[1][k])
            if x_low < sx < x_high and y_low < sy < y_high:
                out[k] = image[int(sy + 0.5) * IMAGE_SIDE + int(sx + 0.5)]    # nearest pixel
            qx += m00
            qy += m10
    return bytes(out)


AFFINE_ROTATION = 12.0      # degrees, +-
AFFINE_SCALE = 0.12         # size x (1 +- this)
AFFINE_ASPECT = 0.08        # width against height x (1 +- this)
AFFINE_SHEAR = 0.25         # slant: x += k y, k = +- this
AFFINE_SHIFT = 2.0          # pixels, +-


def affine(image, rng):
    """The digit rotated, scaled, stretched, slanted and moved about the centre
    of its ink, by a random affine map A = R H S (6 rng.random() calls):
        S = [[s t, 0], [0, s / t]]    size s = 1 +- 12%, width against height t = 1 +- 8%
        H = [[1, k], [0, 1]]          slant: x += k y, k = +-0.25
        R = [[cos a, -sin a], [sin a, cos a]]    a = +-12 degrees
    warp asks where each new pixel comes from, so it gets A^-1."""
    angle = uniform(rng, AFFINE_ROTATION) * math.pi / 180.0
    s, t = 1.0 + uniform(rng, AFFINE_SCALE), 1.0 + uniform(rng, AFFINE_ASPECT)
    k = uniform(rng, AFFINE_SHEAR)
    offset = (uniform(rng, AFFINE_SHIFT), uniform(rng, AFFINE_SHIFT))
    sx, sy = s * t, s / t
    cos, sin = math.cos(angle), math.sin(angle)
    a00, a01, a10, a11 = cos * sx, (cos * k - sin) * sy, sin * sx, (sin * k + cos) * sy
    det = sx * sy
    bounds = ink_bounds(image) or (0, 0, IMAGE_SIDE - 1, IMAGE_SIDE - 1)
    centre = ((bounds[0] + bounds[2]) / 2.0, (bounds[1] + bounds[3]) / 2.0)
    return warp(image, (a11 / det, -a01 / det, -a10 / det, a00 / det), centre, offset)


# elastic: Simard et al. draw a displacement dx, dy uniform in [-1, 1] at every
# pixel, smooth each with a Gaussian of standard deviation sigma = 4 pixels (so
# neighbours move alike: the paper bends, it does not tear), and scale it by
# alpha = 34: each point moves by ~1.4 pixels, in a pattern that changes over
# ~8 pixels. Smoothing 2 x 784 values with a 25-tap Gaussian costs ~10 ms in
# CPython, so here the same recipe runs on a coarse 8 x 8 grid of control
# points 27/7 = 3.9 pixels apart (its Gaussian is sigma / 3.9 = 1.04 grid
# steps), and the field is filled in between by bilinear interpolation: the
# same typical size (1.38 pixels) and the same smoothness (measured: the
# displacements of points 2, 4 and 8 pixels apart correlate 0.94, 0.80 and
# 0.40, as in Simard's), from 392 random numbers.

FIELD_POINTS = 8                                     # control points a side
FIELD_STEP = (IMAGE_SIDE - 1) / (FIELD_POINTS - 1)    # pixels between them
ELASTIC_RMS = 1.38                                  # typical displacement, pixels


def gaussian_taps(sigma):
    """exp(-t**2 / (2 sigma**2)) for t = -3 sigma .. 3 sigma, summing to 1."""
    radius = int(3.0 * sigma)
    taps = [exp(-t * t / (2.0 * sigma * sigma)) for t in range(-radius, radius + 1)]
    return [w / sum(taps) for w in taps]


FIELD_TAPS = gaussian_taps(4.0 / FIELD_STEP)
# Smoothing values of variance L**2 / 3 (uniform in +-L) by the 2-D kernel
# leaves an rms of L / sqrt(3) * sum(tap**2), and bilinear filling-in lowers it
# by a further 1 - (1 - rho) / 3 (rho: how neighbouring control points
# correlate), so noise uniform in +-FIELD_NOISE gives rms ELASTIC_RMS.
FIELD_POWER = sum(w * w for w in FIELD_TAPS)
FIELD_RHO = sum(a * b for a, b in zip(FIELD_TAPS, FIELD_TAPS[1:])) / FIELD_POWER
FIELD_NOISE = ELASTIC_RMS * 3 ** 0.5 / (FIELD_POWER * (1.0 - (1.0 - FIELD_RHO) / 3.0))
# For each pixel 0..27: (grid interval i, position u in it), for the filling-in.
FIELD_CELLS = [(min(int(c / FIELD_STEP), FIELD_POINTS - 2), c / FIELD_STEP -
               min(int(c / FIELD_STEP), FIELD_POINTS - 2)) for c in range(IMAGE_SIDE)]


def smooth_grid(values, wide):
    """The FIELD_POINTS x FIELD_POINTS middle of a wide x wide grid, smoothed by
    FIELD_TAPS along rows, then along columns (a 2-D Gaussian is two 1-D ones).
    The noise grid is wider by the kernel's radius each side, so the field is
    as strong at the image's edges as in its middle."""
    n, taps = FIELD_POINTS, len(FIELD_TAPS)
    rows = [sum(FIELD_TAPS[t] * values[r * wide + c + t] for t in range(taps))
            for r in range(wide) for c in range(n)]
    return [sum(FIELD_TAPS[t] * rows[(r + t) * n + c] for t in range(taps))
            for r in range(n) for c in range(n)]


def fill_in(grid):
    """A FIELD_POINTS-square grid of values as 784, by bilinear interpolation:
    along each control row to every column, then between control rows."""
    n = FIELD_POINTS
    lines = [[grid[i * n + j] + u * (grid[i * n + j + 1] - grid[i * n + j])
              for j, u in FIELD_CELLS] for i in range(n)]
    full = []
    for i, v in FIELD_CELLS:
        full.extend(a + v * (b - a) for a, b in zip(lines[i], lines[i + 1]))
    return full


def elastic(image, rng):
    """The image bent by a fresh smooth random field (392 rng.random() calls)."""
    wide = FIELD_POINTS + len(FIELD_TAPS) - 1
    gx = smooth_grid([uniform(rng, FIELD_NOISE) for _ in range(wide * wide)], wide)
    gy = smooth_grid([uniform(rng, FIELD_NOISE) for _ in range(wide * wide)], wide)
    spread = max(max(map(abs, gx)), max(map(abs, gy)))    # filling in never exceeds it
    return warp(image, (1.0, 0.0, 0.0, 1.0), (0.0, 0.0), (0.0, 0.0),
                (fill_in(gx), fill_in(gy), spread))


def neighbourhood(image, pick):
    """pick (max or min) of each pixel and its 4 neighbours (paper beyond the
    edge): a grey dilation (max) or erosion (min) with a cross, in C."""
    side, blank = IMAGE_SIDE, bytes(IMAGE_SIDE)
    left = b"".join(b"\0" + image[r * side:(r + 1) * side - 1] for r in range(side))
    right = b"".join(image[r * side + 1:(r + 1) * side] + b"\0" for r in range(side))
    return bytes(map(pick, image, left, right, blank + image[:-side], image[side:] + blank))


def thickness(image, rng):
    """Strokes thicker or thinner (half the time each) by up to 70% of a
    one-pixel dilation or erosion (2 rng.random() calls)."""
    thicker, amount = rng.random() < 0.5, 0.7 * rng.random()
    if thicker:
        rim = neighbourhood(image, max).translate(bytes(int(v * amount + 0.5) for v in range(256)))
        return bytes(map(max, image, rim))
    faded = image.translate(bytes(int(v * (1.0 - amount) + 0.5) for v in range(256)))
    return bytes(map(max, neighbourhood(image, min), faded))


DISTORTIONS = {"shift": shift, "affine": affine, "elastic": elastic, "thickness": thickness}


# =============================================================================
# 10. Mini-batches, momentum, Adam, weight decay, dropout
# =============================================================================
# Mini-batch SGD: the mean gradient of B images, one step per batch,
#     W -= learning_rate * (dW_1 + ... + dW_B) / B,
# every gradient taken at the same weights. Since a step is a sum of outer
# products, it is also B small steps of learning_rate / B each, applied once
# the batch is over: so the sparse updates stay sparse. B = the whole training
# set is full-batch gradient descent. Mastery inside a batch: an image answered
# right with p[y] >= mastery adds nothing (its gradient is nearly 0 anyway),
# and the batch is still divided by B, the images it visited.
#
# Momentum (the heavy ball), with mu = 0.9 say: a velocity v remembers past steps,
#     v = mu * v + g,         W -= learning_rate * v
# so a direction that keeps coming back builds speed, and one that flips sign
# cancels out. Nesterov momentum looks ahead: W -= learning_rate * (g + mu * v).
# Adam (Kingma and Ba, 2014) gives each weight its own step size: with the
# running means m of g and s of g**2 (beta1 = 0.9, beta2 = 0.999),
#     m = beta1 m + (1 - beta1) g,        s = beta2 s + (1 - beta2) g**2
#     W -= learning_rate * m' / (sqrt(s') + 1e-8)
# where m' = m / (1 - beta1**t) and s' = s / (1 - beta2**t) make up for m and
# s starting at 0, too small in the first steps (t counts the steps). Weight
# decay shrinks every weight (not the biases) by the factor
# (1 - learning_rate * lambda) at every step, beside the step of its gradient,
# so that weights nothing keeps large fade towards 0. For plain SGD that is
# exactly L2 regularisation (lambda/2 |W|**2 added to the loss adds lambda W
# to the gradient); with momentum and Adam it is the "decoupled" form
# (Loshchilov and Hutter, 2019: SGDW and AdamW), which keeps the shrinking out
# of the velocity and of Adam's running means.
#
# Dropout (Srivastava et al., 2014): while training, each hidden unit is
# silenced with probability P, and the survivors are scaled by 1 / (1 - P), so
# the next layer receives the same total on average and nothing changes when
# testing (no unit is dropped then). A unit cannot rely on any other one being
# there, so features spread out instead of conspiring.
#     forward   h' = relu(a) * mask / (1 - P)       mask_j = 0 with probability P
#     backward  da = dh' * mask / (1 - P)  where a > 0, else 0
# Dropped units simply leave the sparse list of live units; and since every
# backward step is linear in the deltas, multiplying each hidden layer's delta
# by g = 1 / (1 - P) once per dropout layer above it gives the same result as
# doing it at every step.
#
# Each option's own default step size. The lesson's rate was chosen for plain
# per-sample SGD, where each image moves the weights by learning_rate * g. An
# option that changes how far one image moves them needs its own default rate,
# or the recipe no longer fits (measured: momentum 0.9 at the plain rate
# diverged, 11%):
#   - momentum repeats each step, fading, at every later step: in all,
#     1 + mu + mu**2 + ... = 1 / (1 - mu) times. Its default rate is the plain
#     rate times (1 - mu), so that each image moves the weights as far in all.
#   - a mean over B images gives each image 1/B of a step. Its default rate is
#     the plain rate times sqrt(B) (batch_rate, below, says how that was measured).
#   - Adam divides each weight's step by the size of its own gradients, so the
#     gradient's scale drops out: it keeps its own rate, 0.001 (Kingma and Ba's).
# An explicit --lr is always obeyed.

ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON = 0.9, 0.999, 1e-8
ADAM_HORIZON = 400           # (beta1 / sqrt(beta2))**400 < 1e-18: later steps add nothing
EPOCH_STEPS = 125            # a default mini-batch leaves an epoch at least this many steps
SGD_BATCH = 32               # the default mini-batch of momentum and weight decay
ADAM_BATCH = 64              # and of Adam (see each optimizer's default_batch)


def optimizer_batch(n_train, batch):
    """The mini-batch of momentum, Adam and weight decay when none is given:
    `batch` images (each optimizer says how many), fewer on a small set. Their
    arithmetic is per weight, not in the packed engine's lanes: on CPython a
    step costs ~25 us for each row of W1 it touches, and a step per image
    touches ~150 rows, where a batch of 32 touches ~450 rows for 32 images,
    and of 64 ~490 for 64. They learn as much per image in batches (10,000
    images, 5 epochs, seed 1: momentum 0.9 one image a step, 91.55%; in
    batches of 32, 94.30%; plain SGD, 93.05%), as long as an epoch still takes
    enough steps: on 1,000 images (12 epochs, distorted; plain SGD 91.85%)
    batches of 32 gave 84-88%, of 8 (125 steps an epoch) 89.9-91.6%."""
    return max(1, min(batch, n_train // EPOCH_STEPS))


def batch_rate(plain_rate, batch):
    """The default rate for mini-batches of `batch` images: the plain rate times
    sqrt(batch). A mean gives each image 1/B of a step, so B times the rate
    would keep its step (linear scaling); but the B gradients of a batch point
    partly the same way, and at B times the rate the steps overshoot. Measured
    (10,000 images, 5 epochs, seed 1; plain per-sample SGD 93.05%), the rate
    times 2, 3, 4 at batch 8: 93.45, 93.85, 92.65%; times 2, 4, 5.7 (sqrt), 8,
    16, 32 at batch 32: 89.50, 92.95, 93.95, 92.35, 90.45, 90.05%; times 4, 8
    (sqrt), 11, 16, 32 at batch 64: 88.60, 91.55, 92.05, 89.15, 86.25%."""
    return plain_rate * batch ** 0.5


def drop_units(h, rate, rng):
    """The live units h = (indices, values), each kept with probability 1 - rate
    and scaled by 1 / (1 - rate) (inverted dropout)."""
    gain = 1.0 / (1.0 - rate)
    kept = [(j, v * gain) for j, v in zip(*h) if rng.random() >= rate]
    return [j for j, _ in kept], [v for _, v in kept]


def dropout_forward(net, image, rate, rng):
    """NeuralNetwork.forward with dropout after each hidden layer."""
    inputs = [sparse_pixels(image)]
    layers = list(zip(net.weights, net.biases))
    for w, b in layers[:-1]:
        h = hidden_layer(layer_forward(inputs[-1], w, b))
        inputs.append(drop_units(h, rate, rng))
    w, b = layers[-1]
    return Activations(inputs, softmax(layer_forward(inputs[-1], w, b)))


def dropout_deltas(deltas, rate):
    """The deltas of NeuralNetwork.backward for a forward pass with dropout:
    each hidden layer's times gain = 1 / (1 - rate) once for every dropout
    layer from it up (see above), the last layer's unchanged."""
    gain = 1.0 / (1.0 - rate)
    last = len(deltas) - 1
    return [(indices, [gain ** (last - l) * d for d in values]) if l < last else (indices, values)
            for l, (indices, values) in enumerate(deltas)]


# An optimizer, row by row. Momentum, Adam and weight decay change every
# weight at every step: a velocity keeps a weight moving after its gradient is
# gone, and decay shrinks them all. Done as written, each step would touch all
# ~100,000 weights, where plain SGD touches the ~150 rows of the inked pixels.
# But a row of W1 that no image touched for k steps had a zero gradient all
# that while, and k steps with a zero gradient have a closed form (catch_up).
# So a row is brought up to date just before an image reads it (the forward
# pass needs it as it is now), in one go, and every row at the end of each
# epoch, before the rate changes (Trainer.settle). Only W1 is done so: its rows
# are the pixels, most of them untouched by any one batch, where every row of
# the later layers (a hidden unit's) and every bias is touched by nearly every
# batch, and simply steps every time. Each optimizer is one class:
#     state_names                    its state: a list per row of W, like the row
#     needs_weights                  whether its steps read w (weight decay does)
#     default_rate(plain, batch)     the rate of the rule above, for its options
#     default_batch(n_train)         its mini-batch when none is given
#     step(w, state, g, rate, t)     step number t (from 1) of a row w with
#                                    gradient g: what to add to w, and the new state
#     catch_up(w, state, k, rate, t) for a row up to date with step t, the k
#                                    steps t+1 .. t+k with g = 0: what to add to
#                                    w, and the new state
# Both take lists (w is None unless needs_weights) and return lists, which
# may be the ones given: nothing changes them in place.

def scaled(a, u):
    """a * u for a number a and a vector u."""
    return [a * x for x in u]


def combined(a, u, b, v):
    """a * u + b * v for numbers a, b and vectors u, v."""
    return [a * x + b * y for x, y in zip(u, v)]


def moved(factor, push, shrinking, w):
    """factor * push + shrinking * w: a step, and the shrinking of weight decay
    (shrinking = 0, and w unread, without it). In one pass over the row."""
    if shrinking:
        return combined(factor, push, shrinking, w)
    return push if factor == 1.0 else scaled(factor, push)


class SGD:
    """Stochastic gradient descent, with momentum mu (heavy ball, or Nesterov's)
    and weight decay lambda, for one row w and its gradient g:
        plain     w = keep w - rate g                        keep = 1 - rate * lambda
        momentum  v = mu v + g,   w = keep w - rate v
        Nesterov  v = mu v + g,   w = keep w - rate (g + mu v)"""
    uses = ("momentum", "nesterov", "weight_decay")

    def __init__(self, options):
        self.mu, self.nesterov = options.momentum, options.nesterov
        self.decay = options.weight_decay
        self.state_names = ("velocity",) if self.mu else ()
        self.needs_weights = self.decay > 0

    def default_rate(self, plain_rate, batch):
        return batch_rate(plain_rate, batch) * (1.0 - self.mu)

    def default_batch(self, n_train):
        """Plain SGD one image a step; with momentum or decay, batches of 32."""
        return optimizer_batch(n_train, SGD_BATCH) if self.mu or self.decay else 1

    def step(self, w, state, g, rate, t):
        shrinking = -rate * self.decay                  # keep - 1
        if not self.mu:
            return moved(-rate, g, shrinking, w), state
        v = combined(self.mu, state[0], 1.0, g)
        push = combined(1.0, g, self.mu, v) if self.nesterov else v
        return moved(-rate, push, shrinking, w), [v]

    def catch_up(self, w, state, k, rate, t):
        """k steps with g = 0. The velocity fades: v_j = mu**j v. The row shrinks
        and moves by each step's push: w_j = keep w_(j-1) - rate mu**j v (heavy
        ball; Nesterov's push is mu v_j = mu**(j+1) v), so after k steps
            w_k = keep**k w - rate mu sum_(j=1..k) keep**(k-j) mu**(j-1) v,
        a geometric sum: (keep**k - mu**k) / (keep - mu) (k mu**(k-1) if equal)."""
        keep = 1.0 - rate * self.decay
        shrinking = keep ** k - 1.0
        if not self.mu:
            return scaled(shrinking, w), state
        mu = self.mu
        total = (keep ** k - mu ** k) / (keep - mu) if keep != mu else k * mu ** (k - 1)
        push = (mu * mu if self.nesterov else mu) * total
        return moved(-rate * push, state[0], shrinking, w), [scaled(mu ** k, state[0])]


class Adam:
    """Adam with bias correction and decoupled weight decay (AdamW), for one row:
        m = beta1 m + (1 - beta1) g,   s = beta2 s + (1 - beta2) g**2
        w = keep w - rate m' / (sqrt(s') + epsilon),   m' = m / (1 - beta1**t),
                                                       s' = s / (1 - beta2**t)"""
    uses = ("weight_decay",)
    state_names = ("mean", "square")

    def __init__(self, options):
        self.decay = options.weight_decay
        self.needs_weights = self.decay > 0
        self.sums, self.sums_at = {}, None        # catch_up's sums for each k, kept a step

    def default_rate(self, plain_rate, batch):
        return 0.001

    def default_batch(self, n_train):
        """Batches of 64: its step costs the most per row (a square root and a
        division per weight), and it learns as well in them (10,000 images, 5
        epochs, seed 1: 94.15% in batches of 32, 93.35% in 64)."""
        return optimizer_batch(n_train, ADAM_BATCH)

    def step(self, w, state, g, rate, t):
        b1, b2, sqrt = ADAM_BETA1, ADAM_BETA2, math.sqrt
        m = combined(b1, state[0], 1.0 - b1, g)
        s = [b2 * a + (1.0 - b2) * x * x for a, x in zip(state[1], g)]
        # rate m' / (sqrt(s') + epsilon) = (rate / c1) m / (sqrt(s / c2) + epsilon)
        #                                = size m / (sqrt(s) + floor)
        root = (1.0 - b2 ** t) ** 0.5                                  # sqrt(c2)
        size, floor = rate * root / (1.0 - b1 ** t), ADAM_EPSILON * root
        change = [-size * a / (sqrt(b) + floor) for a, b in zip(m, s)]
        return moved(1.0, change, -rate * self.decay, w), [m, s]

    def catch_up(self, w, state, k, rate, t):
        """k steps with g = 0, in one go: one number per row, and one per weight.
        The key: each step's epsilon is taken at its mean over the k steps.
        With g = 0, m_j = beta1**j m and s_j = beta2**j s, so step j moves w by
            -rate (a_j m) / (b_j sqrt(s) + epsilon) = -rate r_j m / (sqrt(s) + epsilon / b_j)
        with a_j = beta1**j / c1, b_j = sqrt(beta2**j / c2), r_j = a_j / b_j, and
        c1 = 1 - beta1**(t+j), c2 = 1 - beta2**(t+j): r_j is the same for every
        weight, and falls about as (beta1 / sqrt(beta2))**j ~ 0.9**j. With
        epsilon / b_j taken as its mean e (weighted by r_j), the k steps, with
        decay's keep, make
            w_k = keep**k w - rate (m / (sqrt(s) + e)) sum_(j=1..k) keep**(k-j) r_j.
        Exact where sqrt(s) is far above epsilon = 1e-8: everywhere but in the
        tiniest gradients, and there within a few per cent once b_j changes
        slowly, after the first few hundred steps (section 10's tests measure
        it). The sums are kept for rows caught up to the same step."""
        b1, b2 = ADAM_BETA1, ADAM_BETA2
        keep = 1.0 - rate * self.decay
        if self.sums_at != (t + k, keep):         # rows caught up to the same step
            self.sums, self.sums_at = {}, (t + k, keep)       # share them when k is equal
        if k not in self.sums:
            total = weighted = 0.0
            for j in range(1, min(k, ADAM_HORIZON) + 1):
                b = (b2 ** j / (1.0 - b2 ** (t + j))) ** 0.5
                r = keep ** (k - j) * b1 ** j / (1.0 - b1 ** (t + j)) / b
                total, weighted = total + r, weighted + r * ADAM_EPSILON / b
            self.sums[k] = (total, weighted / total)
        total, floor = self.sums[k]
        m, s, sqrt = state[0], state[1], math.sqrt
        factor = -rate * total                          # in the same pass as the step
        change = [factor * (a / (sqrt(b) + floor)) for a, b in zip(m, s)]
        return (moved(1.0, change, keep ** k - 1.0, w),
                [scaled(b1 ** k, m), scaled(b2 ** k, s)])


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


@dataclasses.dataclass
class Options:
    """The ways to learn beyond the lesson's recipe; all off by default."""
    batch_size: int = 1
    optimizer: str = "sgd"          # a name in OPTIMIZERS
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    dropout: float = 0.0            # P, for every hidden layer
    distortion: str = ""            # "" or a name in DISTORTIONS (section 9)
    rest_sure: bool = False         # sure images skip their forward pass a while (below)

    def use_optimizer(self):
        """Whether steps go through an optimizer object, row by row (above):
        for anything but plain SGD, which the network's own sparse update does."""
        return self.optimizer != "sgd" or self.momentum > 0 or self.weight_decay > 0


# Resting sure images (a speed trick, not a change of the recipe). After a few
# epochs most images are mastered, and most of an epoch is forward passes that
# change nothing. An image answered right with p[y] >= 0.9999 is so far from
# the 0.99 of mastery that it very rarely falls below it by the next epoch
# (measured: fewer than 1% do), so it rests: in the next REST_EPOCHS epochs the
# Trainer does not run its forward pass and answers with what it answered last
# (p[y] as then, the rest shared out), which mastery skips as before (so
# resting goes with mastery on: Settings.options). It is looked at again
# after that, so an image that slips is learned again.
# Measured on all 60,000 images, seeds 1-3, 10 epochs: 98.25% resting one
# epoch, 98.17% resting two, 98.22% never resting (the same within the seeds'
# spread), so it rests one. Skipping mastered images *outright*, forever,
# starves the hard ones instead (never 98% in earlier measurements).
SURE = 0.9999
REST_EPOCHS = 1

class Resting:
    """Which images rest until which epoch, and the confidence they rest with:
    one entry per training image (see SURE above)."""

    def __init__(self, n):
        self.until = [0] * n
        self.confidence = [0.0] * n

    def answer(self, k, label):
        """The rested image's probabilities: p[label] as it last was, and the
        rest shared out among the other digits."""
        p = [(1.0 - self.confidence[k]) / (N_DIGITS - 1)] * N_DIGITS
        p[label] = self.confidence[k]
        return Activations(None, p)

    def changes(self, since):
        """[(image, until, confidence)] changed since `since`, a copy of until."""
        return [(k, self.until[k], self.confidence[k])
                for k in range(len(self.until)) if self.until[k] != since[k]]

    def apply(self, changes):
        for k, until, confidence in changes:
            if until > self.until[k]:
                self.until[k], self.confidence[k] = until, confidence


def network_from(weights, biases):
    """A NeuralNetwork holding the given weights and biases (lists, not copied)."""
    network = NeuralNetwork.__new__(NeuralNetwork)        # no random start to throw away
    network.sizes = [len(weights[0])] + [len(b) for b in biases]
    network.weights, network.biases = weights, biases
    return network


def copy_network(network):
    return network_from([[list(row) for row in w] for w in network.weights],
                        [list(b) for b in network.biases])


class OptimizerState:
    """What an optimizer keeps for a network: for each layer, a state row (one
    list per name in state_names) for every row of W and one for b; the steps
    taken; and, for each row of W1, the step it was last brought up to."""

    def __init__(self, sizes, names):
        def rows(count, width):
            return [[[0.0] * width for _ in names] for _ in range(count)]
        self.steps = 0
        self.weights = [rows(n_in, n_out) for n_in, n_out in zip(sizes, sizes[1:])]
        self.biases = [rows(1, n_out)[0] for n_out in sizes[1:]]
        self.up_to = [0] * sizes[0]


def summed_gradients(pending, layer, n_in, n_out):
    """The sum of dW = outer(x, delta) over a batch's (acts, deltas), for one
    layer: {row i: [n_out]} for the rows some x_i touched."""
    rows = {}
    for acts, deltas in pending:
        (js, ds) = deltas[layer]
        for i, xi in zip(*acts.inputs[layer]):
            row = rows.get(i)
            if row is None:
                row = rows[i] = [0.0] * n_out
            for j, d in zip(js, ds):
                row[j] += xi * d
    return rows


def transposed(rows):
    """A matrix given as rows, [n_in][n_out], as PyTorch stores it: the values of
    its columns one after another ([n_out][n_in], row-major)."""
    return [row[j] for j in range(len(rows[0])) for row in rows]


def rows_of(values, n_in):
    """The inverse of transposed: [n_in][n_out] rows from [n_out][n_in] values."""
    n_out = len(values) // n_in
    return [[values[j * n_in + i] for j in range(n_out)] for i in range(n_in)]


class Trainer:
    """A network trained with Options: it stands in for the model in the
    lesson's epoch_steps, offering the same forward and learn. An epoch:
        trainer.start(epoch, 0, learning_rate_at(recipe, epoch))
        for _ in epoch_steps(trainer, data, recipe, epoch):
            pass
        trainer.finish()          # the last, partial batch (a batch ends at
        trainer.settle()          # the next forward); every row up to date
    Resting sure images needs the data trained on (its labels) and a Resting
    table. This class drives Part I's network ('lists' engine); section 11's
    PackedTrainer gives the ways it reaches into the network (inked ...
    network_copy, below) for the packed one."""

    def __init__(self, model, options, seed, data=None, resting=None):
        self.model, self.options, self.seed = model, options, seed
        self.epoch = self.position = 0
        self.pending, self.learning_rate, self.in_batch = [], 0.0, 0
        self.distort = DISTORTIONS[options.distortion] if options.distortion else None
        self.data, self.resting, self.order = data, None, None
        if options.rest_sure and data is not None:
            self.resting = resting or Resting(len(data))
        self.optimizer = OPTIMIZERS[options.optimizer](options) if options.use_optimizer() else None
        if self.optimizer is not None:
            self.state = OptimizerState(model.sizes, self.optimizer.state_names)
            # biases are not decayed (as is usual: a bias scales no input)
            self.bias_optimizer = OPTIMIZERS[options.optimizer](
                dataclasses.replace(options, weight_decay=0.0))

    # The network's own ways, for Part I's NeuralNetwork (section 11 has the packed ones).
    def inked(self, image):
        """The indices of the image's inked pixels: the rows of W1 it reads."""
        return [i for i in range(len(image)) if image[i]]

    def dropout_forward(self, image, rng):
        return dropout_forward(self.model, image, self.options.dropout, rng)

    def read_row(self, i):
        """Row i of W1 as a list of floats."""
        return self.model.weights[0][i]

    def add_to_row(self, i, change):
        """Row i of W1 += change."""
        self.model.weights[0][i] = add(self.model.weights[0][i], change)

    def set_row(self, i, values):
        self.model.weights[0][i] = list(values)

    def network_copy(self):
        """A NeuralNetwork holding a copy of the weights."""
        return copy_network(self.model)

    def first_gradients(self, pending, scale):
        """W1's summed gradient over a batch times scale, {row: [sizes[1]]}."""
        sums = summed_gradients(pending, 0, self.model.sizes[0], self.model.sizes[1])
        return {i: scaled(scale, row) for i, row in sums.items()}

    def start(self, epoch, position, learning_rate):
        if self.resting is not None and (self.order is None or epoch != self.epoch):
            self.order = epoch_order(len(self.data), self.seed, epoch)   # as epoch_steps
        self.epoch, self.position, self.learning_rate = epoch, position, learning_rate

    def forward(self, image):
        if self.position % self.options.batch_size == 0:
            self.finish()                           # the batch before this image is over
        rng = None
        if self.distort or self.options.dropout:
            rng = visit_random(self.seed, self.epoch, self.position)
        k = self.order[self.position] if self.resting is not None else None
        self.position += 1
        self.in_batch += 1
        if k is not None and self.resting.until[k] > self.epoch:
            return self.resting.answer(k, self.data.labels[k])
        if self.distort:
            image = self.distort(image, rng)
        if self.optimizer is not None:
            self.bring_up_to_date(self.inked(image))     # the rows this image reads
        if self.options.dropout:
            acts = self.dropout_forward(image, rng)
        else:
            acts = self.model.forward(image)
        if k is not None:
            label = self.data.labels[k]
            if acts.p[label] >= SURE and argmax(acts.p) == label:
                self.resting.until[k] = self.epoch + 1 + REST_EPOCHS
                self.resting.confidence[k] = acts.p[label]
        return acts

    def learn(self, acts, label, learning_rate):
        deltas = self.model.backward(acts, label)
        if self.options.dropout:
            deltas = dropout_deltas(deltas, self.options.dropout)
        self.learning_rate = learning_rate
        if self.options.batch_size == 1 and self.optimizer is None:
            self.model.update(acts, deltas, learning_rate)
        else:
            self.pending.append((acts, deltas))

    def finish(self):
        """Apply the batch so far: its small steps, or the optimizer's step, each
        divided by the number of images the batch visited."""
        batch, self.in_batch = self.in_batch, 0
        if self.optimizer is not None and batch:     # (even a batch of mastered images:
                                                     # a velocity moves on, decay shrinks)
            self.optimizer_step(batch)
        elif batch:
            for acts, deltas in self.pending:
                self.model.update(acts, deltas, self.learning_rate / batch)
        self.pending = []

    def optimizer_step(self, batch):
        """One step of the optimizer with the batch's mean gradient: for the rows
        of W1 the batch touched (each was brought up to date when an image read
        it), and for every row of the later layers and of the biases, which are
        small and mostly touched anyway."""
        state, step, rate = self.state, self.optimizer.step, self.learning_rate
        state.steps += 1
        t = state.steps
        for i, g in self.first_gradients(self.pending, 1.0 / batch).items():
            w = self.read_row(i) if self.optimizer.needs_weights else None
            change, state.weights[0][i] = step(w, state.weights[0][i], g, rate, t)
            self.add_to_row(i, change)
            state.up_to[i] = t
        sizes = self.model.sizes
        for l in range(1, len(sizes) - 1):
            w, rows = self.model.weights[l], state.weights[l]
            gradients = summed_gradients(self.pending, l, sizes[l], sizes[l + 1])
            zero = [0.0] * sizes[l + 1]
            for i in range(sizes[l]):
                g = scaled(1.0 / batch, gradients[i]) if i in gradients else zero
                change, rows[i] = step(w[i], rows[i], g, rate, t)
                w[i] = add(w[i], change)
        for l, b in enumerate(self.model.biases):
            g = [0.0] * len(b)                           # db = delta, summed
            for _, deltas in self.pending:
                for j, d in zip(*deltas[l]):
                    g[j] += d
            change, state.biases[l] = self.bias_optimizer.step(b, state.biases[l],
                                                               scaled(1.0 / batch, g), rate, t)
            b[:] = add(b, change)

    def bring_up_to_date(self, rows):
        """Catch the given rows of W1 up with the steps they missed (closed form)."""
        state, t, optimizer = self.state, self.state.steps, self.optimizer
        for i in rows:
            if state.up_to[i] < t:
                w = self.read_row(i) if optimizer.needs_weights else None
                change, state.weights[0][i] = optimizer.catch_up(
                    w, state.weights[0][i], t - state.up_to[i], self.learning_rate,
                    state.up_to[i])
                self.add_to_row(i, change)
                state.up_to[i] = t

    def settle(self):
        """Bring every row up to date: at the end of an epoch, before the network
        is tested or saved and before the learning rate changes."""
        if self.optimizer is not None:
            self.finish()
            self.bring_up_to_date(range(self.model.sizes[0]))

    def settled_network(self):
        """A copy of the network with every row brought up to date, leaving this
        one as it is: the model, when training stops inside an epoch."""
        network = self.network_copy()
        if self.optimizer is not None:
            state, t = self.state, self.state.steps
            for i in range(network.sizes[0]):
                if state.up_to[i] < t:
                    w = network.weights[0][i]
                    change, _ = self.optimizer.catch_up(w, state.weights[0][i], t - state.up_to[i],
                                                        self.learning_rate, state.up_to[i])
                    network.weights[0][i] = add(w, change)
        return network

    def saved_state(self):
        """The optimizer's state as named tensors, {name: (shape, values)}, for a
        checkpoint (section 18): for each layer and state name, W's state as
        optimizer.fc<l>.weight.<name> (in PyTorch's layout, [out, in], as the
        weights) and b's as optimizer.fc<l>.bias.<name>; the steps taken; W1 as
        it is, some rows behind, and the step each row is up to. None for plain SGD."""
        if self.optimizer is None:
            return None
        state, sizes = self.state, self.model.sizes
        tensors = {"optimizer.steps": ((1,), [state.steps]),
                   "optimizer.fc1.up_to": ((sizes[0],), list(state.up_to))}
        rows = [self.read_row(i) for i in range(sizes[0])]
        tensors["optimizer.fc1.weight"] = ((sizes[1], sizes[0]), transposed(rows))
        for l, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
            for k, name in enumerate(self.optimizer.state_names):
                tensors["optimizer.fc%d.weight.%s" % (l + 1, name)] = (
                    (n_out, n_in), transposed([row[k] for row in state.weights[l]]))
                tensors["optimizer.fc%d.bias.%s" % (l + 1, name)] = ((n_out,), state.biases[l][k])
        return tensors

    def restore(self, tensors):
        """Take up a checkpoint's saved_state; MnistError if it does not fit."""
        if self.optimizer is None:
            return
        mine = self.saved_state()
        if set(tensors) != set(mine) or any(tensors[name][0] != shape
                                            for name, (shape, _) in mine.items()):
            raise MnistError("the checkpoint's optimizer state does not fit this network "
                             "and optimizer")
        state, sizes = self.state, self.model.sizes
        state.steps = int(tensors["optimizer.steps"][1][0])
        state.up_to = [int(v) for v in tensors["optimizer.fc1.up_to"][1]]
        if not all(0 <= v <= state.steps for v in state.up_to):
            raise MnistError("the checkpoint's optimizer state is damaged (optimizer.fc1.up_to)")
        for i, row in enumerate(rows_of(tensors["optimizer.fc1.weight"][1], sizes[0])):
            self.set_row(i, row)
        for l, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
            for k, name in enumerate(self.optimizer.state_names):
                weight = rows_of(tensors["optimizer.fc%d.weight.%s" % (l + 1, name)][1], n_in)
                for row_state, row in zip(state.weights[l], weight):
                    row_state[k] = row
                state.biases[l][k] = list(tensors["optimizer.fc%d.bias.%s" % (l + 1, name)][1])


# =============================================================================
# Part III: the fast engines
# =============================================================================
# The lesson's network is the reference ("lists" engine): plain Python loops, which
# PyPy's JIT compiles into fast machine code. CPython runs each of those
# Python-level multiply-adds in ~50 ns, so section 11 holds the same network
# with the first layer's weights packed into big integers, whose arithmetic
# runs in C ("packed" engine). Section 12 spreads an epoch over several
# processes, one per core.

import array
import itertools
import multiprocessing
import multiprocessing.connection
import multiprocessing.shared_memory
import operator
import signal
import sys
import time

ON_PYPY = sys.implementation.name == "pypy"


class Diverged(MnistError):
    """Training blew up: the loss became nan, or the weights grew past what the
    packed engine holds. (Only too large a learning rate gets there.)"""


# =============================================================================
# 11. The packed engine: a pixel's weights in one integer (for CPython)
# =============================================================================
# x @ W1 alone needs ~150 x 128 multiply-adds per image. Python's integers
# have no size limit and their arithmetic runs in C. So this engine packs the
# weights of one pixel's row of W1 (sizes[1] of them, 128 by default) into one
# big integer, 64 bits ("a lane") per weight, each weight as a fixed-point
# number (a count of 2**-40ths):
#     row_int[i] = sum_j (round(W1[i][j] * 2**40) + OFFSET) << (64 * j)
# Then ONE integer multiply-add, done in C, works on all the lanes at once:
#     acc += pixel_byte[i] * row_int[i]          for the ~150 inked pixels
# and lane j of acc ends up holding sum_i byte_i * (W1[i][j] * 2**40 + OFFSET):
# remove the offsets, divide by 255 * 2**40, and that is (x @ W1)_j. Likewise
# the update of row i of W1 is one integer subtraction,
#     row_int[i] -= pixel_byte[i] * step_int      step_int packing a step a lane.
# A small example with 2 lanes of 8 bits, offset 16, no fraction bits: weights
# (3, -5) pack to (3+16) + (-5+16) * 256 = 19 + 11 * 256; times a pixel byte 2
# that is 38 + 22 * 256: lane 0 holds 2 * 19, lane 1 holds 2 * 11, separate.
#
# The limits, checked and never assumed: a lane must stay within 0..2**64-1,
# or it would carry into its neighbour and corrupt it. With OFFSET = 32 * 2**40
# a lane of a row holds 0..64 * 2**40 as long as |W1[i][j]| <= 32, and a lane
# of acc at most 784 * 255 * 64 * 2**40 < 2**64. So |W1| must stay <= 32:
# `update` keeps a proven bound on max |W1| and raises Diverged before any
# step could break it (only a diverging run gets there; trained weights stay
# below 1). Weights are kept to 2**-40 (~1e-12), so the two engines drift apart
# by ~1e-8 over hundreds of steps, far below what changes a prediction.
# Only W1 is packed: the later layers read floats (hidden units, not bytes),
# and their dot products run in C through math.sumprod (Python 3.12+) or
# sum(map(mul, ...)) over the live units' rows.


FRACTION_BITS = 40
LANE_BITS = 64
SCALE = 1 << FRACTION_BITS               # 1.0 as a lane value
WEIGHT_LIMIT = 32                        # |W1| bound that keeps lanes in range
OFFSET = WEIGHT_LIMIT * SCALE            # makes every lane of a row non-negative
HALF_LANE = 1 << (LANE_BITS - 1)         # bias used to pack signed steps
BIG_ENDIAN = sys.byteorder == "big"      # array('Q') uses the machine's byte order
PIXEL_POSITIONS = tuple(range(N_PIXELS))


def sum_of_products(u, v):
    """u . v with the loop in C, like dot() (section 2)."""
    return sum(map(operator.mul, u, v))


sumprod = getattr(math, "sumprod", sum_of_products)   # math.sumprod: Python 3.12+


def inked_pixels(image):
    """(indices of the inked pixels, their bytes), with the loops in C:
    itertools.compress(items, selectors) keeps the items whose selector is
    nonzero, so compress(positions, image) lists the inked pixels' indices and
    compress(image, image) their values. (sparse_pixels without the / 255.)"""
    return list(itertools.compress(PIXEL_POSITIONS, image)), list(itertools.compress(image, image))


def pack_lanes(values):
    """sum_j values[j] << (64 j), for ints 0 <= values[j] < 2**64: the list
    written out as 8-byte words (in C, by array) and read back as one int."""
    words = array.array("Q", values)
    if BIG_ENDIAN:
        words.byteswap()
    return int.from_bytes(words.tobytes(), "little")


def unpack_lanes(number, n):
    """The n 64-bit lanes of a packed int, lane 0 first (the inverse of pack_lanes)."""
    words = array.array("Q", number.to_bytes(8 * n, "little"))
    if BIG_ENDIAN:
        words.byteswap()
    return words


# Floats into lanes and back, with the loops in C. The doubles from 4096 to 8192
# are spaced exactly 2**-40 apart, so for |x| < 2048 the double LANE_FLOAT + x
# is x rounded to a multiple of 2**-40 (half to even, as round() does), and its
# 64 bits, read as an integer, are FLOAT_BITS + round(x * 2**40), FLOAT_BITS
# being the bits of LANE_FLOAT itself. So adding LANE_FLOAT to each number and
# reading the doubles' bytes as one integer packs the numbers, lane by lane, but
# for one constant to take off; reading lanes back as doubles unpacks them.
LANE_FLOAT = 6144.0                  # 1.5 * 2**12
FLOAT_BITS = struct.unpack("<q", struct.pack("<d", LANE_FLOAT))[0]


def floats_to_lanes(values, base):
    """pack_lanes([round(x * 2**40) + offset for x in values]) for |x| < 2048, with
    base = pack_lanes([FLOAT_BITS - offset] * len(values)); every lane must stay
    within 0..2**64-1."""
    doubles = array.array("d", [LANE_FLOAT + x for x in values])
    if BIG_ENDIAN:
        doubles.byteswap()
    return int.from_bytes(doubles.tobytes(), "little") - base


def lanes_to_floats(number, n, base, scale=1.0):
    """The inverse of floats_to_lanes for n lanes: [(lane - offset) / 2**40 * scale].
    The lanes may hold signed numbers (offset 0) of size < 2**51."""
    doubles = array.array("d", (number + base).to_bytes(8 * n, "little"))
    if BIG_ENDIAN:
        doubles.byteswap()
    return [(x - LANE_FLOAT) * scale for x in doubles]       # x - LANE_FLOAT is exact


def live_units(a):
    """hidden_layer (section 6): the units with a > 0 and their values."""
    live = [j for j, v in enumerate(a) if v > 0.0]
    return live, [a[j] for j in live]


def rows_forward(x, rows, b):
    """layer_forward for the live inputs' rows of W, with the loops in C:
    a_k = b_k + sum_i x_i W[i][k], one sumprod per column of the live rows
    (zip(*rows) turns the rows into columns)."""
    if not rows:
        return list(b)
    return [bk + sumprod(column, x[1]) for column, bk in zip(zip(*rows), b)]


def rows_update(x, w, b, delta, learning_rate):
    """layer_update with the loops in C: each live input's row of W loses
    x_i * learning_rate * delta, b loses learning_rate * delta (delta dense)."""
    step = [learning_rate * g for g in delta]
    for i, xi in zip(*x):
        w[i] = [wk - xi * s for wk, s in zip(w[i], step)]
    for k, s in enumerate(step):
        b[k] -= s


def dense_from(delta, n):
    """The dense [n] form of a sparse vector (indices, values)."""
    full = [0.0] * n
    for j, g in zip(*delta):
        full[j] = g
    return full


class PackedActivations(Activations):
    """Activations, plus, for each later layer, the rows of W that its live
    inputs selected. (inputs[0] holds the pixel bytes, not bytes / 255.)"""
    __slots__ = ("live_rows",)

    def __init__(self, inputs, p, live_rows):
        Activations.__init__(self, inputs, p)
        self.live_rows = live_rows


class PackedNetwork:
    """A NeuralNetwork with W1 held as sizes[0] packed integers, one per pixel:
    the same forward, backward, update and learn, the same results to ~1e-8."""

    def __init__(self, network):
        if network.sizes[0] > N_PIXELS:
            raise MnistError("the packed engine reads at most %d inputs" % N_PIXELS)
        self.sizes = list(network.sizes)
        self.n_first = self.sizes[1]
        self.weight_base = pack_lanes([FLOAT_BITS - OFFSET] * self.n_first)  # (floats_to_lanes)
        self.sum_base = pack_lanes([FLOAT_BITS] * self.n_first)              # (offset 0)
        self.rows = [floats_to_lanes(row, self.weight_base) for row in network.weights[0]]
        self.weights = [None] + [[list(row) for row in w] for w in network.weights[1:]]
        self.biases = [list(b) for b in network.biases]
        self.all_half = pack_lanes([HALF_LANE] * self.n_first)
        self.weight_bound = self.max_abs_w1()      # proven: max |W1| <= weight_bound

    def unpacked_row(self, i):
        """Row i of W1 as floats (exact: every packed weight is k / 2**40)."""
        return lanes_to_floats(self.rows[i], self.n_first, self.weight_base)

    def max_abs_w1(self):
        """max |W1[i][j]|, counted exactly over every lane (~5 ms)."""
        extreme = 0
        for row in self.rows:
            lanes = unpack_lanes(row, self.n_first)
            extreme = max(extreme, max(lanes) - OFFSET, OFFSET - min(lanes))
        return extreme / SCALE

    def to_network(self):
        """The weights as a NeuralNetwork (section 6)."""
        return network_from([[self.unpacked_row(i) for i in range(len(self.rows))]] +
                            [[list(row) for row in w] for w in self.weights[1:]],
                            [list(b) for b in self.biases])

    def forward(self, image, drop=None):
        """NeuralNetwork.forward; drop(h), if given, thins each hidden layer's
        live units h (dropout, section 10). The lanes multiply whole pixel
        values: an image of floats is read rounded to whole numbers."""
        if not isinstance(image, (bytes, bytearray)):
            image = bytes(int(v + 0.5) for v in image)
        indices, pixels = inked_pixels(image)
        # a1 = x @ W1 + b1. In C: acc = sum over inked pixels of byte_i * row_int[i],
        # so lane j of acc = sum_i byte_i * (W1[i][j] * 2**40 + OFFSET).
        acc = sum(map(operator.mul, pixels, map(self.rows.__getitem__, indices)))
        lanes = unpack_lanes(acc, self.n_first)
        offsets = OFFSET * sum(pixels)               # what the offsets added to each lane
        unscale = 1.0 / (255 * SCALE)                # x_i = byte_i / 255, weights * 2**40
        a = [(lane - offsets) * unscale + b for lane, b in zip(lanes, self.biases[0])]
        inputs = [(indices, pixels)]
        live_rows = [None]
        for w, b in zip(self.weights[1:], self.biases[1:]):
            h = live_units(a)                                    # h = relu(a), sparse
            if drop is not None:
                h = drop(h)
            rows = [w[j] for j in h[0]]
            inputs.append(h)
            live_rows.append(rows)
            a = rows_forward(h, rows, b)                         # a = h @ W + b
        return PackedActivations(inputs, softmax(a), live_rows)

    def backward(self, acts, label):
        """NeuralNetwork.backward, with the dot products in C."""
        delta = output_delta(acts.p, label)                      # dz = p - onehot(y)
        deltas = [dense(delta)]
        for l in range(len(self.sizes) - 2, 0, -1):
            live = acts.inputs[l][0]
            deltas.append((live, [sumprod(row, delta) for row in acts.live_rows[l]]))
            delta = dense_from(deltas[-1], self.sizes[l])        # W @ delta at the live units
        return deltas[::-1]

    def update(self, acts, deltas, learning_rate):
        """NeuralNetwork.update: the later layers with rows_update, W1 packed."""
        for l in range(1, len(self.sizes) - 1):
            delta = dense_from(deltas[l], self.sizes[l + 1])
            rows_update(acts.inputs[l], self.weights[l], self.biases[l], delta, learning_rate)
        live, da = deltas[0]
        indices, pixels = acts.inputs[0]
        b1 = self.biases[0]
        for j, g in zip(live, da):
            b1[j] -= learning_rate * g
        # W1 -= lr * outer(x, da), x_i = byte_i / 255: lane j of row i drops by
        # byte_i * step_j lane units, step_j = round(lr * da_j * 2**40 / 255).
        to_lanes = learning_rate * SCALE / 255.0
        if da:     # the largest change any weight can see, for the range proof
            self.check_range((max(map(abs, da)) * to_lanes + 1) * max(pixels) / SCALE)
        step_int = self.packed_step(live, da, to_lanes)
        # A negative step borrows from the lane above and a positive one carries
        # into it, but the borrows and carries cancel exactly while every lane
        # stays in range, which check_range has just made sure of.
        rows = self.rows
        for i, v in zip(indices, pixels):
            rows[i] -= v * step_int

    def packed_step(self, live, values, to_lanes):
        """sum_j round(values_j * to_lanes) << (64 j) over the live lanes j. pack_lanes
        takes lanes 0..2**64-1, so each signed step is stored plus 2**63, and
        all_half (2**63 in every lane) is subtracted after packing: integer
        arithmetic is exact, so the result is the signed steps, lane by lane."""
        steps = [HALF_LANE] * self.n_first
        for j, g in zip(live, values):
            steps[j] = HALF_LANE + round(g * to_lanes)
        return pack_lanes(steps) - self.all_half

    def first_gradients(self, pending, scale=1.0):
        """W1's summed gradient over a batch's (acts, deltas), times scale, as
        {row i: [floats]}: sum of outer(x, da) with x_i = byte_i / 255, added up
        in lanes as update adds its steps, then unpacked once per row."""
        sums = {}
        for acts, deltas in pending:
            step_int = self.packed_step(*deltas[0], SCALE / 255.0)
            for i, v in zip(*acts.inputs[0]):
                sums[i] = sums.get(i, 0) + v * step_int
        return {i: lanes_to_floats(total, self.n_first, self.sum_base, scale)
                for i, total in sums.items()}

    def add_to_row(self, i, change):
        """Row i of W1 += change (floats), in lanes: each lane of the row gains
        round(change_j * 2**40), signed, as update's steps are added."""
        self.check_range(max(max(change), -min(change)) + 1.0 / SCALE)
        self.rows[i] += floats_to_lanes(change, self.sum_base)

    def set_row(self, i, values):
        """Row i of W1 = values (floats, |values| < WEIGHT_LIMIT)."""
        largest = max(max(values), -min(values))
        if not largest < WEIGHT_LIMIT:
            raise Diverged("a first-layer weight of %g is past the packed engine's +-%d"
                           % (largest, WEIGHT_LIMIT))
        self.rows[i] = floats_to_lanes(values, self.weight_base)
        self.weight_bound = max(self.weight_bound, largest)

    def learn(self, acts, label, learning_rate):
        self.update(acts, self.backward(acts, label), learning_rate)

    def predict(self, image):
        return self.forward(image_values(image, self.sizes[0])).p

    def check_range(self, change):
        """Keep the proof that |W1| <= WEIGHT_LIMIT through a change of at most
        `change` to any weight. The bound grows by each step's largest change;
        when it would pass the limit, the weights are counted exactly (rare)."""
        if self.weight_bound + change > WEIGHT_LIMIT:
            self.weight_bound = self.max_abs_w1()
            if self.weight_bound + change > WEIGHT_LIMIT:
                raise Diverged("training diverged: first-layer weights are about to pass "
                               "+-%d, the packed engine's range" % WEIGHT_LIMIT)
        self.weight_bound += change


def as_network(engine):
    """The NeuralNetwork an engine holds (the packed engine's unpacked)."""
    return engine.to_network() if isinstance(engine, PackedNetwork) else engine


def make_engine(network, name="auto"):
    """`network` (a copy) on an engine: 'lists' (Part I's NeuralNetwork: the
    reference, and PyPy's fastest), 'packed' (CPython's fastest), or 'auto',
    the fastest for the Python running it. Every engine trains, predicts and
    saves as NeuralNetwork does."""
    if name == "auto":
        name = "lists" if ON_PYPY else "packed"
    if name == "packed":
        return PackedNetwork(network)
    if name == "lists":
        return copy_network(as_network(network))
    raise MnistError("unknown engine %r (choose auto, lists or packed)" % name)


class PackedTrainer(Trainer):
    """Section 10's Trainer for the packed engine: the same steps, with W1's rows
    read, written and summed through their packed integers."""

    def inked(self, image):
        return list(itertools.compress(PIXEL_POSITIONS, image))

    def dropout_forward(self, image, rng):
        rate = self.options.dropout
        return self.model.forward(image, lambda h: drop_units(h, rate, rng))

    def read_row(self, i):
        return self.model.unpacked_row(i)

    def add_to_row(self, i, change):
        self.model.add_to_row(i, change)

    def set_row(self, i, values):
        self.model.set_row(i, values)

    def network_copy(self):
        return self.model.to_network()

    def first_gradients(self, pending, scale):
        return self.model.first_gradients(pending, scale)


def make_trainer(engine, options, seed, data=None, resting=None):
    """The Trainer that drives an engine (section 10's, or the packed engine's)."""
    kind = PackedTrainer if isinstance(engine, PackedNetwork) else Trainer
    return kind(engine, options, seed, data, resting)


# =============================================================================
# 12. An epoch's bookkeeping, and several processes
# =============================================================================
# The tool runs the lesson's epoch_steps and records each image's figures;
# with --workers it runs it in several processes at once (see below).

PROGRESS_EVERY = 200         # images between calls of a progress callback
LOSS_DIVERGED = 1e6          # a loss beyond this (or nan) means the weights blew up


@dataclasses.dataclass
class EpochStats:
    """One epoch's figures, measured while training (the loss and accuracy are
    those of each image's forward pass, before its update)."""
    epoch: int                      # 1-based
    learning_rate: float
    loss_sum: float = 0.0
    seen: int = 0
    correct: int = 0
    updated: int = 0                # images that got a backward pass and update
    skipped: int = 0                # images already mastered
    seconds: float = 0.0
    validation_accuracy: float = -1.0   # -1: not measured
    test_accuracy: float = -1.0

    @property
    def loss(self):
        return self.loss_sum / max(self.seen, 1)

    @property
    def train_accuracy(self):
        return self.correct / max(self.seen, 1)

    def add(self, other):
        """Count another share of the same epoch in."""
        for name in ("loss_sum", "seen", "correct", "updated", "skipped"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def record(stats, label, p, learned):
    """Count one trained image into stats; Diverged if training diverged."""
    loss = cross_entropy(p, label)
    if not loss < LOSS_DIVERGED:           # also true for nan
        raise Diverged("training diverged in epoch %d: the loss became %s"
                       % (stats.epoch, loss))
    stats.loss_sum += loss
    stats.seen += 1
    stats.correct += argmax(p) == label
    if learned:
        stats.updated += 1
    else:
        stats.skipped += 1


def train_share(trainer, data, recipe, epoch, start, stop, stats, halt=None, progress=None,
                order=None):
    """The lesson's epoch_steps from position start to stop, each image counted
    into stats. After each (mini-)batch, halt() may say stop there. Returns
    the position reached. (order: the epoch's order, if drawn already.)"""
    trainer.start(epoch, start, learning_rate_at(recipe, epoch))
    batch = trainer.options.batch_size
    for position, label, p, learned in epoch_steps(trainer, data, recipe, epoch, start, stop,
                                                   order):
        record(stats, label, p, learned)
        if progress is not None and position % PROGRESS_EVERY == 0:
            progress(position)
        if halt is not None and (position + 1) % batch == 0 and halt():
            trainer.finish()
            return position + 1
    trainer.finish()
    return stop


def answers(engine, data, start=0, stop=None, progress=None):
    """(guesses, confidences): the digit with the largest probability, and that
    probability, for images start..stop of data."""
    guesses, confidences = [], []
    for k in range(start, len(data) if stop is None else stop):
        p = engine.forward(data.image(k)).p
        guess = argmax(p)
        guesses.append(guess)
        confidences.append(p[guess])
        if progress is not None and k % PROGRESS_EVERY == 0:
            progress(k)
    return guesses, confidences


# Several processes: with --workers N, N processes (this one and N - 1
# helpers, one per core) share each epoch out in rounds. The plain loop, for
# one process, is the lesson's epoch_steps:
#     for each image of the epoch's order:  forward, and unless mastered, learn
# A round, for N processes: all start from the same weights W; each runs that
# loop over its own consecutive share of the round's images; then this process
# combines their changes d_k = W_k - W (k = 1..N) into the next round's weights:
#   - the first layer (W1, b1) takes the SUM of the changes, W + d_1 + ... + d_N,
#     except along the mean image x_mean (the training images' average): there
#     the response a1 = x_mean @ W1 + b1 moves by the MEAN of the N processes'
#     moves instead of their sum. That is one step on x_mean as section 6 takes
#     them (W1 -= lr * outer(x, delta), b1 -= lr * delta), with lr = (N - 1) / N
#     and delta = (a1 after the sum - a1 before) / (1 + |x_mean|**2);
#   - every later layer takes the MEAN of the changes, W + (d_1 + ... + d_N) / N.
# With N = 1 there are no helpers and no rounds: the plain loop itself.
# Why: an image changes only its ~150 inked pixels' rows of W1, so the
# processes mostly learn different things, and the sum keeps each image's
# whole step, as one process would. But every image also pulls on what all
# images share -- the mean image's response, the later layers -- and there
# each process corrects the same error; N corrections of one error overshoot
# like a gradient step N times too long. Summing everything diverged with 4
# and 8 processes even in rounds of 50 images a process; the sum times c was
# stable at c x N = 2 and diverged at 3.
# A round holds ROUND_UPDATES updates of all processes together, estimated:
# ROUND_UPDATES / the fraction of images updated so far in the epoch (at its
# start, in the previous epoch; the first round counts every image). Mastery
# leaves fewer images to update each epoch, so rounds grow: 53 of them to 98%
# with two processes (20 in the first epoch, 3 in the tenth).
# Measured (N processes simulated in one, with these functions: the weights
# are exactly those of N real ones, tests/test_workers.py; all 60,000 images,
# 10 epochs, seeds 1, 2, 3):
#     N   test accuracy after 10 epochs   mean     98% first at epoch
#     1   98.23 / 98.22 / 98.31%          98.25%   7, 6, 6    (the plain loop)
#     2   98.19 / 98.31 / 98.12%          98.21%   7, 6, 6
#     4   98.19 / 98.18 / 98.13%          98.17%   7, 6, 6
#     8   98.17 / 98.21 / 98.13%          98.17%   6, 5, 6
#     16  97.78 / 98.20 / 97.94%          97.97%   8, 6, never
# against, seed 1: the mean of all changes (the earlier --workers), 97.95%,
# 97.92%, 97.71% with 2, 4, 8, and 4 and 8 never reach 98%; the sum times
# 2/N, 98.08% with 4 and with 8, 98% at epoch 8 (README, "Speed", has more).
# The weights travel through shared memory (multiprocessing.shared_memory),
# a slot per process, 8 bytes a weight: the packed engine's rows as their
# integers' bytes (int.to_bytes, int.from_bytes), the rest as floats (struct),
# all in C; the pipes carry only commands and each round's figures. A round's
# exchange measured ~10 ms here (tests/bench.py: 11 ms on CPython, 9.5 ms on
# PyPy), against ~0.4 s of training in a first-epoch round of 1,000 images a
# process on CPython.
# The same N and seed repeat a run exactly; Ctrl-C, or a helper lost, undoes
# the unfinished round, so a checkpoint resumes exactly with the same N (and
# with another N, starts its rounds there). Momentum, Adam and weight decay
# keep a state for every weight that N processes would each keep apart: they
# are refused with --workers; mini-batches, dropout and distortions work (each
# image's randomness comes from its place in the epoch, section 9).

ROUND_UPDATES = 2000         # updates in one round, all processes together (estimated)
WORKER_PATIENCE = 120.0      # seconds a helper may take, beyond 10x this process's share
POLL_EVERY = 64              # batches between a helper's looks for an abort (each ~2-5 us)


def round_images(so_far, previous, batch_size):
    """How many images one round trains on: ROUND_UPDATES over the fraction of
    images updated lately -- in this epoch so far (so_far: its EpochStats), or
    at an epoch's start in the previous one (previous; None before the first
    epoch, which counts every image) -- in whole mini-batches."""
    recent = so_far if so_far.seen else previous
    fraction = 1.0 if recent is None else max(recent.updated, 1) / max(recent.seen, 1)
    images = math.ceil(ROUND_UPDATES / fraction)
    return -(-images // batch_size) * batch_size


def mean_image(data):
    """The average of data's images, pixel by pixel, rounded to bytes: x_mean."""
    return bytes(round(sum(data.images[i::N_PIXELS]) / max(len(data), 1))
                 for i in range(N_PIXELS))


class Weights:
    """A copy of an engine's weights: `first`, the rows of W1 (the packed
    engine's integers, or lists of floats), and `later`, every other number in
    one array of floats: b1, then each later layer's W row by row and its b."""
    __slots__ = ("first", "later")

    def __init__(self, first, later):
        self.first, self.later = first, later


def first_rows(engine):
    return engine.rows if isinstance(engine, PackedNetwork) else engine.weights[0]


def later_values(engine):
    """b1, then each later layer's W row by row and its b, as one array."""
    values = array.array("d", engine.biases[0])
    for w, b in zip(engine.weights[1:], engine.biases[1:]):
        for row in w:
            values.extend(row)
        values.extend(b)
    return values


def set_later_values(engine, values):
    """later_values, set back in place (a Trainer's view of the lists stays valid)."""
    at = 0
    for row in [engine.biases[0]] + [r for w, b in zip(engine.weights[1:], engine.biases[1:])
                                     for r in w + [b]]:
        row[:] = values[at:at + len(row)]
        at += len(row)


def copy_weights(engine):
    rows = first_rows(engine)
    first = list(rows) if isinstance(engine, PackedNetwork) else [list(row) for row in rows]
    return Weights(first, later_values(engine))


def set_weights(engine, weights):
    """Make engine's weights those of a Weights (the packed engine's range
    proof, weight_bound, is the caller's to set)."""
    if isinstance(engine, PackedNetwork):
        engine.rows = list(weights.first)
    else:
        for row, values in zip(engine.weights[0], weights.first):
            row[:] = values
    set_later_values(engine, weights.later)


def slot_size(sizes):
    """The bytes of one process's slot: 8 for every weight and bias (a packed
    row of n lanes is 8n bytes too)."""
    return 8 * sum(n_in * n_out + n_out for n_in, n_out in zip(sizes, sizes[1:]))


def write_slot(buffer, engine):
    """engine's weights into a shared buffer: each row of W1 (8 bytes a
    weight: the packed integer's bytes, or floats), then later_values. struct
    reads and writes the buffer in place, in C."""
    width = 8 * engine.sizes[1]
    if isinstance(engine, PackedNetwork):
        layout = struct.Struct("%ds" % width)
        for i, row in enumerate(engine.rows):
            layout.pack_into(buffer, i * width, row.to_bytes(width, "little"))
    else:
        layout = struct.Struct("%dd" % engine.sizes[1])
        for i, row in enumerate(engine.weights[0]):
            layout.pack_into(buffer, i * width, *row)
    later = later_values(engine)
    struct.pack_into("%dd" % len(later), buffer, engine.sizes[0] * width, *later)


def read_slot(buffer, engine):
    """The Weights that write_slot wrote into buffer (engine: one of the same
    kind and sizes)."""
    n_in, width = engine.sizes[0], 8 * engine.sizes[1]
    if isinstance(engine, PackedNetwork):
        layout = struct.Struct("%ds" % width)
        first = [int.from_bytes(layout.unpack_from(buffer, i * width)[0], "little")
                 for i in range(n_in)]
    else:
        layout = struct.Struct("%dd" % engine.sizes[1])
        first = [list(layout.unpack_from(buffer, i * width)) for i in range(n_in)]
    count = slot_size(engine.sizes) // 8 - n_in * engine.sizes[1]
    return Weights(first, array.array("d", struct.unpack_from("%dd" % count, buffer,
                                                              n_in * width)))


def add_changes(engine, start, theirs):
    """engine += theirs - start, weight by weight: another process's changes
    since start, added to this one's (exactly, for the packed rows: integers)."""
    rows = first_rows(engine)
    for i, (row, before) in enumerate(zip(theirs.first, start.first)):
        if row != before:                       # a row it never touched adds nothing
            if isinstance(engine, PackedNetwork):
                rows[i] += row - before
            else:
                mine = rows[i]
                for j in range(len(mine)):
                    mine[j] += row[j] - before[j]
    later = later_values(engine)
    for k, (value, before) in enumerate(zip(theirs.later, start.later)):
        later[k] += value - before
    set_later_values(engine, later)


def first_response(engine, rows, b1, x):
    """a1 = x @ W1 + b1, with rows as W1's rows, for x as engine.forward
    holds it in inputs[0] (the packed engine's pixel bytes, or bytes / 255)."""
    if isinstance(engine, PackedNetwork):                 # as PackedNetwork.forward
        lanes = unpack_lanes(sum(map(operator.mul, x[1], map(rows.__getitem__, x[0]))),
                             engine.n_first)
        offsets = OFFSET * sum(x[1])
        return [(lane - offsets) / (255 * SCALE) + b for lane, b in zip(lanes, b1)]
    return layer_forward(x, rows, b1)


def share_out(engine, start, n, x_mean, bound=None):
    """Turn the sum of n processes' changes since start, which engine holds
    (its own, and add_changes for each other one), into the round's result
    (see above): along x_mean, the mean of the changes to the first layer;
    in every later layer, the mean of the changes. For the packed engine,
    bound may prove |W1| <= bound after the sum (None: none known)."""
    if isinstance(engine, PackedNetwork):
        # Unless bound proves the sum within range, count W1's range afresh
        # (~10 ms): a lane pushed out of range shows as a weight far beyond
        # the limit (or the integer goes negative), never as one within it.
        if bound is None or bound > WEIGHT_LIMIT:
            try:
                bound = engine.max_abs_w1()
            except OverflowError:
                bound = math.inf
        if bound > WEIGHT_LIMIT:
            raise MnistError("training diverged: the processes' summed changes take first-layer "
                             "weights past +-%d; lower the learning rate" % WEIGHT_LIMIT)
        engine.weight_bound = bound
    n_first = engine.sizes[1]
    acts = engine.forward(x_mean)
    x = acts.inputs[0]
    moved = [after - before for after, before in zip(
        first_response(engine, first_rows(engine), engine.biases[0], x),
        first_response(engine, start.first, start.later[:n_first], x))]
    length2 = 1.0 + sum((v / 255.0) ** 2 for v in x_mean)    # 1 + |x_mean|**2
    deltas = [(list(range(n_first)), [m / length2 for m in moved])]
    deltas += [([], [])] * (len(engine.sizes) - 2)      # later layers: no step here
    engine.update(acts, deltas, (n - 1) / n)            # a1(x_mean) keeps 1/n of its move
    later = later_values(engine)
    for k in range(n_first, len(later)):
        later[k] = start.later[k] + (later[k] - start.later[k]) / n
    set_later_values(engine, later)


def order_of(orders, n, seed, epoch):
    """epoch_order, kept in the dict orders for the epoch at hand: a process
    trains a share of it in every round."""
    if epoch not in orders:
        orders.clear()
        orders[epoch] = epoch_order(n, seed, epoch)
    return orders[epoch]


def rest_changes(resting, images, before):
    """[(image, until, confidence)] for those of images whose rest changed
    since before (their `until` values then): what training them changed in
    a Resting table, found without reading the whole table."""
    return [(k, resting.until[k], resting.confidence[k])
            for k, old in zip(images, before) if resting.until[k] != old]


def serve_main_process(conn, slots, datasets, sizes, engine_name, recipe_fields,
                       option_fields):
    """worker_main's loop: train or test as told, send back the results. The
    weights to start from are in slots[0], the main process's slot; a trained
    share's weights go into slots[1], this helper's."""
    data = {name: Dataset(*pair) for name, pair in datasets.items()}
    empty = network_from([[[0.0] * n_out for _ in range(n_in)] for n_in, n_out in
                          zip(sizes, sizes[1:])], [[0.0] * n for n in sizes[1:]])
    engine = make_engine(empty, engine_name)
    recipe = Recipe(**recipe_fields)
    trainer = make_trainer(engine, Options(**option_fields), recipe.seed, data["train"])
    orders, images, before = {}, [], []
    looks = itertools.count(1)

    def abort_sent():
        """Whether the main process has said abort, looked at every POLL_EVERY
        batches: a look costs as much as 5-10% of a cheap image on PyPy."""
        return next(looks) % POLL_EVERY == 0 and conn.poll()
    while True:
        command, args, bound = conn.recv()
        if command == "quit":
            return
        if command == "abort":                          # came after this share was done
            continue
        set_weights(engine, read_slot(slots[0].buf, engine))
        if bound is not None:
            engine.weight_bound = bound                 # proven by the main process
        try:
            if command == "train":
                epoch, start, stop, rested = args
                order = order_of(orders, len(data["train"]), recipe.seed, epoch)
                if trainer.resting is not None:
                    trainer.resting.apply(rested)
                    images = order[start:stop]
                    before = [trainer.resting.until[k] for k in images]
                stats = EpochStats(epoch + 1, learning_rate_at(recipe, epoch))
                reached = train_share(trainer, data["train"], recipe, epoch, start, stop,
                                      stats, abort_sent, order=order)
                if reached < stop:
                    conn.recv()                         # the abort that stopped it
                    conn.send(("aborted", None))
                    continue
                rested = rest_changes(trainer.resting, images, before) if images else []
                write_slot(slots[1].buf, engine)
                conn.send(("trained", (dataclasses.astuple(stats), rested,
                                       getattr(engine, "weight_bound", None))))
            else:                                       # "test"
                name, start, stop = args
                conn.send(("tested", answers(engine, data[name], start, stop)))
        except MnistError as e:
            conn.send(("error", str(e)))


def worker_main(conn, inherited, slot_names, *args):
    """A helper process: answers the main process's commands until told to
    quit, or until the main process is gone. Ctrl-C goes to the whole process
    group; a helper leaves it to the main process, which stops the helpers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for other_end in inherited:         # (see Helper)
        other_end.close()
    try:
        slots = [multiprocessing.shared_memory.SharedMemory(name) for name in slot_names]
        serve_main_process(conn, slots, *args)
    except (EOFError, OSError):                          # the main process is gone
        pass


class WorkerLost(MnistError):
    """A helper process died or stopped answering."""


class Helper:
    """One helper process and the pipe to it."""

    def __init__(self, context, number, earlier, slot_names, args):
        self.number = number
        self.conn, child = context.Pipe()
        # A process started by fork inherits every open pipe end of this one:
        # its own pipe's other end and the earlier helpers'. It closes them
        # first thing, since a pipe reports that its other end is gone only
        # once every copy of that end is closed.
        inherited = [h.conn for h in earlier] + [self.conn]
        if context.get_start_method() != "fork":
            inherited = []                    # spawn and forkserver inherit nothing
        self.process = context.Process(target=worker_main, daemon=True,
                                       args=(child, inherited, slot_names) + args,
                                       name="mnist_pure worker %d" % number)
        self.process.start()
        child.close()

    def send(self, command, args, bound=None):
        """A command to the helper; WorkerLost if it is gone (between two
        rounds, say: a round is short)."""
        try:
            self.conn.send((command, args, bound))
        except OSError:                     # BrokenPipeError, ConnectionResetError
            raise self.lost()

    def lost(self):
        """WorkerLost, saying how the process ended."""
        self.process.join(1.0)
        code = self.process.exitcode
        how = ("was killed by signal %d" % -code if code is not None and code < 0 else
               "exited with code %s" % code if code is not None else "stopped answering")
        return WorkerLost("worker process %d %s" % (self.number, how))


class Workers:
    """N processes training and testing together: this one and N - 1 helpers,
    each with a slot of shared memory for its weights (slots[0] is this
    process's). close() removes the slots; if this process is killed outright,
    multiprocessing's resource tracker removes them."""

    def __init__(self, n, datasets, sizes, engine_name, recipe, options, start_method=None):
        if options.use_optimizer():
            raise MnistError("--workers shares out plain and mini-batch SGD; momentum, Adam "
                             "and weight decay keep a state for every weight, which runs "
                             "with --workers 1")
        context = multiprocessing.get_context(start_method)
        args = ({name: (d.images, d.labels) for name, d in datasets.items()}, list(sizes),
                engine_name, dataclasses.asdict(recipe), dataclasses.asdict(options))
        self.helpers, self.slots = [], []
        self.orders, self.unsent = {}, None     # None: the helpers know no rests yet
        self.size = n
        self.x_mean = mean_image(datasets["train"])
        tag = "mnist_pure_%d_%s" % (os.getpid(), os.urandom(4).hex())
        try:
            for k in range(n):
                self.slots.append(multiprocessing.shared_memory.SharedMemory(
                    "%s_%d" % (tag, k), create=True, size=slot_size(sizes)))
            for number in range(1, n):
                names = (self.slots[0].name, self.slots[number].name)
                self.helpers.append(Helper(context, number, list(self.helpers), names, args))
        except BaseException:
            self.close()
            raise

    def shares(self, start, end, batch):
        """[start, end) cut in self.size consecutive shares, whole batches each."""
        size = -(-(end - start) // self.size)
        size = -(-size // batch) * batch
        return [(min(end, start + k * size), min(end, start + (k + 1) * size))
                for k in range(self.size)]

    def publish(self, engine):
        """Put engine's weights where the helpers read them; the packed
        engine's proven bound on |W1|, which goes with them (or None)."""
        write_slot(self.slots[0].buf, engine)
        return getattr(engine, "weight_bound", None)

    def collect(self, busy, stop, patience, on_stop):
        """{helper: its reply} from every busy helper; WorkerLost if one dies
        or takes longer than patience seconds. on_stop() is called once if
        stop is requested meanwhile."""
        replies, deadline, stopped = {}, time.monotonic() + patience, False
        busy = list(busy)
        while busy:
            waiting = [h.conn for h in busy] + [h.process.sentinel for h in busy]
            multiprocessing.connection.wait(waiting, timeout=0.2)
            for helper in list(busy):
                if helper.conn.poll():
                    try:
                        replies[helper] = helper.conn.recv()
                    except (EOFError, OSError):
                        raise helper.lost()
                    if replies[helper][0] == "error":
                        raise MnistError(replies[helper][1])
                    busy.remove(helper)
                elif not helper.process.is_alive():
                    raise helper.lost()
            if stop is not None and stop.requested and not stopped:
                stopped = True
                on_stop()
            if time.monotonic() > deadline:
                raise busy[0].lost()
        return replies

    def train_round(self, trainer, data, recipe, epoch, start, end, stats, stop, progress=None):
        """Train images start..end of the epoch, shared out; combine the
        processes' changes into trainer's engine (see above) and count the
        round into stats. Returns end, or start if stop was requested (the
        round is then undone, so that the run resumes exactly from its
        beginning; likewise, before WorkerLost or another error goes up)."""
        engine, resting = trainer.model, trainer.resting
        before, bound = copy_weights(engine), self.publish(engine)
        shares = self.shares(start, end, trainer.options.batch_size)
        order = order_of(self.orders, len(data), recipe.seed, epoch)
        rested, images = [], []             # what rests that the helpers do not know
        if resting is not None:
            rested = self.unsent
            if rested is None:
                rested = resting.changes([0] * len(resting.until))
            images = order[start:end]
            saved = [(k, resting.until[k], resting.confidence[k]) for k in images]

        def undo():
            set_weights(engine, before)
            if bound is not None:
                engine.weight_bound = bound
            for k, until, confidence in (saved if resting is not None else []):
                resting.until[k], resting.confidence[k] = until, confidence
            return start

        def abort():
            for helper in self.helpers:
                helper.send("abort", None)
        try:
            for helper, (a, b) in zip(self.helpers, shares[1:]):
                helper.send("train", (epoch, a, b, rested), bound)
            own = EpochStats(stats.epoch, stats.learning_rate)
            clock = time.monotonic()
            first, last = shares[0]
            report = None if progress is None else (
                lambda position: progress(start + (position - first) * self.size))
            reached = train_share(trainer, data, recipe, epoch, first, last, own,
                                  lambda: stop.requested, report, order)
            if reached < last:
                abort()
            patience = WORKER_PATIENCE + 10 * (time.monotonic() - clock)
            replies = self.collect(self.helpers, stop, patience, abort)
            if any(reply[0] == "aborted" for reply in replies.values()) or reached < last:
                return undo()
            summed = None
            if bound is not None:       # |W + sum of (W_k - W)| <= |W_1| + sum of (|W_k| + |W|)
                summed = engine.weight_bound + sum(replies[h][1][2] + bound for h in self.helpers)
            for helper in self.helpers:
                add_changes(engine, before, read_slot(self.slots[helper.number].buf, engine))
            share_out(engine, before, self.size, self.x_mean, summed)
        except BaseException:
            undo()
            raise
        stats.add(own)
        for helper in self.helpers:
            figures, their_rested, _ = replies[helper][1]
            stats.add(EpochStats(*figures))
            if resting is not None:
                resting.apply(their_rested)
        if resting is not None:             # the helpers learn this round's rests next time
            self.unsent = rest_changes(resting, images, [until for _, until, _ in saved])
        return end

    def answers(self, engine, name, data, progress=None):
        """answers() over all of data, shared out (data is the dataset the
        helpers know by name)."""
        bound = self.publish(engine)
        shares = self.shares(0, len(data), 1)
        for helper, (a, b) in zip(self.helpers, shares[1:]):
            helper.send("test", (name, a, b), bound)
        first, last = shares[0]
        report = None if progress is None else (
            lambda k: progress(k * self.size, len(data)))
        guesses, confidences = answers(engine, data, first, last, report)
        replies = self.collect(self.helpers, None, WORKER_PATIENCE, None)
        for helper in self.helpers:
            guesses += replies[helper][1][0]
            confidences += replies[helper][1][1]
        return guesses, confidences

    def close(self):
        """Stop every helper, none left behind, and remove the shared memory."""
        for helper in self.helpers:
            try:
                helper.conn.send(("quit", None, None))
            except OSError:                 # it is gone already
                pass
        for helper in self.helpers:
            helper.process.join(2.0)
            if helper.process.is_alive():
                helper.process.terminate()
                helper.process.join(2.0)
            helper.conn.close()
        self.helpers = []
        for slot in self.slots:
            slot.close()
            slot.unlink()
        self.slots = []


# =============================================================================
# Part IV: looking inside
# =============================================================================

# =============================================================================
# 13. One step traced, every gradient checked
# =============================================================================
# --trace shows one training step with its numbers; --gradcheck compares every
# gradient of `backward` with what finite differences measure (the same check
# as tests/test_network.py), the standard way to catch a wrong derivation.

def norm(values):
    """The Euclidean length sqrt(sum v**2) of a vector."""
    return sum(v * v for v in values) ** 0.5


def bracketed(v):
    """A short vector as text: '[+0.10 -0.85 ...]'."""
    return "[" + " ".join("%+.2f" % a for a in v) + "]"


def pre_activations(network, image):
    """Each layer's a = input @ W + b for one image (the last one is z)."""
    acts = network.forward(image)
    return [layer_forward(x, w, b) for x, w, b in zip(acts.inputs, network.weights,
                                                      network.biases)]


def layer_names(n_layers):
    """('x', 'h1', ...) for each layer's input, ('a1', ..., 'z') for its output."""
    inputs = ["x"] + ["h%d" % l for l in range(1, n_layers)]
    outputs = ["a%d" % l for l in range(1, n_layers)] + ["z"]
    return inputs, outputs


def trace_step(network, image, label, learning_rate):
    """One training step of the reference network, told line by line: the
    forward pass (section 6's lines, summarised), the loss, the backward pass,
    the update, and the loss on the same image afterwards.
    Returns (lines of text, loss before, loss after). Changes `network`."""
    acts = network.forward(image)
    pre = pre_activations(network, image)
    deltas = network.backward(acts, label)
    p, n_layers = acts.p, len(network.weights)
    ins, outs = layer_names(n_layers)
    x = acts.inputs[0]
    loss, guess = cross_entropy(p, label), argmax(p)
    lines = ["one step of SGD on an image of a %d, learning rate %g, network %s"
             % (label, learning_rate, "-".join(map(str, network.sizes))),
             "%-26s[%d]  %d pixels inked (%.0f%%), values %.3f..%.3f"
             % ("x = pixels / 255", network.sizes[0], len(x[0]),
                100.0 * len(x[0]) / network.sizes[0], min(x[1] or [0]), max(x[1] or [0]))]
    for l in range(n_layers - 1):
        a, h = pre[l], acts.inputs[l + 1]
        lines.append("%-26s[%d]  min %+.3f  max %+.3f  (reads the %d nonzero rows of W%d)"
                     % ("%s = %s @ W%d + b%d" % (outs[l], ins[l], l + 1, l + 1), len(a),
                        min(a), max(a), len(acts.inputs[l][0]), l + 1))
        lines.append("%-26s[%d]  %d of %d units fired (> 0); the rest are 0"
                     % ("%s = relu(%s)" % (ins[l + 1], outs[l]), len(a), len(h[0]), len(a)))
    lines += ["%-26s[%d]   %s" % ("z = %s @ W%d + b%d" % (ins[-1], n_layers, n_layers),
                                   len(p), bracketed(pre[-1])),
              "%-26s[%d]   %s" % ("p = softmax(z)", len(p), bracketed(p)),
              "guess %d (p = %.3f); the answer is %d (p = %.3f)" % (guess, p[guess], label,
                                                                   p[label]),
              "%-26s%.4f" % ("loss = -ln p[%d]" % label, loss),
              "%-26s[%d]   %s" % ("dz = p - onehot(%d)" % label, len(p), bracketed(deltas[-1][1]))]
    for l in range(n_layers - 2, -1, -1):
        lines.append("%-26s[%d]  nonzero for the %d live units only"
                     % ("d%s = (W%d @ d%s) * [%s>0]" % (outs[l], l + 2, outs[l + 1], outs[l]),
                        network.sizes[l + 1], len(deltas[l][0])))
    lines.append("gradient norms (an outer product's norm is the product of its factors' norms):")
    for l in range(n_layers - 1, -1, -1):
        inp, delta = acts.inputs[l], deltas[l][1]
        lines.append("  |dW%d| = |%s| |d%s| = %.4f   |db%d| = |d%s| = %.4f   (nonzero: %d x %d)"
                     % (l + 1, ins[l], outs[l], norm(inp[1]) * norm(delta), l + 1, outs[l],
                        norm(delta), len(inp[0]), len(deltas[l][0])))
    network.update(acts, deltas, learning_rate)
    after = network.forward(image).p
    new_loss = cross_entropy(after, label)
    lines.append("update: every W -= %g * dW, every b -= %g * db" % (learning_rate, learning_rate))
    lines.append("same image after the update: loss %.4f -> %.4f (%s), p[%d] %.3f -> %.3f"
                 % (loss, new_loss, "down" if new_loss < loss else "NOT down", label, p[label],
                    after[label]))
    return lines, loss, new_loss


def loss_of(network, image, label):
    return cross_entropy(network.forward(image).p, label)


def analytic_gradients(network, image, label, kink):
    """{tensor name: [(vector, index, gradient)]}: every gradient `backward`
    gives, entry by entry: dW_l[i][j] = input_i delta_j, db_l = delta. W1's
    entries are listed for inked pixels only (for a blank one both sides are
    exactly 0), and a hidden layer's units with |a_j| < kink are left out of
    its own W and b: at ReLU's kink a = 0 the derivative does not exist, and a
    finite difference that crosses it measures nonsense."""
    acts = network.forward(image)
    deltas = network.backward(acts, label)
    pre = pre_activations(network, image)
    report = {}
    for l, (w, b) in enumerate(zip(network.weights, network.biases)):
        inputs = dict(zip(*acts.inputs[l]))
        delta = dict(zip(*deltas[l]))
        last = l == len(network.weights) - 1
        units = [j for j in range(len(b)) if last or abs(pre[l][j]) > kink]
        rows = acts.inputs[0][0] if l == 0 else range(len(w))
        report["W%d" % (l + 1)] = [(w[i], j, inputs.get(i, 0.0) * delta.get(j, 0.0))
                                   for i in rows for j in units]
        report["b%d" % (l + 1)] = [(b, j, delta.get(j, 0.0)) for j in units]
    return report


def numeric_derivative(network, image, label, vector, index, step):
    """d(loss)/d(vector[index]) by centred differences,
        (L(w + step) - L(w - step)) / (2 step),   error O(step**2)."""
    saved = vector[index]
    vector[index] = saved + step
    up = loss_of(network, image, label)
    vector[index] = saved - step
    down = loss_of(network, image, label)
    vector[index] = saved
    return (up - down) / (2 * step)


def relative_error(analytic, numeric):
    """|a - n| / max(|a|, |n|, 1e-3): relative, except that gradients below 1e-3
    are compared absolutely (differences have no more digits to give there)."""
    return abs(analytic - numeric) / max(abs(analytic), abs(numeric), 1e-3)


def gradient_check(network, image, label, rng, per_tensor=60, step=1e-5):
    """{tensor name: (largest relative error, entries checked)} for one image:
    `per_tensor` random entries of each W, every entry of each b."""
    report = {}
    for name, entries in analytic_gradients(network, image, label, 100 * step).items():
        if len(entries) > per_tensor and name.startswith("W"):
            entries = rng.sample(entries, per_tensor)
        worst = max([relative_error(gradient, numeric_derivative(network, image, label,
                                                                 vector, index, step))
                     for vector, index, gradient in entries] or [0.0])
        report[name] = (worst, len(entries))
    return report


# =============================================================================
# Part V: the tool
# =============================================================================

import argparse
import errno
import hashlib
import http.server
import ipaddress
import json
import re
import shlex
import socket
import socketserver
import tempfile
import threading
import webbrowser

# =============================================================================
# 14. A training run: settings, checked data, training, testing
# =============================================================================

DEFAULT_MAX_TRAIN = 1000     # training images: seconds of CPU, ~93% accuracy
# The tool's recipe for a small training set: the lesson's, plus distortions
# (Part II) and the two choices that make them pay, a cooler start and more
# epochs (README, "Accuracy": on 1,000 images, 92.74% against 89.63%, seeds 1-3).
SMALL_SET = 10000            # up to this many training images ...
SMALL_SET_DISTORTION = "affine"    # ... each visit is distorted so,
SMALL_SET_EPOCHS = 12        # ... for this many epochs,
DISTORTED_RATE = 0.02        # ... starting at most at this rate
DEFAULT_MAX_TEST = 10000     # the whole test set (200 images would be too noisy a score)
INFINITY = float("inf")

# SHA-256 of the *decompressed* published files: a different file is only warned
# about, since Fashion-MNIST and others use the same names and format.
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte.gz":
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte.gz":
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz":
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def describe(error):
    """An exception as a short phrase, for a one-line message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def one_line(text):
    """text with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(text.split())


def idx_digests(dataset):
    """SHA-256 of the decompressed images and labels files the dataset came
    from (their headers rebuilt from its sizes)."""
    n = len(dataset)
    images = struct.pack(">IIII", 0x803, n, IMAGE_SIDE, IMAGE_SIDE) + dataset.images
    labels = struct.pack(">II", 0x801, n) + dataset.labels
    return hashlib.sha256(images).hexdigest(), hashlib.sha256(labels).hexdigest()


def load_checked_mnist(data_dir, warn):
    """load_mnist, warning (never failing) for files that are not MNIST's own."""
    train, test = load_mnist(data_dir)
    for dataset, names in ((train, TRAIN_FILES), (test, TEST_FILES)):
        for name, digest in zip(names, idx_digests(dataset)):
            if digest != MNIST_SHA256[name]:
                warn("warning: %s is not the published MNIST file (its SHA-256 differs); "
                     "using it anyway" % os.path.join(data_dir, name))
    return train, test


@dataclasses.dataclass
class Settings:
    """Everything one run needs, filled from the command line and passed down
    as one object: the recipe (section 1), the options of Part II, the engine,
    and where things come from and go."""
    max_train: int = DEFAULT_MAX_TRAIN
    max_test: int = DEFAULT_MAX_TEST
    hidden: tuple = DEFAULT_SIZES[1:-1]      # hidden layer sizes
    epochs: int = None                # None: chosen from the training-set size
    learning_rate: float = None       # None: chosen from the training-set size
    default_rate: float = None        # the rate choose_defaults picks (for advice)
    lr_decay: float = DEFAULT_LR_DECAY
    decay_every: int = DEFAULT_DECAY_EVERY
    mastery: float = DEFAULT_MASTERY
    seed: int = DEFAULT_SEED
    batch_size: int = None            # None: chosen by the optimizer (section 10)
    optimizer: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    dropout: float = 0.0
    augment: str = None               # a name in DISTORTIONS, "" for none, None: chosen
    rest_sure: bool = True            # sure images rest from forward passes (section 10)
    validation: int = 0               # images held out of training for early stopping
    patience: int = 0                 # stop after this many epochs without progress
    engine: str = "auto"              # "lists", "packed" or "auto"
    workers: int = 1                  # processes (section 12)
    start_method: str = None          # how they start: None for the platform's default
    data_dir: str = DATA_DIR
    test_each_epoch: bool = False     # score the test set after every epoch too
    save: str = ""                    # paths: "" for none
    load: str = ""
    resume: str = ""
    checkpoint: str = ""
    json: bool = False
    quiet: bool = False               # no progress bars
    show: int = 25                    # test digits drawn after training
    show_mistakes: int = 0
    plot: str = ""
    plot_digits: str = ""
    plot_weights: str = ""

    def sizes(self):
        return [N_PIXELS] + list(self.hidden) + [N_DIGITS]

    def choose_defaults(self, n_train):
        """Fill in what the command line left to be chosen by the number of
        training images (section 14's SMALL_SET recipe, section 7's rate)."""
        small = n_train <= SMALL_SET
        if self.augment is None:
            self.augment = SMALL_SET_DISTORTION if small else ""
        if self.epochs is None:
            self.epochs = SMALL_SET_EPOCHS if small and self.augment else DEFAULT_EPOCHS
        if self.batch_size is None:
            self.batch_size = OPTIMIZERS[self.optimizer](self.options()).default_batch(n_train)
        plain = default_learning_rate(n_train)
        if self.augment:
            plain = min(DISTORTED_RATE, plain)
        batch = min(self.batch_size, max(n_train, 1))   # a batch past the set is the set
        rate = OPTIMIZERS[self.optimizer](self.options()).default_rate(plain, batch)
        if rate != plain:          # a rate the rule made: 0.0113, not 0.0113137 (the plain
            rate = float("%.3g" % rate)     # rate stays as measured: 0.0144337 at 60,000)
        self.default_rate = rate
        if self.learning_rate is None:
            self.learning_rate = self.default_rate

    def recipe(self):
        return Recipe(self.epochs, self.learning_rate, self.lr_decay, self.decay_every,
                      self.mastery, self.seed)

    def options(self):
        return Options(self.batch_size or 1, self.optimizer, self.momentum, self.nesterov,
                       self.weight_decay, self.dropout, self.augment,
                       self.rest_sure and 0 < self.mastery <= SURE)   # rests what mastery skips

    def engine_name(self):
        """The engine that will run: auto takes the fastest (packed on CPython,
        lists on PyPy)."""
        if self.engine != "auto":
            return self.engine
        return "lists" if ON_PYPY else "packed"


@dataclasses.dataclass
class TrainingState:
    """Where training stands: all a checkpoint needs to resume exactly."""
    epoch: int = 0                  # epochs completed
    position: int = 0               # images done in the current epoch
    running: EpochStats = None      # the current epoch's figures so far
    history: list = dataclasses.field(default_factory=list)
    # early stopping: the epoch with the best validation accuracy, and its weights
    best_epoch: int = 0
    best_accuracy: float = -1.0
    best_network: NeuralNetwork = None
    stopped_early: bool = False
    resting: Resting = None         # which sure images rest (section 10)
    optimizer: dict = None          # the optimizer's state (Trainer.saved_state)


class StopFlag:
    """Set (by the Ctrl-C handler) to end training after the current batch."""
    requested = False


@dataclasses.dataclass
class Evaluation:
    """Predictions on a dataset: labels, guesses and the guesses' probability."""
    labels: list
    guesses: list
    confidences: list

    @property
    def correct(self):
        return sum(1 for y, g in zip(self.labels, self.guesses) if y == g)

    @property
    def total(self):
        return len(self.labels)

    @property
    def accuracy(self):
        return self.correct / max(self.total, 1)

    def confusion(self):
        """matrix[true][guess] = how many images of digit `true` got `guess`."""
        matrix = [[0] * N_DIGITS for _ in range(N_DIGITS)]
        for y, g in zip(self.labels, self.guesses):
            matrix[y][g] += 1
        return matrix


def evaluate(engine, data, progress=None, workers=None, name="test"):
    """The network's guess, and how sure it was, for every image of data
    (shared out over the workers, which know data by its name, if given)."""
    if workers is not None:
        guesses, confidences = workers.answers(engine, name, data, progress)
    else:
        report = None if progress is None else (lambda k: progress(k, len(data)))
        guesses, confidences = answers(engine, data, progress=report)
    return Evaluation(list(data.labels), guesses, confidences)


def train_epoch(trainer, data, recipe, state, stop, progress=None, workers=None):
    """Train on data for the rest of epoch state.epoch; its EpochStats, or None
    when stop was requested first (state then says where training stopped)."""
    epoch = state.epoch
    stats = state.running or EpochStats(epoch + 1, learning_rate_at(recipe, epoch))
    state.running = stats
    clock = time.perf_counter() - stats.seconds
    bar = None if progress is None else (lambda position: progress(position, len(data)))
    try:
        if workers is None:
            state.position = train_share(trainer, data, recipe, epoch, state.position,
                                         len(data), stats, lambda: stop.requested, bar)
        while workers is not None and state.position < len(data) and not stop.requested:
            previous = state.history[-1] if state.history else None
            end = min(len(data), state.position +
                      round_images(stats, previous, trainer.options.batch_size))
            state.position = workers.train_round(trainer, data, recipe, epoch, state.position,
                                                 end, stats, stop, bar)
    finally:
        stats.seconds = time.perf_counter() - clock
    if state.position < len(data):
        return None
    trainer.settle()                # every row up to date before testing, saving, a new rate
    state.position, state.running = 0, None
    return stats


def fit(engine, data, held_out, settings, state, stop, progress=None, on_epoch=None,
        workers=None):
    """Train for settings.epochs, or until early stopping or a stop request.
    Returns the engine to keep: with early stopping, the best epoch's weights.

    Early stopping watches accuracy on held-out training images, never the test
    set (choosing by the test set would make its figure a flattering guess)."""
    recipe = settings.recipe()
    if settings.options().rest_sure and (state.resting is None or
                                          len(state.resting.until) != len(data)):
        state.resting = Resting(len(data))
    trainer = make_trainer(engine, settings.options(), recipe.seed, data, state.resting)
    if state.optimizer is not None:
        trainer.restore(state.optimizer)
    while state.epoch < recipe.epochs and not state.stopped_early:
        stats = train_epoch(trainer, data, recipe, state, stop, progress, workers)
        state.optimizer = trainer.saved_state()
        if stats is None:            # stopped inside an epoch: the model is the settled copy
            if trainer.optimizer is None:
                return engine
            return make_engine(trainer.settled_network(), settings.engine_name())
        if held_out is not None:
            stats.validation_accuracy = evaluate(engine, held_out, None, workers,
                                                 "held_out").accuracy
            if stats.validation_accuracy > state.best_accuracy:
                state.best_epoch, state.best_accuracy = stats.epoch, stats.validation_accuracy
                state.best_network = copy_network(as_network(engine))
            elif settings.patience and stats.epoch - state.best_epoch >= settings.patience:
                state.stopped_early = True
        state.history.append(stats)
        state.epoch += 1
        if on_epoch is not None:
            on_epoch(stats, engine)
    if state.best_network is not None and state.best_epoch != state.epoch:
        engine = make_engine(state.best_network, settings.engine_name())
    return engine


# =============================================================================
# 15. Reports: progress bar, tables and digits in the terminal
# =============================================================================
# Everything here returns text or writes to the stream it is given; nothing
# before Part V prints.

def format_duration(seconds):
    """'0:07', '12:34', '1:02:03'."""
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return "%d:%02d:%02d" % (hours, minutes, secs) if hours else "%d:%02d" % (minutes, secs)


def stream_is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """A tqdm-style bar: `label  45%|#####     | 450/1000 [0:01<0:01, 2,851/s]`.

    On a terminal it is redrawn in place (carriage return) up to 10 times a
    second; on a pipe or file it writes a plain line every `every` seconds, so
    logs get a few lines, not thousands of carriage returns. Call it as
    progress(done, total); `finish()` clears it."""

    WIDTH = 24

    def __init__(self, stream, label, interactive=None, every=10.0, clock=time.monotonic):
        self.stream, self.label, self.clock, self.every = stream, label, clock, every
        self.interactive = stream_is_terminal(stream) if interactive is None else interactive
        self.started = self.clock()
        self.last_drawn = None
        self.drawn_width = 0

    def __call__(self, done, total):
        now = self.clock()
        pause = 0.1 if self.interactive else self.every
        if self.last_drawn is not None and now - self.last_drawn < pause:
            return
        if self.last_drawn is None and not self.interactive:
            self.last_drawn = now          # pipes: the first line after `every` s
            return
        self.last_drawn = now
        text = self.render(done, total, now - self.started)
        if self.interactive:
            self.stream.write("\r" + text.ljust(self.drawn_width))
            self.drawn_width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def render(self, done, total, elapsed):
        fraction = done / total if total else 1.0
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + " " * (self.WIDTH - filled)
        rate = done / elapsed if elapsed > 0 else 0.0
        remaining = format_duration((total - done) / rate) if rate > 0 else "?"
        return "%s %3d%%|%s| %s/%s [%s<%s, %s/s]" % (
            self.label, int(100 * fraction), bar, format(done, ","), format(total, ","),
            format_duration(elapsed), remaining, format(int(rate), ",") if rate > 0 else "?")

    def restart(self, label):
        """Start timing afresh, under a new label (the next epoch)."""
        self.label, self.started, self.last_drawn = label, self.clock(), None

    def finish(self):
        """Wipe the bar from a terminal line, so the next text starts clean."""
        if self.interactive and self.drawn_width:
            self.stream.write("\r" + " " * self.drawn_width + "\r")
            self.stream.flush()
        self.drawn_width = 0

    def end_line(self):
        """End the bar's line where it stands (after Ctrl-C: the bar, and the
        terminal's ^C, stay; the message that follows starts a line of its own)."""
        if self.interactive and self.drawn_width:
            self.stream.write("\n")
            self.stream.flush()
        self.drawn_width = 0


def epoch_header(validation=False):
    """The per-epoch table's titles (a validation column with early stopping)."""
    columns = [("epoch", 5), ("lr", 8), ("loss", 6), ("train acc", 9)]
    columns += [("valid acc", 10)] if validation else []
    columns += [("test acc", 10), ("updated", 9), ("skipped", 9), ("seconds", 8)]
    return "  ".join(title.rjust(width) for title, width in columns)


def percent_cell(fraction):
    """'  97.25%', or '-' where the figure was not measured (< 0)."""
    return "%9.2f%%" % (100 * fraction) if fraction >= 0 else "%10s" % "-"


def format_epoch_row(stats, validation=False):
    """One line of the per-epoch table."""
    valid = percent_cell(stats.validation_accuracy) + "  " if validation else ""
    return "%5d  %8.5f  %6.4f  %8.2f%%  %s%s  %9s  %9s  %8.1f" % (
        stats.epoch, stats.learning_rate, stats.loss, 100 * stats.train_accuracy, valid,
        percent_cell(stats.test_accuracy), format(stats.updated, ","),
        format(stats.skipped, ","), stats.seconds)


def format_confusion(matrix):
    """The 10x10 confusion matrix (rows: true digit, columns: guess) with each
    digit's accuracy, as text."""
    lines = ["true\\guess" + "".join("%6d" % g for g in range(N_DIGITS)) + "   accuracy"]
    for y, row in enumerate(matrix):
        total = sum(row)
        right = "%9.2f%%" % (100.0 * row[y] / total) if total else "%10s" % "-"
        lines.append("%10d" % y + "".join("%6d" % n for n in row) + right)
    return "\n".join(lines)


INK_THRESHOLD = 64     # a pixel this inked or more (0..255, ink = 255) is drawn
GREEN, RED, RESET = "\033[32m", "\033[31m", "\033[0m"


def render_digit(image, half=True):
    """A 28x28 image as text, two pixel rows per line with half-block
    characters (a terminal cell is about twice as tall as it is wide).
    half=True first averages 2x2 blocks: 14 columns x 7 lines."""
    side = IMAGE_SIDE // 2 if half else IMAGE_SIDE

    def ink(row, column):
        if not half:
            return image[row * IMAGE_SIDE + column]
        r, c = 2 * row, 2 * column
        return (image[r * IMAGE_SIDE + c] + image[r * IMAGE_SIDE + c + 1] +
                image[(r + 1) * IMAGE_SIDE + c] + image[(r + 1) * IMAGE_SIDE + c + 1]) // 4

    lines = []
    for row in range(0, side, 2):
        line = ""
        for column in range(side):
            top, bottom = ink(row, column) >= INK_THRESHOLD, ink(row + 1, column) >= INK_THRESHOLD
            line += "█" if top and bottom else "▀" if top else "▄" if bottom else " "
        lines.append(line)
    return lines


def format_digit_grid(items, columns=5, colour=False):
    """Digits side by side, each captioned with the network's guess.

    items: (image, true label, guess, confidence). A right guess reads `7  99%`;
    a mistake reads `x4 (7)`: guessed 4, the truth is 7 (in red with colour)."""
    cell = IMAGE_SIDE // 2 + 2
    blocks = []
    for start in range(0, len(items), columns):
        row_items = items[start:start + columns]
        drawings = [render_digit(image) for image, _, _, _ in row_items]
        for line in range(len(drawings[0])):
            blocks.append("".join(d[line].ljust(cell) for d in drawings).rstrip())
        captions = []
        for _, label, guess, confidence in row_items:
            if guess == label:
                text, paint = "%d %3d%%" % (guess, round(100 * confidence)), GREEN
            else:
                text, paint = "x%d (%d)" % (guess, label), RED
            padded = text.ljust(cell)
            captions.append(paint + padded + RESET if colour else padded)
        blocks.append("".join(captions).rstrip())
        blocks.append("")
    return "\n".join(blocks).rstrip("\n")


def most_confident_mistakes(evaluation, n):
    """Indices of the n wrong guesses the network was surest of."""
    wrong = [k for k, (y, g) in enumerate(zip(evaluation.labels, evaluation.guesses)) if y != g]
    wrong.sort(key=lambda k: -evaluation.confidences[k])
    return wrong[:n]


# =============================================================================
# 16. Pictures: SVG curves and PNG images, written by hand
# =============================================================================

LEGEND_TOP = 356          # the curves' legends go below the panels, never over a curve
CURVE_COLOURS = {"loss": "#d62728", "train accuracy": "#1f77b4",
                 "validation accuracy": "#9467bd", "test accuracy": "#2ca02c"}


def training_curves(history):
    """{name: [(epoch, value), ...]} for each curve that was measured: the loss,
    and train / validation / test accuracy in percent."""
    curves = {"loss": [(s.epoch, s.loss) for s in history],
              "train accuracy": [(s.epoch, 100 * s.train_accuracy) for s in history]}
    for name, field in (("validation accuracy", "validation_accuracy"),
                        ("test accuracy", "test_accuracy")):
        points = [(s.epoch, 100 * getattr(s, field)) for s in history if getattr(s, field) >= 0]
        if points:
            curves[name] = points
    return curves


def nice_ticks(low, high, count=5, whole=False):
    """About `count` round tick values (1, 2 or 5 times a power of ten) covering
    low..high; whole: whole numbers only (epochs: a step of at least 1)."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if whole:
        step = max(step, 1.0)
    ticks = [math.floor(low / step) * step]
    while ticks[-1] < high - step * 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


class Plot:
    """Maps data coordinates into a pixel box (x to the right, y upwards)."""

    def __init__(self, left, top, width, height, xs, ys):
        self.left, self.top, self.width, self.height = left, top, width, height
        self.x_ticks = nice_ticks(min(xs), max(xs), whole=True)     # x: epochs
        self.y_ticks = nice_ticks(min(ys), max(ys))

    def x(self, value):
        low, high = self.x_ticks[0], self.x_ticks[-1]
        return self.left + (value - low) / ((high - low) or 1) * self.width

    def y(self, value):
        low, high = self.y_ticks[0], self.y_ticks[-1]
        return self.top + self.height - (value - low) / ((high - low) or 1) * self.height


def tick_label(value):
    return ("%.4g" % value) if value != int(value) else "%d" % value


def xml_escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg_axes(plot, ylabel):
    """The frame, ticks, tick labels and axis titles of one panel."""
    bottom, right = plot.top + plot.height, plot.left + plot.width
    parts = ['<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="black"/>'
             % (plot.left, plot.top, plot.width, plot.height)]
    for value in plot.x_ticks:
        x = plot.x(value)
        parts.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="black"/>'
                     % (x, bottom, x, bottom + 5))
        parts.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>'
                     % (x, bottom + 18, tick_label(value)))
    for value in plot.y_ticks:
        y = plot.y(value)
        parts.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>'
                     % (plot.left, y, right, y))
        parts.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>'
                     % (plot.left - 6, y + 4, tick_label(value)))
    parts.append('<text x="%d" y="%d" text-anchor="middle">epoch</text>'
                 % (plot.left + plot.width // 2, bottom + 38))
    parts.append('<text x="%d" y="%d" text-anchor="middle" transform="rotate(-90 %d %d)">%s</text>'
                 % (plot.left - 48, plot.top + plot.height // 2, plot.left - 48,
                    plot.top + plot.height // 2, ylabel))
    return parts


def svg_curves(history, title="mnist_pure training"):
    """Two panels as SVG text: loss per epoch, and accuracies per epoch, with
    axes, ticks, labels and a legend. One <polyline> per curve."""
    curves = training_curves(history)
    panels = [("loss", ["loss"]), ("accuracy (%)", [n for n in curves if n != "loss"])]
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="900" height="420" '
             'font-family="sans-serif" font-size="12">',
             '<rect width="900" height="420" fill="white"/>',
             '<text x="450" y="22" text-anchor="middle" font-size="15">%s</text>'
             % xml_escape(title)]
    for number, (ylabel, names) in enumerate(panels):
        points = [pt for name in names for pt in curves[name]]
        plot = Plot(70 + 450 * number, 50, 340, 250, [p[0] for p in points], [p[1] for p in points])
        parts.extend(svg_axes(plot, ylabel))
        for row, name in enumerate(names):
            xy = " ".join("%.1f,%.1f" % (plot.x(e), plot.y(v)) for e, v in curves[name])
            parts.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s">'
                         '<title>%s</title></polyline>' % (CURVE_COLOURS[name], xy, name))
            ly = LEGEND_TOP + 16 * row             # the legend, below the panel
            parts.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/>'
                         % (plot.left, ly, plot.left + 20, ly, CURVE_COLOURS[name]))
            parts.append('<text x="%d" y="%d">%s</text>' % (plot.left + 25, ly + 4, name))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def png_bytes(width, height, pixels, channels):
    """A PNG file: 8-bit grey (channels=1) or RGB (3) pixels, row by row.

    PNG = signature, then chunks (length, type, data, CRC-32 of type + data):
    IHDR (size, bit depth, colour type), IDAT (the zlib-compressed rows, each
    prefixed by a filter byte, 0 = none), IEND."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    stride = width * channels
    raw = b"".join(b"\x00" + bytes(pixels[r * stride:(r + 1) * stride]) for r in range(height))
    colour_type = {1: 0, 3: 2}[channels]
    return (b"\x89PNG\r\n\x1a\n" +
            chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


# A 3x5 pixel font: each glyph is 5 rows of 3 bits, drawn top to bottom.
FONT_3X5 = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001010010010", "8": "111101111101111",
    "9": "111101111001111", ".": "000000000000010", "%": "101001010100101",
    "-": "000000111000000", " ": "000000000000000", "(": "010100100100010",
    ")": "010001001001010", "A": "010101111101101", "C": "111100100100111",
    "D": "110101101101110", "E": "111100110100111", "H": "101101111101101",
    "I": "111010010010111", "L": "100100100100111", "N": "110101101101101",
    "O": "111101101101111", "P": "111101111100100", "R": "110101110101101",
    "S": "111100111001111", "T": "111010010010010", "U": "101101101101111",
    "V": "101101101101010", "Y": "101101010010010", "X": "101101010101101",
}


class Canvas:
    """An RGB raster to draw on, saved as PNG."""

    def __init__(self, width, height, background=(255, 255, 255)):
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    def set(self, x, y, colour):
        if 0 <= x < self.width and 0 <= y < self.height:
            k = 3 * (y * self.width + x)
            self.pixels[k:k + 3] = bytes(colour)

    def rectangle(self, x, y, width, height, colour, fill=False):
        for yy in range(y, y + height):
            for xx in range(x, x + width):
                if fill or yy in (y, y + height - 1) or xx in (x, x + width - 1):
                    self.set(xx, yy, colour)

    def line(self, x0, y0, x1, y1, colour, thick=1):
        """A straight line through integer points (Bresenham's idea: step along
        the longer axis, round the other)."""
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for s in range(steps + 1):
            x = int(round(x0 + (x1 - x0) * s / steps))
            y = int(round(y0 + (y1 - y0) * s / steps))
            for dx in range(thick):
                for dy in range(thick):
                    self.set(x + dx, y + dy, colour)

    def text(self, x, y, text, colour=(0, 0, 0), scale=1):
        """Text in the 3x5 font (unknown characters are skipped), top-left at x, y."""
        for n, char in enumerate(text.upper()):
            glyph = FONT_3X5.get(char, FONT_3X5[" "])
            for bit, on in enumerate(glyph):
                if on == "1":
                    gx, gy = x + n * 4 * scale + (bit % 3) * scale, y + (bit // 3) * scale
                    self.rectangle(gx, gy, scale, scale, colour, fill=True)

    def paste_grey(self, x, y, image, side, tint=(0, 0, 0)):
        """A side x side grey image (0 = paper, 255 = ink) as ink on white."""
        for r in range(side):
            for c in range(side):
                ink = image[r * side + c] / 255.0
                self.set(x + c, y + r, tuple(int(255 - ink * (255 - t)) for t in tint))

    def png(self):
        return png_bytes(self.width, self.height, self.pixels, 3)


def hex_colour(text):
    return tuple(int(text[k:k + 2], 16) for k in (1, 3, 5))


def png_curves(history):
    """The training curves of svg_curves, as a PNG (text in the 3x5 font)."""
    curves = training_curves(history)
    canvas = Canvas(900, 420)
    panels = [("LOSS", ["loss"]), ("ACCURACY (PERCENT)", [n for n in curves if n != "loss"])]
    for number, (ylabel, names) in enumerate(panels):
        points = [pt for name in names for pt in curves[name]]
        plot = Plot(70 + 450 * number, 50, 340, 250, [p[0] for p in points], [p[1] for p in points])
        left, top, bottom = plot.left, plot.top, plot.top + plot.height
        canvas.rectangle(left, top, plot.width + 1, plot.height + 1, (0, 0, 0))
        for value in plot.x_ticks:
            x = int(plot.x(value))
            canvas.line(x, bottom, x, bottom + 5, (0, 0, 0))
            canvas.text(x - 2 * len(tick_label(value)) * 2, bottom + 9, tick_label(value), scale=2)
        for value in plot.y_ticks:
            y = int(plot.y(value))
            canvas.line(left + 1, y, left + plot.width - 1, y, (221, 221, 221))
            label = tick_label(value)
            canvas.text(left - 8 - 8 * len(label), y - 5, label, scale=2)
        canvas.text(left + plot.width // 2 - 20, bottom + 30, "EPOCH", scale=2)
        canvas.text(left, top - 16, ylabel, scale=2)
        for row, name in enumerate(names):
            colour = hex_colour(CURVE_COLOURS[name])
            xy = [(int(plot.x(e)), int(plot.y(v))) for e, v in curves[name]]
            for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
                canvas.line(x0, y0, x1, y1, colour, thick=2)
            for x, y in xy:
                canvas.rectangle(x - 2, y - 2, 5, 5, colour, fill=True)
            ly = LEGEND_TOP + 16 * row
            canvas.line(left, ly, left + 20, ly, colour, thick=2)
            canvas.text(left + 26, ly - 4, name, scale=2)
    return canvas.png()


def png_digit_grid(items, columns=10):
    """Digits (28x28, drawn at 2x) with the guess under each: green frame and
    label when right, red frame with `guess (truth)` when wrong."""
    cell_w, cell_h = 64, 80
    rows = (len(items) + columns - 1) // columns
    canvas = Canvas(columns * cell_w + 8, rows * cell_h + 8)
    for n, (image, label, guess, _) in enumerate(items):
        x, y = 8 + (n % columns) * cell_w, 8 + (n // columns) * cell_h
        big = bytes(image[(r // 2) * IMAGE_SIDE + c // 2] for r in range(56) for c in range(56))
        canvas.paste_grey(x, y, big, 56)
        colour = (0, 150, 0) if guess == label else (210, 0, 0)
        canvas.rectangle(x - 2, y - 2, 60, 60, colour)
        canvas.rectangle(x - 3, y - 3, 62, 62, colour)
        caption = "%d" % guess if guess == label else "%d (%d)" % (guess, label)
        canvas.text(x, y + 61, caption, colour, scale=2)
    return canvas.png()


def png_weights(network):
    """Each first-layer unit's 784 incoming weights (a column of W1) as a 28x28
    tile: blue where ink excites the unit, red where it inhibits it. 16 a row."""
    n = network.sizes[1]
    columns, tile = 16, 2 * IMAGE_SIDE + 2           # each weight drawn 2x2 pixels
    rows = (n + columns - 1) // columns
    canvas = Canvas(columns * tile + 2, rows * tile + 2, (128, 128, 128))
    for j in range(n):
        weights = [network.weights[0][i][j] for i in range(N_PIXELS)]
        scale = max(max(abs(w) for w in weights), 1e-12)
        x0, y0 = 2 + (j % columns) * tile, 2 + (j // columns) * tile
        for i, w in enumerate(weights):
            t = w / scale                              # -1 .. 1
            shade = int(255 * (1 - abs(t)))
            colour = (shade, shade, 255) if t > 0 else (255, shade, shade)
            canvas.rectangle(x0 + 2 * (i % IMAGE_SIDE), y0 + 2 * (i // IMAGE_SIDE), 2, 2, colour,
                             fill=True)
    return canvas.png()


# =============================================================================
# 17. Model files: safetensors, readable by PyTorch
# =============================================================================
# safetensors (Hugging Face's format, readable by PyTorch, NumPy, JAX ...):
#     8 bytes   N, the header's length (unsigned, little-endian)
#     N bytes   a JSON object: {"name": {"dtype", "shape", "data_offsets": [begin, end]},
#               ..., "__metadata__": {str: str}}, padded with spaces
#     the rest  each tensor's values, little-endian, row-major, back to back;
#               offsets count from the start of this part, end excluded.
# We store float64 ("F64"): a saved model reloads bit for bit, so a resumed run
# ends exactly where an uninterrupted one would. (float32 files, as PyTorch
# writes by default, load too.) Tensors use PyTorch's nn.Linear names and
# shapes, out x in: layer l is fc<l>, so fc1.weight is W1 transposed, [128, 784],
# and a network of any depth goes on with fc2, fc3 ...; the metadata's "sizes"
# says "784,128,10". Never pickle: a pickle runs code when loaded; this format
# is data only.

FORMAT_NAME = "mnist_pure"
FORMAT_VERSION = "1"
DTYPES = {"F64": "d", "F32": "f"}        # safetensors dtype -> array typecode
MAX_HEADER_BYTES = 1 << 24
MAX_MODEL_BYTES = 1 << 28


def network_tensors(network, prefix=""):
    """[(name, shape, values row-major)] in PyTorch's layout: for layer l,
    fc<l>.weight [n_out][n_in] (W transposed) and fc<l>.bias [n_out]."""
    tensors = []
    for l, (w, b) in enumerate(zip(network.weights, network.biases), 1):
        n_in, n_out = len(w), len(b)
        tensors.append(("%sfc%d.weight" % (prefix, l), (n_out, n_in),
                        [row[j] for j in range(n_out) for row in w]))
        tensors.append(("%sfc%d.bias" % (prefix, l), (n_out,), list(b)))
    return tensors


def network_from_tensors(path, tensors, prefix=""):
    """The NeuralNetwork held in a {name: (shape, values)} dict: layers fc1,
    fc2, ... as long as they go on; MnistError unless they chain from 784
    inputs to 10 outputs."""
    weights, biases, n_in, l = [], [], N_PIXELS, 1
    while prefix + "fc%d.weight" % l in tensors:
        w_name, b_name = prefix + "fc%d.weight" % l, prefix + "fc%d.bias" % l
        if b_name not in tensors:
            raise MnistError("%s: no tensor %s; not a model of this network" % (path, b_name))
        (w_shape, w), (b_shape, b) = tensors[w_name], tensors[b_name]
        n_out = w_shape[0] if len(w_shape) == 2 else 0
        if tuple(w_shape) != (n_out, n_in) or tuple(b_shape) != (n_out,) or n_out < 1:
            raise MnistError("%s: %s has shape %s and %s %s; layer %d needs [H, %d] and [H]"
                             % (path, w_name, list(w_shape), b_name, list(b_shape), l, n_in))
        weights.append([[w[j * n_in + i] for j in range(n_out)] for i in range(n_in)])
        biases.append(list(b))
        n_in, l = n_out, l + 1
    if not weights:
        raise MnistError("%s: no tensor %sfc1.weight; not a model of this network"
                         % (path, prefix))
    if n_in != N_DIGITS:
        raise MnistError("%s: the last layer has %d outputs; a digit reader needs 10"
                         % (path, n_in))
    return network_from(weights, biases)


def safetensors_bytes(tensors, metadata):
    """A whole safetensors file holding tensors [(name, shape, values)] as F64."""
    header, blobs, offset = {}, [], 0
    for name, shape, values in tensors:
        data = array.array("d", values)
        if sys.byteorder == "big":
            data.byteswap()
        blob = data.tobytes()
        header[name] = {"dtype": "F64", "shape": list(shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)          # pad: tensor data starts 8-aligned
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def new_file_mode(path):
    """The permissions a plain open() would give path (mkstemp's are owner-only)."""
    if os.path.exists(path):
        return os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def check_destination(path):
    """The folder a file can be written into at path; MnistError if there is
    none (checked before training too, so that no work is lost at the end)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise MnistError("cannot write %s: folder %s does not exist" % (path, folder))
    if os.path.isdir(path):
        raise MnistError("cannot write %s: it is a folder" % path)
    if os.path.exists(path) and not os.path.isfile(path):
        raise MnistError("cannot write %s: it is not a regular file" % path)
    return folder


def write_atomically(path, content):
    """Write a file so that it is either all there or not changed at all: write
    a temporary file in the same folder, flush it to disk, then rename it over
    the target (os.replace is atomic). A crash, a full disk or Ctrl-C leaves
    the old file as it was and no temporary file behind."""
    folder = check_destination(path)
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                                             suffix=".tmp")
        os.chmod(temporary, new_file_mode(path))
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
        temporary = None
    except OSError as e:
        raise MnistError("cannot write %s: %s" % (path, e.strerror or describe(e)))
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)


def parse_header(raw, fail):
    """The header's JSON object, refusing what json alone would let through."""
    def no_duplicates(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                fail("duplicate key %r in the header" % key)
            seen[key] = value
        return seen

    def no_constants(name):
        fail("%s in the header" % name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        fail("header is not UTF-8")
    if not text.startswith("{"):
        fail("header does not start with '{'")
    try:
        header = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (ValueError, RecursionError) as e:
        fail("header is not valid JSON (%s)" % describe(e))
    if not isinstance(header, dict):
        fail("header is not a JSON object")
    return header


def tensor_start(entry):
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    ok = isinstance(offsets, list) and offsets and type(offsets[0]) is int
    return offsets[0] if ok else -1


def check_tensor_entry(name, entry, fail):
    """(shape, array typecode, begin, end) of one header entry, all checked."""
    if not isinstance(entry, dict):
        fail("entry %s is not an object" % name)
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        fail("tensor %s has dtype %r; this program reads %s" % (name, dtype, " or ".join(DTYPES)))
    if not (isinstance(shape, list) and all(type(d) is int and 0 <= d < 1 << 31 for d in shape)):
        fail("tensor %s has a bad shape %r" % (name, shape))
    if not (isinstance(offsets, list) and len(offsets) == 2 and
            all(type(o) is int and o >= 0 for o in offsets) and offsets[0] <= offsets[1]):
        fail("tensor %s has bad data_offsets %r" % (name, offsets))
    count = 1
    for d in shape:
        count *= d
    size = array.array(DTYPES[dtype]).itemsize
    if offsets[1] - offsets[0] != count * size:
        fail("tensor %s: shape %s needs %d bytes, offsets give %d"
             % (name, shape, count * size, offsets[1] - offsets[0]))
    return tuple(shape), DTYPES[dtype], offsets[0], offsets[1]


def parse_safetensors(path, content):
    """({name: (shape, values)}, metadata) from a file's bytes. Strict: any
    inconsistency is a MnistError naming the file and what is wrong."""
    def fail(problem):
        raise MnistError("%s: not a valid safetensors file: %s" % (path, problem))
    if len(content) < 8:
        fail("only %d bytes long" % len(content))
    (length,) = struct.unpack("<Q", content[:8])
    if length > MAX_HEADER_BYTES or 8 + length > len(content):
        fail("header length %d does not fit in the file (%d bytes)" % (length, len(content)))
    header = parse_header(content[8:8 + length], fail)
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        fail("__metadata__ must map strings to strings")
    data = content[8 + length:]
    tensors, expected_start = {}, 0
    for name, entry in sorted(header.items(), key=lambda item: tensor_start(item[1])):
        shape, typecode, begin, end = check_tensor_entry(name, entry, fail)
        if begin != expected_start:
            fail("tensor %s starts at byte %d, expected %d (gap or overlap)"
                 % (name, begin, expected_start))
        if end > len(data):
            fail("tensor %s ends at byte %d, past the end of the data (%d)"
                 % (name, end, len(data)))
        values = array.array(typecode, data[begin:end])
        if sys.byteorder == "big":
            values.byteswap()
        if not all(-INFINITY < v < INFINITY for v in values):
            fail("tensor %s holds a NaN or infinite value" % name)
        tensors[name] = (shape, values.tolist())
        expected_start = end
    if expected_start != len(data):
        fail("%d bytes after the last tensor" % (len(data) - expected_start))
    return tensors, metadata


def read_safetensors(path):
    """Read and parse a safetensors file; MnistError for any problem."""
    try:
        if os.path.isdir(path):
            raise MnistError("%s: is a folder, not a model file" % path)
        size = os.path.getsize(path)
        if size > MAX_MODEL_BYTES:
            raise MnistError("%s: %d bytes, too large for a model of this network" % (path, size))
        with open(path, "rb") as stream:
            content = stream.read()
    except FileNotFoundError:
        raise MnistError("%s: model file not found" % path)
    except OSError as e:
        raise MnistError("%s: cannot read it (%s)" % (path, e.strerror or describe(e)))
    return parse_safetensors(path, content)


def architecture(sizes):
    return "-".join(map(str, sizes))


def save_model(network, path, metadata=None, extra_tensors=()):
    """Write network (any engine's; and any extra tensors) to path, atomically."""
    network = as_network(network)
    info = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "sizes": ",".join(map(str, network.sizes)),
            "architecture": architecture(network.sizes) + " relu softmax",
            "input": "28x28 pixels row by row, x = byte / 255, ink = 1",
            "dtype_note": "F64, PyTorch nn.Linear names (fc1, fc2, ...), [out, in] shapes"}
    info.update(metadata or {})
    write_atomically(path, safetensors_bytes(network_tensors(network) + list(extra_tensors), info))


def read_model(path):
    """(NeuralNetwork, metadata) from a safetensors file."""
    tensors, metadata = read_safetensors(path)
    return network_from_tensors(path, tensors), metadata


def load_model(path):
    """The NeuralNetwork saved in a safetensors file (by save_model, or by
    PyTorch with the same names)."""
    return read_model(path)[0]


# =============================================================================
# 18. Checkpoints: a model file that can resume its training
# =============================================================================
# Every file this program saves is a model (section 17) whose metadata also
# holds the recipe and the TrainingState as JSON, so any of them can be
# resumed. A checkpoint (--checkpoint, Ctrl-C) also holds, beside the model's
# tensors, those only training needs: which images rest, the best epoch's
# weights, the optimizer's state (best.*, rest.*, optimizer.*); a model file
# (--save) holds the model alone, and training goes on from its weights with
# those started afresh. Randomness needs no saved state: each epoch's order is
# drawn from (seed, epoch) alone (epoch_order), and each visit's distortion and
# dropout from (seed, epoch, position) (visit_random), so (epoch, position) says
# where to go on.

# The saved recipe: each field with the values it may hold (the same as the
# command line accepts): (type, lowest, highest) or (type, choices).
RECIPE_CHECKS = {
    "max_train": (int, 1, 10 ** 9), "epochs": (int, 1, 10 ** 9),
    "learning_rate": (float, 1e-12, 1e6), "lr_decay": (float, 1e-12, 1.0),
    "decay_every": (int, 1, 10 ** 9), "mastery": (float, 0.0, 1.0), "seed": (int, 0, 2 ** 63),
    "batch_size": (int, 1, 10 ** 9), "optimizer": (str, tuple(OPTIMIZERS)),
    "momentum": (float, 0.0, 0.999), "nesterov": (bool, (False, True)),
    "weight_decay": (float, 0.0, 1.0), "dropout": (float, 0.0, 0.95),
    "augment": (str, ("",) + tuple(DISTORTIONS)), "validation": (int, 0, 10 ** 9),
    "patience": (int, 0, 10 ** 9), "hidden": (list, 0, 64), "rest_sure": (bool, (False, True))}


def epoch_stats_from(fields):
    """EpochStats from its saved dict, every field a number."""
    stats = EpochStats(**fields)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
               for v in dataclasses.astuple(stats)):
        raise TypeError("epoch figures must be numbers")
    return stats


def checked_value(field, value):
    """value, if a saved recipe's field may hold it; else ValueError."""
    kind, *limits = RECIPE_CHECKS[field]
    if kind is list:
        good = (isinstance(value, list) and len(value) <= limits[1] and
                all(type(n) is int and 1 <= n <= 1 << 16 for n in value))
    elif len(limits) == 1:
        good = type(value) is kind and value in limits[0]
    else:
        number = isinstance(value, int if kind is int else (int, float))
        good = number and not isinstance(value, bool) and limits[0] <= value <= limits[1]
    if not good:
        raise ValueError("%s = %r" % (field, value))
    return tuple(value) if kind is list else value


def upgraded_recipe(recipe):
    """A recipe saved by version 1 of the format, in today's fields."""
    recipe = dict(recipe)
    if "n_hidden" in recipe:
        recipe["hidden"] = [recipe.pop("n_hidden")]
    if recipe.get("augment") is True or recipe.get("augment") is False:
        recipe["augment"] = "shift" if recipe["augment"] else ""
    return recipe


def save_run(path, engine, settings, state, test_accuracy=None, checkpoint=True):
    """Save the model, with the recipe and the training state in its metadata,
    to path (atomically). A checkpoint also holds, as tensors beside the
    model's, what only training needs to go on exactly: the best epoch's
    weights, which images rest, the optimizer's state. A model file
    (checkpoint=False) holds the model's tensors alone, as PyTorch's
    load_state_dict(strict=True) expects."""
    recipe = {field: getattr(settings, field) for field in RECIPE_CHECKS}
    recipe["hidden"] = list(recipe["hidden"])
    recipe["batch_size"] = settings.options().batch_size      # (1 if still to be chosen)
    saved_state = {
        "recipe": recipe,
        "epoch": state.epoch, "position": state.position,
        "running": dataclasses.asdict(state.running) if state.running else None,
        "history": [dataclasses.asdict(s) for s in state.history],
        "best_epoch": state.best_epoch, "best_accuracy": state.best_accuracy,
        "stopped_early": state.stopped_early,
        "rng": "each epoch's order: random.Random('mnist_pure <seed> <epoch>')"}
    metadata = {"epochs": state.epoch, "seed": settings.seed,
                "learning_rate": settings.learning_rate,
                "training_images": settings.max_train,
                "training_state": json.dumps(saved_state)}
    if test_accuracy is not None:
        metadata["test_accuracy"] = "%.4f" % test_accuracy
    extra = []
    if checkpoint and state.best_network:
        extra += network_tensors(state.best_network, "best.")
    if checkpoint and state.resting is not None:    # which sure images rest (section 10)
        n = len(state.resting.until)
        extra += [("rest.until", (n,), state.resting.until),
                  ("rest.confidence", (n,), state.resting.confidence)]
    if checkpoint and state.optimizer:              # Trainer.saved_state (section 10)
        extra += [(name, shape, values) for name, (shape, values) in state.optimizer.items()]
    save_model(engine, path, metadata, extra)


def run_from_tensors(path, tensors, metadata):
    """load_run's work, once the file is parsed."""
    network = network_from_tensors(path, tensors)
    if "training_state" not in metadata:
        return network, metadata, None, None
    try:
        saved = json.loads(metadata["training_state"])
        saved_recipe = upgraded_recipe(saved["recipe"])
        recipe = {field: checked_value(field, saved_recipe[field])
                  for field in RECIPE_CHECKS if field in saved_recipe}
        for field in ("max_train", "epochs", "learning_rate", "seed", "hidden"):
            if field not in recipe:
                raise KeyError(field)
        state = TrainingState(
            epoch=int(saved["epoch"]), position=int(saved["position"]),
            running=epoch_stats_from(saved["running"]) if saved["running"] else None,
            history=[epoch_stats_from(s) for s in saved["history"]],
            best_epoch=int(saved["best_epoch"]), best_accuracy=float(saved["best_accuracy"]),
            stopped_early=bool(saved["stopped_early"]))
        if state.epoch < 0 or state.position < 0:
            raise ValueError("negative epoch or position")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise MnistError("%s: damaged training state in the metadata (%s)" % (path, describe(e)))
    if "best.fc1.weight" in tensors:
        state.best_network = network_from_tensors(path, tensors, "best.")
    if "rest.until" in tensors and "rest.confidence" in tensors:
        (_, until), (_, confidence) = tensors["rest.until"], tensors["rest.confidence"]
        if len(until) != len(confidence) or not all(0 <= v < 1 << 31 and v == int(v)
                                                    for v in until):
            raise MnistError("%s: damaged rest.until / rest.confidence tensors" % path)
        state.resting = Resting(len(until))
        state.resting.until, state.resting.confidence = [int(v) for v in until], list(confidence)
    optimizer = {name: tensor for name, tensor in tensors.items() if name.startswith("optimizer.")}
    state.optimizer = optimizer or None       # checked when a Trainer takes it up
    return network, metadata, recipe, state


def load_run(path):
    """(network, metadata, recipe dict, TrainingState) from a saved file; recipe
    and state are None for a model saved without them (e.g. by another tool)."""
    return run_from_tensors(path, *read_safetensors(path))


# =============================================================================
# 19. Your own digit: reading PNG and PGM, and preparing it as MNIST was
# =============================================================================
# A phone photo is 12-24 megapixels; CPython spends ~50 ns on each Python-level
# operation, so anything done per pixel in Python costs seconds. The readers
# therefore work on whole rows with operations that loop in C: slicing
# (row[0::3] is every red sample), bytes.translate (a 256-entry lookup table
# applied to every byte), and big integers used as rows of small numbers
# ("lanes"), the trick of section 11: int.from_bytes turns a row into one
# integer, and one integer +, &, >> then works on every lane at once.

MAX_IMAGE_PIXELS = 24000000    # a 24-megapixel photo; larger images are refused
MAX_IMAGE_FILE_BYTES = 256 << 20
IMAGE_FORMATS = "PNG or PGM/PBM/PPM"
LANE32 = "I" if array.array("I").itemsize == 4 else "L"      # an array of 32-bit numbers


def check_image_size(path, width, height):
    if width < 1 or height < 1:
        raise MnistError("%s: image has no pixels (%dx%d)" % (path, width, height))
    if width * height > MAX_IMAGE_PIXELS:
        raise MnistError("%s: image is %dx%d, more than the %d megapixels this program reads; "
                         "scale it down first" % (path, width, height, MAX_IMAGE_PIXELS // 1000000))


def byte_lanes(data, width):
    """bytes -> one integer holding each byte in a lane of `width` bits
    (8, 16 or 32), the first byte in the lowest lane. Wider lanes leave room
    for sums: a 32-bit lane holds the sum of 16 million bytes without
    spilling into the next."""
    if width == 8:
        return int.from_bytes(data, "little")
    step = width // 8
    spread = bytearray(step * len(data))
    spread[0::step] = data
    return int.from_bytes(spread, "little")


def lane_constant(value, count, width):
    """An integer with `value` in each of `count` lanes of `width` bits."""
    return value * int.from_bytes((b"\x01" + bytes(width // 8 - 1)) * count, "little")


def lane_bytes(number, count, width, at=0):
    """The inverse of byte_lanes: byte `at` of each of `count` lanes, as bytes."""
    step = width // 8
    return number.to_bytes(step * count, "little")[at::step]


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}      # colour type -> samples per pixel
PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def png_chunks(path, content):
    """[(type, data)] of a PNG file, every CRC checked."""
    chunks, at = [], len(PNG_SIGNATURE)
    while at < len(content):
        where = "in a %r chunk" % content[at + 4:at + 8].decode("latin-1")
        if at + 8 > len(content):
            raise MnistError("%s: PNG file is cut short" % path)
        length, kind = struct.unpack(">I4s", content[at:at + 8])
        end = at + 8 + length
        if end + 4 > len(content):
            raise MnistError("%s: PNG file is cut short (%s)" % (path, where))
        data = content[at + 8:end]
        (crc,) = struct.unpack(">I", content[end:end + 4])
        if zlib.crc32(kind + data) & 0xFFFFFFFF != crc:
            raise MnistError("%s: damaged PNG (bad checksum %s)" % (path, where))
        chunks.append((kind, data))
        at = end + 4
        if kind == b"IEND":
            break
    return chunks


def paeth(a, b, c):
    """PNG's Paeth predictor: of left (a), up (b) and upper-left (c), the one
    nearest to a + b - c (ties go to a, then b)."""
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def png_unfilter(raw, height, stride, bpp):
    """Undo PNG's per-row filters, one byte at a time (the definition, and what
    PyPy runs). Each row starts with its filter type; the filters predict a
    byte from its left (a), upper (b) and upper-left (c) neighbours, bpp bytes
    (one pixel) apart, and store the difference, mod 256."""
    previous = bytearray(stride)
    rows = []
    for r in range(height):
        kind = raw[r * (stride + 1)]
        row = bytearray(raw[r * (stride + 1) + 1:(r + 1) * (stride + 1)])
        if kind == 1:                                           # Sub: + a
            for i in range(bpp, stride):
                row[i] = (row[i] + row[i - bpp]) & 255
        elif kind == 2:                                         # Up: + b
            for i in range(stride):
                row[i] = (row[i] + previous[i]) & 255
        elif kind == 3:                                         # Average: + (a + b) // 2
            for i in range(stride):
                left = row[i - bpp] if i >= bpp else 0
                row[i] = (row[i] + (left + previous[i]) // 2) & 255
        elif kind == 4:                                         # Paeth: + a, b or c
            for i in range(stride):
                left, corner = (row[i - bpp], previous[i - bpp]) if i >= bpp else (0, 0)
                row[i] = (row[i] + paeth(left, previous[i], corner)) & 255
        rows.append(row)
        previous = row
    return rows


def add_bytes(x, y, low7, high1):
    """Lane-wise (x + y) mod 256 of two integers of 8-bit lanes: add the low 7
    bits of each lane (no carry can leave a lane), then put back the top bit,
    which is the XOR of the two top bits and the carry already in the sum."""
    return ((x & low7) + (y & low7)) ^ ((x ^ y) & high1)


def png_unfilter_rows(raw, height, stride, bpp):
    """png_unfilter for images whose rows use only None, Sub and Up, with the
    loops in C: a row is an integer of 8-bit lanes. Up adds the row above in
    one add_bytes. Sub is a running sum along the row (each byte adds the
    decoded byte bpp to its left), done by doubling: after adding the row to
    itself shifted by 1, 2, 4 ... pixels, lane i holds the sum of all lanes
    i, i-1, ..., 0 of its channel: log2(width) steps instead of width."""
    low7, high1 = lane_constant(0x7F, stride, 8), lane_constant(0x80, stride, 8)
    everything = (1 << 8 * stride) - 1
    previous, rows = 0, []
    for r in range(height):
        kind = raw[r * (stride + 1)]
        row = int.from_bytes(raw[r * (stride + 1) + 1:(r + 1) * (stride + 1)], "little")
        if kind == 1:
            shift = 8 * bpp
            while shift < 8 * stride:
                row = add_bytes(row, (row << shift) & everything, low7, high1)
                shift *= 2
        elif kind == 2:
            row = add_bytes(row, previous, low7, high1)
        rows.append(row)
        previous = row
    return [row.to_bytes(stride, "little") for row in rows]


class Lanes:
    """Constants for `count` 16-bit lanes, made once: `ones` has 1 in every
    lane, `bit8` 2**8 in every lane, `low8` 2**8 - 1 in every lane, and so on."""

    def __init__(self, count):
        self.ones = lane_constant(1, count, 16)
        self.full = self.ones * 0xFFFF
        self.low8, self.low9 = self.ones * 0xFF, self.ones * 0x1FF
        self.bit8, self.bit9, self.bit10 = self.ones << 8, self.ones << 9, self.ones << 10


def lane_abs(offset_x, bit, lanes):
    """|x| in every 16-bit lane, given x + 2**bit there (bit 8 or 9), which is
    positive, so no lane borrows from the next (x - y + 256 for bytes x, y is
    1..511). Bit `bit` of a lane is set where x >= 0: there |x| is the low
    bits of x + 2**bit; elsewhere, those of 2**(bit+1) - (x + 2**bit) = 2**bit - x."""
    twice, low = (lanes.bit9, lanes.low8) if bit == 8 else (lanes.bit10, lanes.low9)
    positive = ((offset_x >> bit) & lanes.ones) * 0xFFFF          # all ones where x >= 0
    return (offset_x & positive | (twice - offset_x) & (lanes.full ^ positive)) & low


def paeth_lanes(a, b, c, lanes):
    """paeth(a, b, c) in every 16-bit lane at once (a byte in each lane).
    A comparison x <= y is bit 10 of y + 1024 - x, which stays in 514..1534."""
    ab = (a | lanes.bit8) - c                                      # a - c + 256
    bc = (b | lanes.bit8) - c                                      # b - c + 256
    pa, pb = lane_abs(bc, 8, lanes), lane_abs(ab, 8, lanes)   # |p - a| = |b - c|, |p - b| = |a - c|
    pc = lane_abs(ab + bc, 9, lanes)                               # |p - c| = |a + b - 2c|
    a_wins = (((pb | lanes.bit10) - pa) & ((pc | lanes.bit10) - pa)) >> 10 & lanes.ones
    b_wins = ((pc | lanes.bit10) - pb) >> 10 & lanes.ones & (lanes.ones ^ a_wins)
    c_wins = lanes.ones ^ a_wins ^ b_wins
    return a & a_wins * 0xFFFF | b & b_wins * 0xFFFF | c & c_wins * 0xFFFF


def png_unfilter_band(out, top, count, stride, bpp, above):
    """Decode rows top..top+count-1 of `out` (raw PNG rows, filter bytes
    included) in place, in anti-diagonal waves, the rows as 16-bit lanes;
    `above` is the decoded row above them.

    Within a row, byte i needs byte i - bpp decoded first, so a row cannot be
    done at once. But byte i of row r needs only bytes of row r to its left
    and bytes of row r-1 at or left of i: so all bytes (r, i) with r + i = t,
    one per row, can be decoded together once wave t-1 is done. Wave t is a
    strided slice of the buffer, one byte per row; its neighbours are earlier
    waves: left a = wave t-bpp (same lane), up b = wave t-1 moved up one lane,
    up-left c = wave t-bpp-1 moved up one lane. Each row's filter applies to
    its own lane through a mask (all ones in the lanes of the rows using it).
    Lanes hold at most 1534 (paeth_lanes), so they never spill over."""
    lanes = Lanes(count)
    kinds = out[top * (stride + 1)::stride + 1][:count]
    masks = [byte_lanes(bytes(255 if k == kind else 0 for k in kinds), 16) * 257
             for kind in range(5)]
    waves = [0] * (bpp + 1)                     # the decoded waves t-1, t-2, ..., t-bpp-1
    start = top * (stride + 1) + 1
    for t in range(stride + count - 1):
        lo, hi = max(0, t - stride + 1), min(count - 1, t)         # the rows wave t crosses
        where = slice(start + t + lo * stride, start + t + hi * stride + 1, stride)
        left = waves[bpp - 1]
        up = waves[0] << 16 | (above[t] if t < stride else 0)
        corner = waves[bpp] << 16 | (above[t - bpp] if bpp <= t < stride else 0)
        guess = left & masks[1] | up & masks[2] | ((left + up) >> 1) & lanes.low8 & masks[3]
        if masks[4]:
            guess |= paeth_lanes(left, up, corner, lanes) & masks[4]
        filtered = byte_lanes(out[where], 16) << 16 * lo
        rows = (1 << 16 * (hi + 1)) - (1 << 16 * lo)                # all ones in lanes lo..hi
        wave = (filtered + guess) & lanes.low8 & rows
        waves = [wave] + waves[:-1]
        out[where] = lane_bytes(wave >> 16 * lo, hi - lo + 1, 16)


def png_unfilter_in_c(raw, height, stride, bpp):
    """png_unfilter with its loops in C, for CPython: row by row when no row
    uses Average or Paeth, else in waves (png_unfilter_band) over bands of
    rows about as tall as the rows are long, so each wave has many lanes."""
    kinds = set(raw[0::stride + 1][:height])
    if kinds <= {0, 1, 2}:
        return png_unfilter_rows(raw, height, stride, bpp)
    out, above = bytearray(raw), bytes(stride)
    band = max(64, min(stride, 4096))
    for top in range(0, height, band):
        count = min(band, height - top)
        png_unfilter_band(out, top, count, stride, bpp, above)
        last = (top + count - 1) * (stride + 1)
        above = out[last + 1:last + stride + 1]
    return [out[r * (stride + 1) + 1:(r + 1) * (stride + 1)] for r in range(height)]


PNG_UNFILTER = png_unfilter if ON_PYPY else png_unfilter_in_c


def unpack_table(depth):
    """For 1-, 2- and 4-bit samples: each byte value -> the samples it packs,
    first sample in the high bits, as bytes."""
    per_byte, mask = 8 // depth, (1 << depth) - 1
    return [bytes((byte >> (8 - depth * (k + 1))) & mask for k in range(per_byte))
            for byte in range(256)]


UNPACK = {depth: unpack_table(depth) for depth in (1, 2, 4)}


def unpack_samples(row, count, depth):
    """A row's first `count` samples as bytes, one per sample: bits unpacked
    below 8 (each byte looked up in UNPACK), the high byte of 16."""
    if depth == 8:
        return bytes(row[:count])
    if depth == 16:
        return bytes(row[0:2 * count:2])
    return b"".join(map(UNPACK[depth].__getitem__, row))[:count]


def scale_table(top):
    """bytes.translate table taking samples 0..top to 0..255."""
    return bytes(min(255, v * 255 // top) for v in range(256))


# Luminance = 0.299 red + 0.587 green + 0.114 blue (ITU-R BT.601), with the
# weights as whole multiples of 2**-16 that add up to exactly 2**16, so that
# white stays 255: in 32-bit lanes the weighted sum is < 2**24, and its byte 2
# (bits 16-23) is the luminance rounded down.
LUMA = (19595, 38470, 7471)


def luminance(red, green, blue):
    """Luminance of each pixel, given bytes of its red, green and blue (the
    definition, and what PyPy runs)."""
    wr, wg, wb = LUMA
    out = bytearray(len(red))
    for i in range(len(red)):
        out[i] = (wr * red[i] + wg * green[i] + wb * blue[i]) >> 16
    return bytes(out)


def luminance_in_c(red, green, blue):
    """luminance with its loops in C, for CPython: each colour as one integer
    of 32-bit lanes, weighted and added in three multiplications and two
    additions; each lane's byte 2 is then the result."""
    total = (LUMA[0] * byte_lanes(red, 32) + LUMA[1] * byte_lanes(green, 32) +
             LUMA[2] * byte_lanes(blue, 32))
    return lane_bytes(total, len(red), 32, at=2)


LUMINANCE = luminance if ON_PYPY else luminance_in_c


def over_white(grey, alpha):
    """Grey levels laid over white paper by their opacity (alpha 255 = opaque)."""
    if alpha.count(255) == len(alpha):
        return grey
    return bytes((g * a + 255 * (255 - a)) // 255 for g, a in zip(grey, alpha))


def palette_table(palette, alpha_table):
    """bytes.translate table: palette index -> its colour's luminance over white."""
    table = bytearray(256)
    for index in range(min(256, len(palette) // 3)):
        r, g, b = palette[3 * index:3 * index + 3]
        alpha = alpha_table[index] if index < len(alpha_table) else 255
        table[index] = over_white(luminance(bytes([r]), bytes([g]), bytes([b])), bytes([alpha]))[0]
    return bytes(table)


def png_grey_row(path, samples, colour, table, colours):
    """One row of 8-bit samples -> its luminance bytes."""
    if colour == 3 and max(samples) >= colours:
        raise MnistError("%s: damaged PNG (colour %d is not in the palette)" % (path, max(samples)))
    if colour in (0, 3):
        return samples.translate(table)
    if colour == 4:
        return over_white(samples[0::2], samples[1::2])
    channels = PNG_CHANNELS[colour]
    grey = LUMINANCE(samples[0::channels], samples[1::channels], samples[2::channels])
    return grey if colour == 2 else over_white(grey, samples[3::4])


def read_png(path, content):
    """Decode a PNG: grey, RGB, palette, with or without alpha, 1-16 bits."""
    chunks = png_chunks(path, content)
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise MnistError("%s: PNG without a valid IHDR header" % path)
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1])
    if colour not in PNG_CHANNELS or depth not in PNG_DEPTHS[colour] or compression or filtering:
        raise MnistError("%s: unsupported PNG (colour type %d, bit depth %d)"
                         % (path, colour, depth))
    if interlace:
        raise MnistError("%s: interlaced PNG is not supported; save it without interlacing" % path)
    check_image_size(path, width, height)
    palette = b"".join(d for k, d in chunks if k == b"PLTE")
    alpha_table = b"".join(d for k, d in chunks if k == b"tRNS")
    if colour == 3 and not palette:
        raise MnistError("%s: palette PNG without a palette" % path)
    channels = PNG_CHANNELS[colour]
    bits_per_pixel = channels * depth
    stride = (width * bits_per_pixel + 7) // 8
    expected = height * (stride + 1)
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(b"".join(d for k, d in chunks if k == b"IDAT"), expected + 1)
    except zlib.error as e:
        raise MnistError("%s: damaged PNG image data (%s)" % (path, describe(e)))
    if len(raw) != expected:
        raise MnistError("%s: PNG image data is %d bytes, expected %d" % (path, len(raw), expected))
    kinds = raw[0::stride + 1]
    if max(kinds) > 4:
        row = next(r for r, kind in enumerate(kinds) if kind > 4)
        raise MnistError("%s: damaged PNG (row %d has filter type %d)" % (path, row, kinds[row]))
    rows = PNG_UNFILTER(raw, height, stride, max(1, bits_per_pixel // 8))
    table = (palette_table(palette, alpha_table) if colour == 3 else
             scale_table((1 << depth) - 1) if depth < 8 else None)
    count = width * channels
    return width, height, b"".join(
        png_grey_row(path, unpack_samples(row, count, depth), colour, table, len(palette) // 3)
        for row in rows)


def read_netpbm(path, content):
    """Decode PBM/PGM/PPM (P1-P6): a text header, then ASCII or binary values."""
    kind = content[1:2]
    name = "P" + kind.decode("latin-1")
    fields, at = [], 2
    needed = 2 if kind in (b"1", b"4") else 3
    tokens = re.compile(rb"\s*(?:#[^\n]*\n\s*)*(\d+)")
    while len(fields) < needed:
        match = tokens.match(content, at)
        if not match:
            raise MnistError("%s: damaged %s header" % (path, name))
        fields.append(int(match.group(1)))
        at = match.end()
    width, height = fields[0], fields[1]
    top = fields[2] if needed == 3 else 1
    check_image_size(path, width, height)
    if not 0 < top < 65536:
        raise MnistError("%s: maximum value %d is outside 1..65535" % (path, top))
    channels = 3 if kind in (b"3", b"6") else 1
    count = width * height * channels
    if kind in (b"1", b"2", b"3"):                  # ASCII: small files, read number by number
        values = [int(v) for v in re.findall(rb"\d" if kind == b"1" else rb"\d+",
                                             re.sub(rb"#[^\n]*", b"", content[at:]))[:count]]
        samples = bytes(0 if v else 255 for v in values) if kind == b"1" else \
            bytes(min(255, v * 255 // top) for v in values)          # PBM: 1 = black
    elif kind == b"4":                              # rows of bits, each row padded to a byte
        stride = (width + 7) // 8
        body = content[at + 1:at + 1 + stride * height]
        samples = b""
        if len(body) == stride * height:
            samples = b"".join(unpack_samples(body[r * stride:(r + 1) * stride], width, 1)
                               for r in range(height)).translate(b"\xff\x00" + bytes(254))
    else:
        size = 2 if top > 255 else 1
        samples = content[at + 1:at + 1 + count * size][0::size]
        samples = samples.translate(scale_table(top >> 8 if size == 2 else top))
    if len(samples) != count:
        raise MnistError("%s: %s image data is cut short" % (path, name))
    if channels == 1:
        return width, height, bytes(samples)
    row = 3 * width
    return width, height, b"".join(
        LUMINANCE(samples[k:k + row:3], samples[k + 1:k + row:3], samples[k + 2:k + row:3])
        for k in range(0, count, row))


CONVERT_HINT = ("save it as PNG first (an image viewer's Export or Save As), or open `python "
                "mnist_pure.py serve`, whose page reads any photo the browser can show")


def heif_brand(head):
    """HEIC, AVIF or HEIF from an ISO media file's ftyp box (its major and
    compatible brands, four letters each), or None for other such files."""
    size = int.from_bytes(head[0:4], "big")
    brands = [head[k:k + 4] for k in range(8, min(size, len(head)) - 3, 4) if k != 12]
    if set(brands) & {b"avif", b"avis"}:
        return "an AVIF"
    if set(brands) & {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}:
        return "a HEIC"
    if set(brands) & {b"mif1", b"msf1"}:
        return "a HEIF"
    return None


def format_name(head):
    """What a file is ("a JPEG"), from its first bytes, for the formats people try most
    often (a phone's JPEG or HEIC, a browser's WebP, a scan's TIFF or PDF),
    or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "a GIF"
    if head[:2] == b"BM" and len(head) >= 18 and head[14] in (12, 40, 52, 56, 64, 108, 124):
        return "a BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP"
    if head[4:8] == b"ftyp":
        return heif_brand(head)
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "a TIFF"
    if head.startswith(b"%PDF"):
        return "a PDF"
    return None


def decode_image(name, content):
    """(width, height, luminance bytes 0 = black .. 255 = white) of an image
    file's content, whatever it came from: a file, or an upload to `serve`.
    name says where it came from, in the error messages."""
    if content.startswith(PNG_SIGNATURE):
        return read_png(name, content)
    if content[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6"):
        return read_netpbm(name, content)
    found = format_name(content[:64])
    if found:
        raise MnistError("%s: not an image this program reads: it is %s file (this program reads "
                         "%s); %s" % (name, found, IMAGE_FORMATS, CONVERT_HINT))
    raise MnistError("%s: not an image this program reads (%s)" % (name, IMAGE_FORMATS))


def read_image(path):
    """(width, height, luminance bytes 0 = black .. 255 = white) of an image file."""
    try:
        if os.path.getsize(path) > MAX_IMAGE_FILE_BYTES:
            raise MnistError("%s: file is larger than %d MiB; too large for an image of a digit"
                             % (path, MAX_IMAGE_FILE_BYTES >> 20))
        with open(path, "rb") as stream:
            content = stream.read()
    except FileNotFoundError:
        raise MnistError("%s: image not found" % path)
    except IsADirectoryError:
        raise MnistError("%s: is a folder, not an image" % path)
    except OSError as e:
        raise MnistError("%s: cannot read it (%s)" % (path, e.strerror or describe(e)))
    return decode_image(path, content)


# Preparing a digit as MNIST's were. A photo is not a drawing: its paper is
# lit unevenly (a gradient, dark corners, a shadow), the page may end inside
# the picture, and there may be specks, or nothing, or two digits. So:
#   1. work on a copy of at most WORK_PIXELS pixels (a 24-megapixel photo is
#      averaged in 9x9 blocks first);
#   2. find the paper's brightness P around every pixel, and count as ink only
#      what is darker than its own paper: ink = (P - grey) / P, the fraction
#      of the paper's light the ink absorbs (a flat-field correction: a dim
#      corner and a bright centre give the same ink);
#   3. find the separate marks, drop specks, and decide whether what is left
#      is one digit, none, or several;
#   4. crop to the digit and prepare it as MNIST was (prepare_digit_with_notes
#      says how).

WORK_PIXELS = 300000        # the prepared copy's size limit (e.g. 666x444 for 6000x4000)
GRID_CELLS = 64             # the paper is estimated on a grid this many cells across the short side
PAPER_REACH = 0.2           # ... filling dark marks up to 2 x 0.2 = 40% of the short side wide
PAPER_CUP = 8.0             # ... and a cup, 8 (d / short side)^2 higher in log light d from its
                            # bottom: a stroke 10% of the short side wide is filled to within 2%
FLAT_LEVEL = 0.08           # paper within 8% of the border's level on ...
FLAT_SHARE = 0.9            # ... 90% of the grid is flat: one paper level for the whole image
FLAT_CUP = 2.0              # (judged with a gentler cup, 2 (d / short side)^2, which fills
                            # even the thickest ink of MNIST's digits)
DIM_PAPER = 0.5             # paper darker than half the typical paper is not paper
NOISE_FLOOR = 3.0           # ink below 3 standard deviations of the paper's noise is paper
MARK_LEVEL = 40 / 255       # a mark is ink reaching 16% of the darkest ink's contrast ...
MARK_NOISE = 6.0            # ... and 6 standard deviations of the noise ...
MARK_MINIMUM = 0.05         # ... and 5% contrast at least
MARK_CELLS = 150            # marks are traced on a grid this many cells across the long side
SPECK_SIZE = 0.03           # a mark smaller than 3% of the short side (or 3 pixels) is a speck
STRAY_SIZE = 0.01           # marks dropped from beside the digit are mentioned from 1% up
PART_SIZE = 0.3             # a mark 30% of the largest one's size can be part of a digit ...
DIGIT_HEIGHT = 0.5          # ... a group half as tall as the tallest is another digit ...
DIGIT_GAP = 0.1             # ... if 10% of the tallest mark's height stands between them
TOO_FULL = 0.6              # ink on more than 60% of the image: no paper, no digit to find
EDGE_BAND = 0.5             # a mark along half of one edge of the image ...
EDGE_DEPTH = 0.25           # ... and no further than 25% from it is the page's edge


def shrink(width, height, grey, factor):
    """Average factor x factor blocks (leftover edge pixels dropped). In 32-bit
    lanes: add the block's rows, then add each row to itself shifted by 1 ..
    factor-1 lanes, so lane k * factor holds the sum of block k."""
    new_width, new_height, area = width // factor, height // factor, factor * factor
    out = bytearray()
    for top in range(0, new_height * factor, factor):
        rows = 0
        for r in range(top, top + factor):
            rows += byte_lanes(grey[r * width:r * width + new_width * factor], 32)
        blocks = sum(rows >> 32 * k for k in range(factor))
        sums = array.array(LANE32, blocks.to_bytes(4 * new_width * factor, "little"))
        if sys.byteorder == "big":
            sums.byteswap()
        out += bytes((s + area // 2) // area for s in sums[0::factor])
    return new_width, new_height, bytes(out)


def working_copy(width, height, grey):
    """The image at most WORK_PIXELS large, shrunk by a whole factor."""
    factor = 1
    while (width // factor) * (height // factor) > WORK_PIXELS:
        factor += 1
    if factor == 1:
        return width, height, bytes(grey)
    return shrink(width, height, grey, factor)


def median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def border_level(width, height, grey):
    """The median grey of the image's outermost pixels: the paper, usually."""
    return median(grey[:width] + grey[-width:] + grey[0::width] + grey[width - 1::width])


def cell_means(width, height, grey, cell):
    """The mean grey of each cell x cell block (edge blocks smaller), as rows."""
    grid = []
    for top in range(0, height, cell):
        bottom = min(height, top + cell)
        sums = [0] * len(range(0, width, cell))
        for r in range(top, bottom):
            line = grey[r * width:(r + 1) * width]
            for k, left in enumerate(range(0, width, cell)):
                sums[k] += sum(line[left:left + cell])
        grid.append([s / ((bottom - top) * min(cell, width - left))
                     for s, left in zip(sums, range(0, width, cell))])
    return grid


def slide(values, reach, pick):
    """pick (max, min or median) of every window of 2 * reach + 1 neighbours;
    the result is 2 * reach shorter than values."""
    size = 2 * reach + 1
    return [pick(values[k:k + size]) for k in range(len(values) - size + 1)]


def extend(values, by):
    return [values[0]] * by + list(values) + [values[-1]] * by


def filter_2d(grid, reach, pick, pad):
    """pick (max, min or median) over every square window of 2 * reach + 1
    cells, along rows then along columns (a square window's max is the max
    along rows of the max along columns; for the median it is close), the
    edges first extended by repeating them `pad` times (the result is
    2 * (pad - reach) cells larger)."""
    rows = [slide(extend(row, pad), reach, pick) for row in grid]
    columns = [slide(extend(column, pad), reach, pick) for column in zip(*rows)]
    return [list(row) for row in zip(*columns)]


def closing(grid, reach):
    """Morphological closing: the largest level in every (2 reach + 1)-square
    window, then the smallest of those maxima over every window again. A
    dark mark narrower than the window is filled with the level around it;
    wider dark areas, sharp edges and straight slopes are kept as they are:
    for dark ink, what is left is the paper. But a dip of the light is a dark
    valley too, and the window fills it like a mark: a dip of the light no
    wider than the window is raised to the light around it (cup_closing
    follows it). The edges are extended by repeating them, so
    that light falling off towards an edge is followed, and a dark band along
    an edge (a table beyond the page) counts as wide: as paper, not ink."""
    return filter_2d(filter_2d(grid, reach, max, 2 * reach), reach, min, 0)


def lowest_cups(values, bend):
    """[min over j of values[j] + bend * (i - j)**2, for each i]: the floor of
    the cups (parabolas) of curvature 2 bend hung at every point, in one pass
    (Felzenszwalb and Huttenlocher's lower envelope). It keeps the cups that
    are lowest somewhere, left to right, and where each starts to be: the
    cups hung at v < q cross at s = (values[q] + bend q^2 - values[v] -
    bend v^2) / (2 bend (q - v)), and a new cup hides the last one kept if
    they cross before that one starts."""
    centres, starts = [0], [-math.inf]
    for q in range(1, len(values)):
        lifted = values[q] + bend * q * q
        while True:
            v = centres[-1]
            s = (lifted - values[v] - bend * v * v) / (2 * bend * (q - v))
            if s > starts[-1]:
                break
            centres.pop()
            starts.pop()
        centres.append(q)
        starts.append(s)
    out, j = [], 0
    for i in range(len(values)):
        while j + 1 < len(starts) and starts[j + 1] < i:
            j += 1
        out.append(values[centres[j]] + bend * (i - centres[j]) ** 2)
    return out


def cup_closing(grid, bend):
    """Closing with a cup instead of a flat window: a cup, bend (dx^2 + dy^2)
    above its bottom, is hung over each cell and lowered until it touches the
    levels (a dilation); the paper at each cell is the lowest of the cups
    there (an erosion). A cup cannot reach down into a mark of width w
    further than bend (w/2)^2 below the level around it, so a mark is filled
    to within that; but it lies in any valley that curves less than it does,
    so a gentle dip of the light is followed, however deep or wide. Like a
    window, the cup is taken along rows then along columns (exactly, as
    dx^2 + dy^2 splits): a dilation is -lowest_cups(-levels), an erosion
    lowest_cups(levels)."""
    def dilate(rows):
        return [[-v for v in lowest_cups([-v for v in row], bend)] for row in rows]

    def erode(rows):
        return [lowest_cups(list(row), bend) for row in rows]

    def both_ways(step, rows):
        return [list(row) for row in zip(*step(zip(*step(rows))))]
    return both_ways(erode, both_ways(dilate, grid))


def interpolation(count, cell, cells):
    """For each of `count` pixels: (cell k, fraction f) to interpolate between
    the centres of cells k and k + 1 (cell centres at (k + 0.5) * cell)."""
    table = []
    for x in range(count):
        u = min(max((x + 0.5) / cell - 0.5, 0.0), cells - 1.0)
        k = min(int(u), max(cells - 2, 0))
        table.append((k, u - k))
    return table


def upsample(grid, cell, width, height):
    """The grid's levels at every pixel, interpolated linearly between cell
    centres (bilinear): a flat list of width * height floats."""
    across, down = interpolation(width, cell, len(grid[0])), interpolation(height, cell, len(grid))
    wide = [[row[k] + (row[min(k + 1, len(row) - 1)] - row[k]) * f for k, f in across]
            for row in grid]
    out = []
    for k, f in down:
        upper, lower = wide[k], wide[min(k + 1, len(wide) - 1)]
        out += [a + (b - a) * f for a, b in zip(upper, lower)]
    return out


def ink_is_dark(width, height, grey, cell):
    """Dark ink on light paper, or light on dark (MNIST, a blackboard)? A
    clearly light or dark border says so. A grey one (a dim photo) is decided
    by which departs more from the local median (the typical level around a
    cell, found along rows then along columns): darker marks or lighter ones.
    Ink is the minority wherever it is, so the median is the paper's level.
    Uneven light and thick strokes blur the count, and dim photos of paper
    are far more common than grey blackboards: light ink must win by 2 to 1."""
    level = border_level(width, height, grey)
    if level >= 160 or level < 64:
        return level > 127
    grid = cell_means(width, height, grey, cell)
    reach = max(1, round(PAPER_REACH * min(len(grid), len(grid[0]))))
    typical = filter_2d(grid, reach, median, reach)
    dark = light = 0.0
    for row, around in zip(grid, typical):
        for level, local in zip(row, around):
            dark += max(0.0, local - level - 2)         # 2: more than noise
            light += max(0.0, level - local - 2)
    return 2 * dark >= light


def window_or_cup(window, logs, bend):
    """In each cell, the lower of a flat window's closing and the closing of
    the logarithm of the levels by a cup of the given bend."""
    return [[min(a, exp(b)) for a, b in zip(flat, cup)]
            for flat, cup in zip(window, cup_closing(logs, bend))]


def paper_levels(width, height, grey):
    """The paper's level around every pixel, for dark ink (invert light ink
    first): two closings of the grid of cell means, each of which fills the
    ink, and the lower of the two in each cell: a flat window's, which keeps
    sharp edges (a shadow's, the page's) but lifts a dip of the light, and
    a cup's, which follows such a dip but rounds sharp edges off. The cup
    works on the logarithm of the levels, so that a dip counts by the share
    of the light it takes, in dim parts and bright alike. Then the smallest
    level of each cell and its 8 neighbours (so that the dark side of a sharp
    edge gets its own level and not its neighbour's), interpolated to every
    pixel: a flat list. But if the paper is within FLAT_LEVEL of the border's
    level nearly everywhere (a drawing, an even scan), it is that one level
    for all pixels: a number. That is judged with a gentler cup, which fills
    even a drawing's thickest ink, so that the drawings of MNIST itself are
    prepared on one level of paper, and yet sees a wide dip of the light."""
    cell = max(1, min(width, height) // GRID_CELLS)
    grid = cell_means(width, height, grey, cell)
    short = min(len(grid), len(grid[0]))
    window = closing(grid, max(1, round(PAPER_REACH * short)))
    logs = [[log(max(v, 1.0)) for v in row] for row in grid]
    level = border_level(width, height, grey)
    near = sum(abs(v - level) <= FLAT_LEVEL * max(level, 1) for row in
               filter_2d(window_or_cup(window, logs, FLAT_CUP / short ** 2), 1, min, 1)
               for v in row)
    if near >= FLAT_SHARE * len(grid) * len(grid[0]):
        return level
    paper = filter_2d(window_or_cup(window, logs, PAPER_CUP / short ** 2), 1, min, 1)
    return upsample(paper, cell, width, height)


def paper_light(paper):
    """The paper's level P that contrast divides by, for each pixel (or one
    number for all): at least DIM_PAPER of the typical paper, since an area
    darker than that is not lit paper but a table or a deep shadow, and
    dividing by its small level would blow its noise up into ink."""
    if not isinstance(paper, list):
        return max(paper, 1)
    lowest = max(1.0, DIM_PAPER * median(paper[::max(1, len(paper) // 20000)]))
    return [p if p > lowest else lowest for p in paper]


def contrast_of(grey, paper, light):
    """Ink as a fraction of the paper's light: (P - grey) / P, 0 on paper,
    1 for black ink; negative where it is lighter than the paper (P below,
    light as paper_light gives it)."""
    if not isinstance(paper, list):
        scale = 1.0 / light
        return [(paper - g) * scale for g in grey]
    return [(p - g) / q for p, g, q in zip(paper, grey, light)]


def noise_of(contrast, light, width, lag):
    """The camera's noise, as a standard deviation in grey levels: from the
    differences between pixels `lag` apart along a row, which are noise
    alone wherever the image is even -- on paper and inside strokes alike,
    so ink, even lots of it, does not count. Not always neighbours: a
    camera's noise comes in blotches (each pixel is made from its
    neighbours' sensors, then compressed), which neighbours share. A lag of
    one grid cell sees them, and in a small drawing, whose strokes are thin,
    it is one pixel, so that few pairs straddle a stroke's edge. In grey
    levels, P - grey = contrast x P, not in contrast: a photo's levels are
    gamma-encoded, which makes the camera's noise about the same on dim
    paper as on bright, so dim paper is noisier in contrast. For Gaussian
    noise of deviation s, the difference of two pixels has deviation
    s * sqrt(2), and its median absolute value is 0.6745 of that."""
    step = max(1, len(contrast) // 20000)
    lag = max(1, min(lag, width - 1))
    lit = light if isinstance(light, list) else [light] * len(contrast)
    differences = [abs(contrast[k + lag] * lit[k + lag] - contrast[k] * lit[k])
                   for k in range(0, len(contrast) - lag, step) if k % width < width - lag]
    return median(differences) / (0.6745 * math.sqrt(2)) if differences else 0.0


@dataclasses.dataclass(eq=False)
class Mark:
    """A connected group of inked cells (8-neighbours) of the marks grid."""
    cells: list
    left: int       # the box around it, in cells; right and bottom excluded
    top: int
    right: int
    bottom: int

    def size(self):
        return max(self.right - self.left, self.bottom - self.top)


def marked_cells(width, height, inked, cell):
    """The grid of cells (cell x cell pixels) holding at least one inked pixel."""
    columns = (width + cell - 1) // cell
    grid = bytearray(columns * ((height + cell - 1) // cell))
    for r in range(height):
        line = inked[r * width:(r + 1) * width]
        base = (r // cell) * columns
        for k in range(columns):
            if not grid[base + k] and 1 in line[k * cell:(k + 1) * cell]:
                grid[base + k] = 1
    return columns, grid


def find_marks(columns, grid):
    """The connected groups of marked cells, largest first."""
    seen, marks = bytearray(len(grid)), []
    rows = len(grid) // columns
    for start in range(len(grid)):
        if not grid[start] or seen[start]:
            continue
        seen[start], stack, cells = 1, [start], []
        while stack:
            k = stack.pop()
            cells.append(k)
            y, x = divmod(k, columns)
            for yy in (y - 1, y, y + 1):
                for xx in (x - 1, x, x + 1):
                    n = yy * columns + xx
                    if 0 <= yy < rows and 0 <= xx < columns and grid[n] and not seen[n]:
                        seen[n] = 1
                        stack.append(n)
        ys = [k // columns for k in cells]
        xs = [k % columns for k in cells]
        marks.append(Mark(cells, min(xs), min(ys), max(xs) + 1, max(ys) + 1))
    return sorted(marks, key=lambda mark: -len(mark.cells))


def edge_along(mark, columns, rows):
    """The edge of the image (left, right, top, bottom) that a mark runs
    along for at least EDGE_BAND of its length while staying within
    EDGE_DEPTH of it, or None: a page's edge or a shadow's, not a digit (a
    tightly cropped 7 runs along the top edge too, but reaches far below it)."""
    cells = [divmod(k, columns) for k in mark.cells]
    wide, tall = mark.right - mark.left, mark.bottom - mark.top
    along = (("left", {y for y, x in cells if x == 0}, rows, wide, columns),
             ("right", {y for y, x in cells if x == columns - 1}, rows, wide, columns),
             ("top", {x for y, x in cells if y == 0}, columns, tall, rows),
             ("bottom", {x for y, x in cells if y == rows - 1}, columns, tall, rows))
    for side, touching, length, depth, across in along:
        if len(touching) >= EDGE_BAND * length and depth <= EDGE_DEPTH * across:
            return side
    return None


def side_by_side(marks, gap):
    """Marks grouped by their column ranges, left to right: a mark joins the
    group before it if it starts less than `gap` columns after that group
    ends. A digit's strokes overlap in columns, or nearly, even where they do
    not touch (the bar of a 5, an open 4); two digits side by side leave a
    gap. Each group is [left, right, top, bottom, marks]."""
    groups = []
    for mark in sorted(marks, key=lambda m: m.left):
        if groups and mark.left < groups[-1][1] + gap:
            group = groups[-1]
            group[1:4] = (max(group[1], mark.right), min(group[2], mark.top),
                          max(group[3], mark.bottom))
            group[4].append(mark)
        else:
            groups.append([mark.left, mark.right, mark.top, mark.bottom, [mark]])
    return groups


def inside(mark, box, margin):
    left, right, top, bottom = box
    return (mark.left >= left - margin and mark.right <= right + margin and
            mark.top >= top - margin and mark.bottom <= bottom + margin)


def choose_digit(marks, columns, rows, cell, short_side):
    """(the marks that make the digit, [warnings]); raises MnistError when
    there is no digit to read: no ink, only a speck, only page edges.
      - a mark along an image edge is the page's or a shadow's edge: ignored;
      - the largest mark smaller than SPECK_SIZE of the image: only a speck;
      - marks at least PART_SIZE of the largest are grouped by columns
        (side_by_side); groups at least DIGIT_HEIGHT of the tallest are
        digits: if there are several, the one with the most ink is read, with
        a warning;
      - small marks inside the digit's box are part of it (a dot, a broken
        stroke), and so are those of more than one cell within 10% of it;
        all others are dropped before cropping, so a speck in a corner does
        not shrink the digit."""
    if not marks:
        raise MnistError("no ink found in the image "
                         "(no marks stand out from the paper around them)")
    notes, edges = [], [edge_along(mark, columns, rows) for mark in marks]
    for side in sorted(set(edges) - {None}):
        notes.append("ignored a dark band along the %s edge (the page's edge or a shadow)" % side)
    marks = [mark for mark, edge in zip(marks, edges) if edge is None]
    if not marks:
        raise MnistError("no digit found: the only ink is along the image's edges")
    largest = max(mark.size() for mark in marks)
    if largest * cell < max(3, SPECK_SIZE * short_side):
        raise MnistError("no digit found: the only ink is a speck, far too small for a digit "
                         "(under %d%% of the image's size)" % round(100 * SPECK_SIZE))
    parts = [mark for mark in marks if mark.size() >= PART_SIZE * largest]
    groups = side_by_side(parts, DIGIT_GAP * max(mark.bottom - mark.top for mark in parts))
    tallest = max(group[3] - group[2] for group in groups)
    digits = [group for group in groups if group[3] - group[2] >= DIGIT_HEIGHT * tallest]
    left, right, top, bottom, kept = max(digits,
                                         key=lambda g: sum(len(mark.cells) for mark in g[4]))
    if len(digits) > 1:
        notes.append("found %d digits side by side; reading the one with the most ink (crop the "
                     "image to one digit to choose)" % len(digits))
    box, margin = (left, right, top, bottom), max(1, round(0.1 * max(right - left, bottom - top)))
    others = [mark for mark in marks if mark not in kept]
    near = [mark for mark in others if mark.size() < PART_SIZE * largest and
            (inside(mark, box, 0) or len(mark.cells) > 1 and inside(mark, box, margin))]
    stray = [mark for mark in others if mark not in near and mark.size() * cell >= STRAY_SIZE *
             short_side and not any(mark in group[4] for group in digits)]
    if stray:
        notes.append("ignored %d small mark%s away from the digit"
                     % (len(stray), "" if len(stray) == 1 else "s"))
    return kept + near, notes


def resample(image, width, height, new_width, new_height):
    """Box-filter resampling: each new pixel is the average of the old area it
    covers (fractions of pixels counted by their share). Rows first, then columns."""
    def weights(old, new):
        """For each new index, [(old index, share)] of the old pixels it covers."""
        ratio = old / new
        table = []
        for n in range(new):
            start, end = n * ratio, (n + 1) * ratio
            parts = []
            k = int(start)
            while k < end and k < old:
                share = min(end, k + 1) - max(start, k)
                if share > 1e-12:
                    parts.append((k, share / ratio))
                k += 1
            table.append(parts)
        return table
    across, down = weights(width, new_width), weights(height, new_height)
    rows = [[sum(image[r * width + k] * s for k, s in parts) for parts in across]
            for r in range(height)]
    return [[sum(rows[k][c] * s for k, s in parts) for c in range(new_width)] for parts in down]


def centre_by_mass(image, width, height):
    """Paste a small image into 28x28 so its centre of mass lands on pixel (14, 14)."""
    mass = sum(sum(row) for row in image) or 1.0
    cy = sum(r * sum(row) for r, row in enumerate(image)) / mass
    cx = sum(c * v for row in image for c, v in enumerate(row)) / mass
    dy, dx = int(round(IMAGE_SIDE / 2 - cy)), int(round(IMAGE_SIDE / 2 - cx))   # as MNIST: (14, 14)
    out = bytearray(N_PIXELS)
    for r in range(height):
        for c in range(width):
            y, x = r + dy, c + dx
            if 0 <= y < IMAGE_SIDE and 0 <= x < IMAGE_SIDE:
                out[y * IMAGE_SIDE + x] = min(255, int(round(image[r][c])))
    return bytes(out)


NEGATIVE = bytes(range(255, -1, -1))          # bytes.translate table: v -> 255 - v


def digit_ink(width, height, grey):
    """(ink 0..255 per pixel, inked: 1 where it is a mark, 0 elsewhere, and
    whether the paper is noisy) of a working copy, its paper taken out.
    Raises MnistError if ink covers most of the image."""
    cell = max(1, min(width, height) // GRID_CELLS)
    if not ink_is_dark(width, height, grey, cell):
        grey = grey.translate(NEGATIVE)
    paper = paper_levels(width, height, grey)
    light = paper_light(paper)
    contrast = contrast_of(grey, paper, light)
    noise = noise_of(contrast, light, width, cell)
    # Where the paper is P, the noise is noise / P in contrast, and the floor
    # NOISE_FLOOR such deviations. A mark's contrast c reaches MARK_MINIMUM,
    # MARK_LEVEL of the way from the floor to the darkest ink (the peak), and
    # MARK_NOISE deviations, which is MARK_NOISE / NOISE_FLOOR floors.
    peak, above, per_floor = max(contrast), 1.0 - MARK_LEVEL, MARK_NOISE / NOISE_FLOOR
    least = MARK_LEVEL * peak
    floors = ([NOISE_FLOOR * noise / p for p in light] if isinstance(light, list) else
              [NOISE_FLOOR * noise / light] * len(contrast))
    inked = bytearray([c >= MARK_MINIMUM and c >= least + above * f and c >= per_floor * f
                       for c, f in zip(contrast, floors)])
    ink = [(c - f) * 255.0 if c > f else 0.0 for c, f in zip(contrast, floors)]
    share = inked.count(1) / len(inked)
    if share > TOO_FULL:
        raise MnistError("no digit found: ink covers %d%% of the image, so there is no paper "
                         "around a digit" % round(100 * share))
    return ink, inked, noise > 0


def erase(ink, inked, width, height, columns, cell, cells):
    """Take the ink out of the given cells of the marks grid."""
    for k in cells:
        y, x = divmod(k, columns)
        left, right = x * cell, min(width, (x + 1) * cell)
        for r in range(y * cell, min(height, (y + 1) * cell)):
            ink[r * width + left:r * width + right] = [0.0] * (right - left)
            inked[r * width + left:r * width + right] = bytes(right - left)


def prepare_digit_with_notes(width, height, luminance):
    """(a photo or drawing of a digit as a 28x28 MNIST image: 784 bytes,
    ink = 255; [warnings about it]). Raises MnistError when there is no
    digit to read (no ink, only a speck, ink everywhere).

    MNIST's digits were prepared this way, and the network only knows digits
    prepared this way:
      1. ink is bright on dark: each pixel's ink is the share of the light
         of the paper around it that it takes away, (P - grey) / P (light
         ink on dark paper is made dark on light first; digit_ink);
      2. crop to the digit's ink, specks and other marks left out (choose_digit);
      3. scale so the longer side is 20 pixels, keeping the aspect ratio
         (each new pixel averages the area it covers: grey edges, as in MNIST),
         then stretch the levels so the darkest ink is 255 again (a thin pen
         on a big page would otherwise fade to grey);
      4. place it in 28x28 with its centre of mass at the centre."""
    width, height, grey = working_copy(width, height, luminance)
    ink, inked, noisy = digit_ink(width, height, grey)
    cell = max(1, -(-max(width, height) // MARK_CELLS))
    columns, grid = marked_cells(width, height, inked, cell)
    marks = find_marks(columns, grid)
    candidates = [mark for mark in marks if len(mark.cells) > 1 or not noisy]  # lone: noise
    kept, notes = choose_digit(candidates, columns, len(grid) // columns, cell, min(width, height))
    keep = {k for mark in kept for k in mark.cells}
    erase(ink, inked, width, height, columns, cell,
          {k for mark in marks for k in mark.cells} - keep)
    left, top, right, bottom = ink_bounds(inked, width)          # section 9
    right, bottom = right + 1, bottom + 1
    w, h = right - left, bottom - top
    crop = [ink[r * width + c] for r in range(top, bottom) for c in range(left, right)]
    scale = 20.0 / max(w, h)
    new_w, new_h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    scaled = resample(crop, w, h, new_w, new_h)
    peak = max(max(row) for row in scaled) or 1.0
    scaled = [[v * 255.0 / peak for v in row] for row in scaled]
    return centre_by_mass(scaled, new_w, new_h), notes


def prepare_digit(width, height, luminance):
    """The 784-byte MNIST image of prepare_digit_with_notes; all zero (blank)
    when there is no digit to read."""
    try:
        return prepare_digit_with_notes(width, height, luminance)[0]
    except MnistError:
        return bytes(N_PIXELS)


def read_digit(source):
    """An image, read and prepared as MNIST's digits were, and what the
    preparation noticed: (784 bytes that net.predict reads, [warnings]).
    source is a file's path, or the file's content as bytes (an upload, a
    download). MnistError if it cannot be read, or holds no digit to read."""
    if isinstance(source, (bytes, bytearray)):
        name, (width, height, grey) = "image", decode_image("image", bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        name, (width, height, grey) = source, read_image(source)
    else:
        raise MnistError("read_digit takes a file's path or its bytes, not %s"
                         % type(source).__name__)
    try:
        return prepare_digit_with_notes(width, height, grey)
    except MnistError as e:                 # no digit to read: say which image
        raise MnistError("%s: %s" % (name, e))


# =============================================================================
# 20. A page to draw on: the network reads your digit as you draw
# =============================================================================
# `python mnist_pure.py serve` runs a small web server (the standard library's
# http.server) with one page and one API. Each side does what it does best:
#   - the browser draws (mouse, finger or pen) and sends the drawing as a PNG;
#     a photo that is a PNG file goes as the file itself, and one in any other
#     format the browser knows (JPEG, HEIC, WebP ...) is decoded by the browser
#     and sent as a PNG of the photo at its own shape;
#   - this program reads that PNG, prepares it exactly as `predict` does
#     (section 19: the same functions), runs the network, and answers with the
#     guess, the ten probabilities, the 28x28 image the network saw and the
#     hidden units' activity, which the page draws.
#
#     GET  /              the page (HTML, CSS and JavaScript, all below: no
#                         file is ever served, nothing is fetched from elsewhere)
#     GET  /api/model     {"architecture": "784-128-10", "layers": [...], ...}
#     POST /api/predict   body: an image file (PNG or PGM/PBM/PPM), answer:
#                         {"guess", "probabilities", "image", "hidden", "warnings"}
#     anything else       {"error": "..."} with a 4xx status
#
# Every request is read within limits: the body's declared length is checked
# before a byte of it is read, a client gets SERVE_TIMEOUT seconds of silence
# at most, and at most PREPARE_AT_ONCE images are decoded at a time (a large
# image's decoded pixels take memory); a request that waits PREPARE_WAIT
# seconds for its turn gets 503 (try again) rather than waiting on.
#
# Only this server's own page may use it. A page on another site can make the
# browser send requests here too (a form's POST needs nobody's permission), and
# with DNS rebinding (evil.example's name made to point at 127.0.0.1) even read
# the answers, as if it were this page. So the Host header must name this
# server (127.0.0.1, localhost, [::1], the --host address, or a name allowed
# with --allow-host), and a POST whose Origin is another site's is refused:
# both 403. Requests without an Origin come from no web page (curl, scripts).

SERVE_MAX_BODY = 8 << 20      # bytes: a drawing is ~5 KiB, a photo ~0.1-4 MiB
SERVE_TIMEOUT = 20            # seconds a client may stay silent in the middle of a request
SERVE_BACKLOG = 128           # connections the system holds until they are accepted (http.server's
                              # 5 made a burst of 100 clients see resets); the system may cap it
PREPARE_AT_ONCE = 2           # images decoded at once; other requests wait their turn ...
PREPARE_WAIT = 10             # ... this many seconds at most; then 503, with Retry-After
RETRY_AFTER = 2               # seconds: the 503's advice
UPLOAD_NAME = "upload"        # what error messages call the request's image


def network_answer(network, image):
    """(p, hidden) for a 784-byte MNIST-style image: the ten probabilities, and
    each hidden layer's activity as a dense list, one list per hidden layer
    (the forward pass keeps only the live units; the rest are 0)."""
    acts = network.forward(image)
    return acts.p, [dense_from(h, n) for h, n in zip(acts.inputs[1:], network.sizes[1:-1])]


def digit_answer(network, content):
    """POST /api/predict's answer for an uploaded image file's content: the
    same reading and preparation as `predict`, then the network's answer.
    Where there is no digit to read, guess, probabilities and hidden are None
    (null) and warnings says why."""
    try:
        image, warnings = prepare_digit_with_notes(*decode_image(UPLOAD_NAME, content))
    except MnistError as e:
        if str(e).startswith(UPLOAD_NAME + ":"):      # the file itself could not be read
            raise
        image, warnings = bytes(N_PIXELS), [str(e)]   # readable, but no digit to read
    if not any(image):            # no digit: nothing for the network to read, no answer of its
        return {"guess": None, "probabilities": None, "image": list(image), "hidden": None,
                "warnings": warnings}       # (on a blank image it would still "see" some digit)
    p, hidden = network_answer(network, image)
    return {"guess": argmax(p),
            "probabilities": p,
            "image": list(image),
            "hidden": [[round(value, 4) for value in layer] for layer in hidden],
            "warnings": warnings}


def metadata_number(metadata, key, kind):
    """A model file's metadata value (text) as a kind (int or float), or None
    where it is missing or not such a number: any tool may have written it."""
    try:
        value = float(metadata.get(key, ""))
    except ValueError:
        return None
    if not math.isfinite(value) or (kind is int and not value.is_integer()):
        return None
    return kind(value)


def model_description(network, metadata):
    """GET /api/model's answer. The layer sizes are found by asking the
    network (through network_answer), so they are right for any architecture."""
    p, hidden = network_answer(network, bytes(N_PIXELS))
    layers = [N_PIXELS] + [len(layer) for layer in hidden] + [len(p)]
    return {"architecture": "-".join(map(str, layers)),
            "layers": layers,
            "test_accuracy": metadata_number(metadata, "test_accuracy", float),
            "epochs": metadata_number(metadata, "epochs", int),
            "training_images": metadata_number(metadata, "training_images", int)}


def printable(text):
    """text with control characters escaped: request lines come from anyone,
    and a log line must not move the cursor or ring the terminal's bell."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


# The page: HTML, CSS and JavaScript in one string, served as it is. Its
# script draws, sends the drawing or photo (at most one request in flight, one
# every 150 ms while drawing), and draws the answer: bars, the 28x28 image the
# network saw, and one picture per hidden layer, whatever their number and size.
PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mnist_pure: draw a digit</title>
<link rel="icon" href="data:,">
<style>
:root { --ink: #1d2330; --muted: #5b6475; --paper: #f3f4f7; --card: #fff; --line: #d9dde5;
        --accent: #2f6fde; --accent-soft: #dbe6fb; --bar: #a9bde3; --warn: #a4370f; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--ink); background: var(--paper); }
header, main, footer { max-width: 980px; margin: 0 auto; padding: 0 16px; }
header { padding-top: 18px; }
h1 { font-size: 1.5rem; margin: 0; }
header p { margin: 2px 0 0; color: var(--muted); }
main { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 16px;
       margin-top: 14px; }
@media (max-width: 720px) { main { grid-template-columns: minmax(0, 1fr); } }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 12px;
        padding: 16px; }
h2 { font-size: 1rem; margin: 0 0 10px; }
#pad { display: block; width: 100%; max-width: 420px; aspect-ratio: 1 / 1; margin: 0 auto;
       background: #fff; border: 2px dashed var(--line); border-radius: 8px;
       touch-action: none; cursor: crosshair; }
.dropping #pad { border-color: var(--accent); background: var(--accent-soft); }
.tools { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; justify-content: center;
         margin-top: 12px; }
button { font: inherit; min-height: 40px; padding: 6px 14px; border: 1px solid var(--line);
         border-radius: 8px; background: #fff; color: var(--ink); cursor: pointer; }
button:hover { border-color: var(--accent); }
button:focus-visible, input:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
.pen { display: flex; align-items: center; gap: 6px; color: var(--muted); }
.pen input { width: 110px; }
.hint { margin: 10px 0 0; text-align: center; color: var(--muted); font-size: .9rem; }
.answer { display: flex; align-items: baseline; gap: 14px; }
#guess { font-size: 4rem; font-weight: 700; line-height: 1; min-width: 1ch; }
#confidence { color: var(--muted); }
#status { min-height: 1.4em; margin: 6px 0 0; color: var(--warn); font-size: .9rem; }
.bars { list-style: none; margin: 8px 0 0; padding: 0; }
.bars li { display: grid; grid-template-columns: 1.2em 1fr 3.8em; gap: 8px; align-items: center;
           height: 22px; }
.bars .track { height: 14px; border-radius: 4px; background: var(--paper); overflow: hidden; }
.bars .fill { display: block; height: 100%; width: 0; background: var(--bar); }
.bars li.top { font-weight: 700; }
.bars li.top .fill { background: var(--accent); }
.bars .pct { text-align: right; color: var(--muted); font-size: .85rem;
             font-variant-numeric: tabular-nums; }
.inside { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 16px; }
#layers { display: contents; }
figure { margin: 0; }
figcaption { max-width: 140px; margin-top: 4px; color: var(--muted); font-size: .8rem; }
#seen, .layer { width: 140px; background: #000; border-radius: 4px; image-rendering: pixelated; }
#seen { height: 140px; }
footer { padding-top: 14px; padding-bottom: 24px; color: var(--muted); font-size: .85rem; }
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden;
                   clip: rect(0 0 0 0); white-space: nowrap; }
</style>
</head>
<body>
<header>
  <h1>Draw a digit</h1>
  <p id="model">A neural network in pure Python reads it as you draw.</p>
</header>
<main>
  <section class="card" id="drawing" aria-labelledby="drawing-title">
    <h2 id="drawing-title">Your digit</h2>
    <canvas id="pad" role="img"
            aria-label="Drawing area: draw one digit, 0 to 9, with a mouse, finger or pen,
                        or drop a photo of one here"></canvas>
    <div class="tools">
      <button type="button" id="undo" aria-label="Undo the last stroke">Undo</button>
      <button type="button" id="clear" aria-label="Clear the drawing">Clear</button>
      <button type="button" id="photo"
              aria-label="Read a digit from a photo or an image file">Photo&hellip;</button>
      <label class="pen" for="pen">Pen <input type="range" id="pen" min="6" max="40" value="24"
             aria-label="Pen width"></label>
      <input type="file" id="file" accept="image/*" class="visually-hidden" tabindex="-1"
             aria-hidden="true">
    </div>
    <p class="hint">One digit, about as large as the box. Or drop a photo of one here.</p>
  </section>
  <section class="card" aria-labelledby="answer-title">
    <h2 id="answer-title">What the network reads</h2>
    <div class="answer">
      <output id="guess" aria-live="polite" aria-label="The network's guess">?</output>
      <span id="confidence">draw a digit</span>
    </div>
    <p id="status" role="status"></p>
    <ol class="bars" id="bars" aria-label="How sure the network is of each digit"></ol>
    <div class="inside">
      <figure>
        <canvas id="seen" width="28" height="28" role="img"
                aria-label="The 28 by 28 image the network saw"></canvas>
        <figcaption>What it saw: your digit prepared as MNIST's were, 28&times;28</figcaption>
      </figure>
      <div id="layers"></div>
    </div>
  </section>
</main>
<footer>
  Your drawing goes to this program only (<code>POST /api/predict</code>, as a PNG; a photo as
  its own PNG file, or else as a PNG of it at its own shape); it prepares it with the same code
  as <code>mnist_pure.py predict</code> and answers with the guess, the ten probabilities, the
  image above and the hidden units' activity (brighter: more active).
</footer>
<script>
"use strict";
const SEND_SIDE = 140;      // drawings go as 140x140 PNGs: 5x MNIST's side, quick to decode
const FILE_LIMIT = 8 << 20; // bytes: the server's limit on a body (SERVE_MAX_BODY)
const PHOTO_PIXELS = 1200000; // photos the page encodes go as PNGs of at most this many pixels
const BESIDE_PHOTO = "#dfe3ea"; // the pad beside a photo: not part of it, so shaded
const THROTTLE_MS = 150;    // while drawing, at most one request this often
const PEN_SCALE = 280;      // the pen slider counts pixels of a 280-pixel pad
const LAYER_WIDTH = 140;    // CSS pixels of each hidden layer's picture

const pad = document.getElementById("pad");
const pen = document.getElementById("pen");
const fileInput = document.getElementById("file");
const drawing = document.getElementById("drawing");
const guessBox = document.getElementById("guess");
const confidence = document.getElementById("confidence");
const statusLine = document.getElementById("status");
const seen = document.getElementById("seen");
const layersBox = document.getElementById("layers");

// What the page knows; with ?test=1 in the address, tests read it as window.mnistState.
// drawingVersion counts changes to the drawing; answeredVersion is the version
// the answer on show belongs to: equal (and not busy) means the page is settled.
// sent says what the last request carried: "file" (a photo's own bytes) or "png WxH".
const state = { drawingVersion: 0, answeredVersion: 0, busy: false, requests: 0, sent: null,
                guess: null, probabilities: null, image: null, hidden: null,
                warnings: [], error: null };
if (new URLSearchParams(location.search).has("test")) window.mnistState = state;

let strokes = [];           // each {width, points: [[x, y], ...]}, in units of the pad's side
let photo = null;           // {image: an ImageBitmap or <img>, file: its PNG file or null}
let activePointer = null;   // the pointer drawing now (a second finger is ignored)
let timer = null;           // the next request, when one is scheduled
let lastSent = -Infinity;   // when the last request left (performance.now())
let emptiedAt = 0;          // the drawing's version when the pad was last emptied

function isEmpty() {
  return strokes.length === 0 && photo === null;
}

// Strokes, in units of the pad's side, painted at `scale` pixels per unit, the
// point (left, top) of the pad at the canvas's corner.
function paintStrokes(context, scale, left, top) {
  context.fillStyle = context.strokeStyle = "#000";
  context.lineCap = context.lineJoin = "round";
  const at = ([x, y]) => [(x - left) * scale, (y - top) * scale];
  for (const stroke of strokes) {
    const [x0, y0] = at(stroke.points[0]);
    if (stroke.points.length === 1) {     // a dot: a path of one point draws nothing
      context.beginPath();
      context.arc(x0, y0, stroke.width * scale / 2, 0, 2 * Math.PI);
      context.fill();
      continue;
    }
    context.lineWidth = stroke.width * scale;
    context.beginPath();
    context.moveTo(x0, y0);
    for (const point of stroke.points.slice(1)) context.lineTo(...at(point));
    context.stroke();
  }
}

// Where the photo lies on the pad, in units of the pad's side: scaled to fit, centred.
function photoBox() {
  const scale = 1 / Math.max(photo.image.width, photo.image.height);
  const width = photo.image.width * scale, height = photo.image.height * scale;
  return { left: (1 - width) / 2, top: (1 - height) / 2, width, height };
}

// The pad on screen: white paper and the strokes; or the photo, scaled to fit,
// with the strokes on it (and only on it: the pad beside a photo is not part
// of what is read, so it is shaded, and ink there is not drawn).
function redraw() {
  const context = pad.getContext("2d");
  const side = pad.width;
  context.fillStyle = photo ? BESIDE_PHOTO : "#fff";
  context.fillRect(0, 0, side, side);
  if (!photo) {
    paintStrokes(context, side, 0, 0);
    return;
  }
  const box = photoBox();
  context.save();
  context.beginPath();
  context.rect(box.left * side, box.top * side, box.width * side, box.height * side);
  context.clip();
  context.fillStyle = "#fff";           // under a photo's transparent parts, as the server does
  context.fillRect(0, 0, side, side);
  context.drawImage(photo.image, box.left * side, box.top * side,
                    box.width * side, box.height * side);
  paintStrokes(context, side, 0, 0);
  context.restore();
}

// The pad's pixels follow its size on screen (times the screen's density), so
// strokes stay sharp on a phone and on a large monitor alike.
function fitPad() {
  const side = Math.max(1, Math.round(pad.clientWidth * (window.devicePixelRatio || 1)));
  if (pad.width !== side) pad.width = pad.height = side;
  redraw();
}

function canvasAsPng(canvas) {
  return new Promise((resolve, reject) => canvas.toBlob(
    (blob) => blob ? resolve(blob) : reject(new Error("the browser could not make a PNG")),
    "image/png"));
}

// What goes to the server, so that a photo is read as `predict` reads its file:
//   - a drawing: a SEND_SIDE square PNG, black strokes on white;
//   - a photo that is a PNG file: the file itself, byte for byte, so the
//     answer is exactly `predict`'s for that file;
//   - any other photo (JPEG, HEIC, WebP ...; a PNG the server cannot read, such
//     as an interlaced one; a photo with strokes drawn on it): a PNG of the
//     photo as the browser decoded it, at its own shape (never squared onto
//     white paper: the paper beside it would be brighter than the photo's own,
//     and its edges and shadows would read as ink), with the strokes on it.
//     Only a photo of over PHOTO_PIXELS is scaled down, by a whole factor: the
//     server works on at most 300,000 pixels anyway (WORK_PIXELS: it shrinks
//     larger images itself, averaging blocks of a whole number of pixels), and
//     1.2 megapixels stay under the server's limit on a body even at 4 bytes a
//     pixel, uncompressed.
// Returns [body, description] (the description is for state.sent).
async function requestBody() {
  const canvas = document.createElement("canvas");
  if (!photo) {
    canvas.width = canvas.height = SEND_SIDE;
    const context = canvas.getContext("2d");
    context.fillStyle = "#fff";
    context.fillRect(0, 0, SEND_SIDE, SEND_SIDE);
    paintStrokes(context, SEND_SIDE, 0, 0);
    return [await canvasAsPng(canvas), "png " + SEND_SIDE + "x" + SEND_SIDE];
  }
  if (photo.file && strokes.length === 0) return [photo.file, "file"];
  const { width, height } = photo.image;
  let factor = 1;
  while (Math.floor(width / factor) * Math.floor(height / factor) > PHOTO_PIXELS) factor += 1;
  canvas.width = Math.max(1, Math.floor(width / factor));
  canvas.height = Math.max(1, Math.floor(height / factor));
  const context = canvas.getContext("2d");
  context.imageSmoothingQuality = "high";
  context.fillStyle = "#fff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.drawImage(photo.image, 0, 0, canvas.width, canvas.height);
  const box = photoBox();
  paintStrokes(context, canvas.width / box.width, box.left, box.top);
  return [await canvasAsPng(canvas), "png " + canvas.width + "x" + canvas.height];
}

// Every change to the drawing comes here: repaint, then ask the server (soon).
function drawingChanged() {
  redraw();
  state.drawingVersion += 1;
  if (isEmpty()) {
    showNothing();
    emptiedAt = state.answeredVersion = state.drawingVersion;
    return;
  }
  scheduleSend();
}

// At most one request in flight, and at most one every THROTTLE_MS: the
// answer's arrival schedules the next request if the drawing changed meanwhile.
function scheduleSend() {
  if (state.busy || timer !== null) return;
  const wait = Math.max(0, lastSent + THROTTLE_MS - performance.now());
  timer = setTimeout(send, wait);
}

async function send() {
  timer = null;
  if (isEmpty()) return;
  const version = state.drawingVersion;
  const stale = () => version < emptiedAt;    // the pad was cleared since: drop the answer
  state.busy = true;
  state.requests += 1;
  lastSent = performance.now();
  try {
    const [body, sent] = await requestBody();
    state.sent = sent;
    const response = await fetch("/api/predict", { method: "POST", body,
                                                   headers: { "Content-Type": "image/png" } });
    const answer = await response.json();
    if (response.status === 400 && photo && body === photo.file) {
      photo.file = null;        // the server cannot read this PNG file: send the browser's decoding
      drawingChanged();
      return;
    }
    if (!response.ok) throw new Error(answer.error || "the server answered " + response.status);
    if (!stale()) show(answer);
    state.error = null;
  } catch (error) {
    const message = error instanceof TypeError ? "the server does not answer: is it still running?"
                                               : error.message;
    state.error = message;
    if (!stale()) statusLine.textContent = message;
  } finally {
    state.busy = false;
    if (!stale()) state.answeredVersion = version;
    if (!isEmpty() && state.answeredVersion !== state.drawingVersion) scheduleSend();
  }
}

// The ten bars, made once: digit, bar, percentage.
const bars = [];
for (let digit = 0; digit < 10; digit++) {
  const row = document.createElement("li");
  const label = document.createElement("span");
  const track = document.createElement("span");
  const fill = document.createElement("span");
  const pct = document.createElement("span");
  label.textContent = digit;
  track.className = "track";
  fill.className = "fill";
  pct.className = "pct";
  track.append(fill);
  row.append(label, track, pct);
  document.getElementById("bars").append(row);
  bars.push({ row, fill, pct });
}

function percent(p) {
  return (100 * p).toFixed(p > 0.999 || p < 0.001 ? 0 : 1) + "%";
}

function drawBars(probabilities, guess) {
  bars.forEach((bar, digit) => {
    const p = probabilities ? probabilities[digit] : 0;
    bar.fill.style.width = (100 * p).toFixed(1) + "%";
    bar.pct.textContent = probabilities ? percent(p) : "";
    bar.row.classList.toggle("top", digit === guess);
  });
}

// Grey levels on a small canvas, one pixel per value, scaled up by CSS
// (image-rendering: pixelated keeps the squares sharp). 0 is black, top is white.
function drawGrey(canvas, values, top) {
  const context = canvas.getContext("2d");
  const picture = context.createImageData(canvas.width, canvas.height);
  values.forEach((value, i) => {
    const grey = top > 0 ? Math.round(255 * Math.max(0, value) / top) : 0;
    picture.data.set([grey, grey, grey, 255], 4 * i);
  });
  context.putImageData(picture, 0, 0);
}

// One picture per hidden layer, however many layers and units there are: the
// units in a near-square grid, each unit's brightness its activity.
function drawLayers(hidden) {
  const shape = hidden.map((layer) => layer.length).join("-");
  if (layersBox.dataset.shape !== shape) {
    layersBox.replaceChildren(...hidden.map(layerFigure));
    layersBox.dataset.shape = shape;
  }
  hidden.forEach((layer, k) => {
    const figure = layersBox.children[k];
    drawGrey(figure.querySelector("canvas"), layer, layer.reduce((a, b) => Math.max(a, b), 0));
    const active = layer.filter((value) => value > 0).length;
    figure.querySelector("figcaption").textContent =
      "Hidden layer " + (k + 1) + ": " + active + " of " + layer.length + " units active";
  });
}

// No digit, no activity to show: the layers dark, and their captions say only their size.
function quietLayers() {
  [...layersBox.children].forEach((figure, k) => {
    const canvas = figure.querySelector("canvas");
    drawGrey(canvas, [], 0);
    figure.querySelector("figcaption").textContent =
      "Hidden layer " + (k + 1) + ": " + figure.dataset.units + " units";
  });
}

function layerFigure(layer, k) {
  const columns = Math.ceil(Math.sqrt(layer.length));
  const rows = Math.ceil(layer.length / columns);
  const canvas = document.createElement("canvas");
  canvas.width = columns;
  canvas.height = rows;
  canvas.className = "layer";
  canvas.style.height = (LAYER_WIDTH * rows / columns).toFixed(1) + "px";
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", "Activity of hidden layer " + (k + 1));
  const figure = document.createElement("figure");
  figure.dataset.units = layer.length;
  figure.append(canvas, document.createElement("figcaption"));
  return figure;
}

function show(answer) {
  Object.assign(state, { guess: answer.guess, probabilities: answer.probabilities,
                         image: answer.image, hidden: answer.hidden, warnings: answer.warnings });
  const p = answer.probabilities;       // null, as guess and hidden, where there is no digit
  guessBox.textContent = answer.guess === null ? "?" : String(answer.guess);
  confidence.textContent = answer.guess === null ? "no digit to read"
                                                  : percent(p[answer.guess]) + " sure";
  statusLine.textContent = answer.warnings.join("; ");
  drawBars(answer.guess === null ? null : p, answer.guess);
  drawGrey(seen, answer.image, 255);
  if (answer.hidden) drawLayers(answer.hidden);
  else quietLayers();
}

function showNothing() {
  Object.assign(state, { guess: null, probabilities: null, image: null, hidden: null,
                         warnings: [], error: null });
  guessBox.textContent = "?";
  confidence.textContent = "draw a digit";
  statusLine.textContent = "";
  drawBars(null, null);
  drawGrey(seen, [], 255);
  quietLayers();
}

// Drawing with Pointer Events: one code path for mouse, finger and pen.
function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) / box.width, (event.clientY - box.top) / box.height];
}

pad.addEventListener("pointerdown", (event) => {
  if (activePointer !== null || (event.pointerType === "mouse" && event.button !== 0)) return;
  event.preventDefault();
  activePointer = event.pointerId;
  pad.setPointerCapture(event.pointerId);
  strokes.push({ width: pen.value / PEN_SCALE, points: [padPoint(event)] });
  drawingChanged();
});

pad.addEventListener("pointermove", (event) => {
  if (event.pointerId !== activePointer) return;
  const points = strokes[strokes.length - 1].points;
  const coalesced = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const each of coalesced.length ? coalesced : [event]) points.push(padPoint(each));
  drawingChanged();
});

function endStroke(event) {
  if (event.pointerId !== activePointer) return;
  activePointer = null;
  drawingChanged();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function undo() {
  if (strokes.length) strokes.pop();
  else photo = null;
  drawingChanged();
}
document.getElementById("undo").addEventListener("click", undo);
document.getElementById("clear").addEventListener("click", () => {
  strokes = [];
  photo = null;
  drawingChanged();
});
document.addEventListener("keydown", (event) => {
  if ((event.ctrlKey || event.metaKey) && event.key === "z") {
    event.preventDefault();
    undo();
  }
});

// Photos: the browser decodes whatever it can (JPEG, PNG, WebP, HEIC on Apple
// devices ...) to show it on the pad; what is sent is the file itself if it is
// a PNG, else the browser's decoding (see requestBody).
async function decodePhoto(file) {
  if (window.createImageBitmap) {
    try {
      return await createImageBitmap(file);
    } catch (error) {
      // fall through: an <img> reads some formats createImageBitmap does not (SVG)
    }
  }
  return new Promise((resolve, reject) => {
    const image = new Image();
    const url = URL.createObjectURL(file);
    image.onload = () => { URL.revokeObjectURL(url); resolve(image); };
    image.onerror = () => {
      URL.revokeObjectURL(url);
      reject(new Error((file.name || "that file") + ": this browser cannot read it as an image"));
    };
    image.src = url;
  });
}

const PNG_SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

async function loadPhoto(file) {
  try {
    const image = await decodePhoto(file);
    const head = new Uint8Array(await file.slice(0, 8).arrayBuffer());
    const isPng = PNG_SIGNATURE.every((byte, i) => head[i] === byte);
    // The bytes are read now: the file on disk may change or vanish later.
    const bytes = isPng && file.size <= FILE_LIMIT ? await file.arrayBuffer() : null;
    photo = { image, file: bytes && new Blob([bytes], { type: "image/png" }) };
    strokes = [];
    drawingChanged();
  } catch (error) {
    statusLine.textContent = error.message;
  }
}

document.getElementById("photo").addEventListener("click", () => fileInput.click());
fileInput.addEventListener("change", () => {
  if (fileInput.files[0]) loadPhoto(fileInput.files[0]);
  fileInput.value = "";
});
drawing.addEventListener("dragover", (event) => {
  event.preventDefault();
  drawing.classList.add("dropping");
});
drawing.addEventListener("dragleave", () => drawing.classList.remove("dropping"));
drawing.addEventListener("drop", (event) => {
  event.preventDefault();
  drawing.classList.remove("dropping");
  if (event.dataTransfer.files[0]) loadPhoto(event.dataTransfer.files[0]);
});
// A file dropped anywhere else must not make the browser leave the page for it.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

// The model's description, for the line under the title.
fetch("/api/model").then((response) => response.json()).then((model) => {
  const parts = [model.architecture + " network"];
  if (model.test_accuracy !== null) {
    parts.push((100 * model.test_accuracy).toFixed(2) + "% on MNIST's test set");
  }
  if (model.training_images) {
    parts.push("trained on " + model.training_images.toLocaleString("en") + " images");
  }
  document.getElementById("model").textContent =
    "A neural network in pure Python reads it as you draw: " + parts.join(", ") + ".";
}).catch(() => {});

new ResizeObserver(fitPad).observe(pad);
fitPad();
showNothing();
</script>
</body>
</html>
"""


EVERY_INTERFACE = ("", "0.0.0.0", "::")         # --host values that listen on every interface
OWN_NAMES = ("localhost", "127.0.0.1", "::1")   # this machine, as the Host header may name it
# A Host header: a name or an IP address (IPv6 in brackets), perhaps with a
# port: "127.0.0.1:8000", "[::1]:8000", "localhost". An origin is "http://" and the same.
HOST_HEADER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::([0-9]{1,5}))?")


def is_loopback(host):
    """True for the addresses only this machine can reach: 127.x.x.x, ::1, localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:            # a machine's name
        return False


def server_url(host, port):
    """The address to open in a browser on this machine."""
    if host in EVERY_INTERFACE:                  # every interface: this machine's is one
        host = "127.0.0.1"
    return "http://%s:%d/" % ("[%s]" % host if ":" in host else host, port)


def host_name(name):
    """A host's name as Host headers are compared: lower case, and an IP
    address in its usual form, without brackets ("[0:0::1]" is "::1")."""
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:            # a name, not an address
        return name


def host_and_port(text):
    """(name, port) of a Host header's value (port None where it gives none),
    or None if it is not one."""
    match = HOST_HEADER.fullmatch(text.strip())
    if not match:
        return None
    return host_name(match.group(1)), int(match.group(2)) if match.group(2) else None


def same_origin(origin, host):
    """Whether an Origin header ("http://127.0.0.1:8000") is that of a page
    served under the Host header host ("127.0.0.1:8000"): http, the same name
    and the same port (80 where none is given)."""
    ours = host_and_port(host)
    theirs = host_and_port(origin[len("http://"):]) if origin.startswith("http://") else None
    return ours is not None and theirs is not None and \
        (ours[0], ours[1] or 80) == (theirs[0], theirs[1] or 80)


# Which methods each path answers; every other path is a 404. There is no
# file serving at all: "/../../etc/passwd" is just another unknown path.
SERVE_ROUTES = {"/": ("GET", "HEAD"),
                "/api/model": ("GET", "HEAD"),
                "/api/predict": ("POST",)}
# The page may run its own inline script and style and talk to this server;
# nothing else (no other site, no plug-in, no framing by another page).
PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
               "img-src data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
               "frame-ancestors 'none'")
CONTENT_LENGTH = re.compile(r"[0-9]{1,15}")


class DigitRequestHandler(http.server.BaseHTTPRequestHandler):
    """One HTTP request: route it, answer it, and turn every problem into a
    JSON error with a 4xx status (5xx only for a bug), never a traceback."""
    timeout = SERVE_TIMEOUT       # a silent client is dropped after this many seconds

    def route(self):
        """Every method lands here (see the do_ names below)."""
        path = self.path.split("?", 1)[0]       # "/?test=1" is the page too
        methods = SERVE_ROUTES.get(path)
        refused = self.refusal()
        if refused:
            self.skip_body()
            self.send_error(403, refused)
        elif methods is None:
            self.send_error(404, "nothing here: the page is at /, the API at /api/predict "
                                 "and /api/model")
        elif self.command not in methods:
            self.close_connection = True
            self.send_json(405, {"error": "%s is not allowed on %s (use %s)"
                                          % (self.command, path, " or ".join(methods))},
                           [("Allow", ", ".join(methods))])
        elif path == "/api/predict":
            self.answer_predict()
        elif path == "/api/model":
            self.send_json(200, self.server.model)
        else:
            self.send_body(200, "text/html; charset=utf-8", PAGE.encode("utf-8"),
                           [("Content-Security-Policy", PAGE_POLICY)])

    # http.server calls do_<METHOD>; methods nobody knows (FOO) get its 501.
    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = route

    def refusal(self):
        """Why this request is not this server's to answer (a 403's message), or
        None. Its Host header must name this server (an HTTP/1.0 client may send
        none; no browser does), and a POST (or any method but GET and HEAD) that
        a web page sent, as its Origin header says, must come from this page."""
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1:
            return "more than one Host header"
        named = host_and_port(hosts[0]) if hosts else None
        if hosts and (named is None or not self.server.allows_host(named[0])):
            return ("the address asked for, %s, is not this server's: open %s, or start serve "
                    "with --allow-host NAME to allow a name" % (
                        printable(hosts[0].strip()[:80]),
                        server_url(*self.server.server_address[:2])))
        origin = self.headers.get("Origin")
        if origin is not None and self.command not in ("GET", "HEAD") and \
                not (hosts and same_origin(origin, hosts[0])):
            return ("a page of another site (%s) may not use this server; only its own page may"
                    % printable(origin.strip()[:80]))
        return None

    def version_string(self):
        """The Server header: no Python version, nothing for an attacker to look up."""
        return "mnist_pure"

    def answer_predict(self):
        body = self.read_body()
        if body is None:
            return
        if self.headers.get("Content-Type", "").strip().lower().startswith("multipart/"):
            # A form upload (curl -F file=@x.png) wraps the file in a form's parts:
            # refused, with the right command, rather than parsed (a parser is
            # more code, and more to get wrong, for what one curl option does).
            self.send_error(400, "the body must be the image file itself, not a form: "
                                 "curl --data-binary @digit.png -H 'Content-Type: image/png' "
                                 "%sapi/predict" % server_url(*self.server.server_address[:2]))
            return
        try:
            answer = self.in_turn(digit_answer, self.server.network, body)
        except MnistError as e:
            self.send_error(400, one_line(str(e)))
            return
        except Exception as e:        # a bug: the client still gets an answer, the server goes on
            self.log_message("error: %s", describe(e))
            self.send_error(500, "could not read this image (%s)" % describe(e))
            return
        if answer is None:
            self.send_json(503, {"error": "the server is busy (others' images are being read); "
                                          "try again in a moment"},
                           [("Retry-After", str(RETRY_AFTER))])
            return
        self.send_json(200, answer)

    def in_turn(self, work, *args):
        """work(*args) once one of the PREPARE_AT_ONCE turns is free; None if
        none is within PREPARE_WAIT seconds (the server is overwhelmed: better
        a quick 503 than a client that waits on and on)."""
        if not self.server.preparing.acquire(timeout=PREPARE_WAIT):
            return None
        try:
            return work(*args)
        finally:
            self.server.preparing.release()

    def read_body(self):
        """The request's body, or None once an error is answered. The declared
        length is checked before a byte of the body is read: a 50 MB upload
        is refused at once, and costs neither time nor memory."""
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths or "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.send_error(411, "send the image as the body, with a Content-Length header")
            return None
        if len(set(lengths)) > 1 or not CONTENT_LENGTH.fullmatch(lengths[0].strip()):
            self.send_error(400, "bad Content-Length header %r" % ", ".join(lengths)[:40])
            return None
        length = int(lengths[0])
        if length > SERVE_MAX_BODY:
            self.send_error(413, "the body is %s bytes; at most %d MiB is read (scale the "
                                 "image down)" % (format(length, ","), SERVE_MAX_BODY >> 20))
            return None
        if length == 0:
            self.send_error(400, "empty body: send an image file (%s)" % IMAGE_FORMATS)
            return None
        body = self.rfile.read(length)
        if len(body) < length:
            self.send_error(400, "the body ended after %d of its %d bytes" % (len(body), length))
            return None
        return body

    def skip_body(self):
        """Read and drop the body of a request that is refused, if it is within
        the limit: a socket closed with unread data in it resets the connection,
        and the client, still sending, would see the reset and not the answer."""
        length = self.headers.get("Content-Length", "").strip()
        if CONTENT_LENGTH.fullmatch(length) and int(length) <= SERVE_MAX_BODY:
            self.rfile.read(int(length))

    def send_body(self, status, content_type, body, headers=()):
        self.send_response(status)
        for name, value in [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                            ("Referrer-Policy", "no-referrer")] + list(headers):
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status, value, headers=()):
        self.send_body(status, "application/json", json.dumps(value).encode("utf-8"), headers)

    def send_error(self, code, message=None, explain=None):
        """Every error as {"error": "..."}, those http.server sends itself too
        (a malformed request line, too many headers ...). The connection is
        closed after it: the rest of a refused request is never read."""
        self.close_connection = True
        default = self.responses.get(code, ("error",))[0]
        self.send_json(code, {"error": message or default})

    def log_message(self, template, *args):
        """One line per request with --verbose; nothing otherwise."""
        if self.server.log:
            self.server.log(printable("%s %s" % (self.address_string(), template % args)))


class DigitServer(http.server.ThreadingHTTPServer):
    """The HTTP server of `serve`: one thread per request, the network shared
    by all (its forward pass only reads the weights)."""
    daemon_threads = True         # a client that hangs on never keeps the program from exiting
    request_queue_size = SERVE_BACKLOG    # socketserver's name for the listen backlog

    def __init__(self, address, network, metadata, log=None, allowed_hosts=()):
        self.network = network
        self.model = model_description(network, metadata)
        self.log = log            # where --verbose writes; None: silent
        self.preparing = threading.BoundedSemaphore(PREPARE_AT_ONCE)
        named = [name for name in [address[0]] + list(allowed_hosts) if name not in EVERY_INTERFACE]
        self.host_names = set(OWN_NAMES) | {host_name(name) for name in named}
        self.every_interface = address[0] in EVERY_INTERFACE
        if ":" in address[0]:     # an IPv6 address, such as ::1
            self.address_family = socket.AF_INET6
        super().__init__(address, DigitRequestHandler)

    def allows_host(self, name):
        """Whether a Host header's name (see host_name) names this server. On
        every interface, any IP address does: the machine has several, and a
        site can point a name at this machine, never an address."""
        if name in self.host_names:
            return True
        try:
            return self.every_interface and bool(ipaddress.ip_address(name))
        except ValueError:
            return False

    def server_bind(self):
        """Bind, without http.server's reverse DNS lookup of the host's name,
        which can take seconds where DNS is slow and is used for nothing here."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        """A request that broke off (the client left mid-answer ...): a line with
        --verbose, no traceback; the server carries on with the next one."""
        if self.log:
            self.log("%s: request broke off (%s)" % (client_address[0],
                                                     printable(describe(sys.exc_info()[1]))))


def make_digit_server(network, metadata, host="127.0.0.1", port=0, log=None, allowed_hosts=()):
    """A DigitServer listening on host:port (port 0: any free port), not yet
    serving: call its serve_forever(), and shutdown() from another thread to
    stop. allowed_hosts: names the Host header may give besides the address's."""
    try:
        return DigitServer((host, port), network, metadata, log, allowed_hosts)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise MnistError("port %d is already in use (by another server?); choose another "
                             "with --port N, or --port 0 for any free port" % port)
        if e.errno == errno.EACCES:
            raise MnistError("no permission to listen on port %d (ports below 1024 need root); "
                             "choose another with --port N" % port)
        raise MnistError("cannot listen on %s port %d (%s)" % (host, port,
                                                               e.strerror or describe(e)))


def open_in_browser(url, console):
    """--open: the page in the user's browser, or a word on how to get there."""
    try:
        opened = webbrowser.open(url)
    except webbrowser.Error:
        opened = False
    if not opened:
        console.note("could not start a browser here; open %s yourself" % url)


def serve_digits(network, metadata, console, source="", host="127.0.0.1", port=8000,
                 open_browser=False, verbose=False, allowed_hosts=()):
    """`serve`: answer the page's requests until Ctrl-C, then close the socket.
    Returns the exit code: 130, as for any Ctrl-C (see main)."""
    server = make_digit_server(network, metadata, host, port, console.note if verbose else None,
                               allowed_hosts)
    url = server_url(host, server.server_address[1])
    if not is_loopback(host):
        console.note("warning: listening on %s: anyone who can reach this machine on port %d "
                     "can use this server" % (host or "every interface", server.server_address[1]))
    accuracy = server.model["test_accuracy"]
    console.say("mnist_pure: serving the %s network%s%s at %s" % (
        server.model["architecture"], " of %s" % source if source else "",
        " (test accuracy %.2f%%)" % (100 * accuracy) if accuracy is not None else "", url))
    console.say("open it in a browser and draw a digit; Ctrl-C stops the server")
    # Ctrl-C raises KeyboardInterrupt here even in a process started with it
    # ignored (a shell's background job), as it stops training there too.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if open_browser:
            open_in_browser(url, console)
        server.serve_forever()
    except KeyboardInterrupt:
        console.note("interrupted: the server is stopped")
        return 130
    finally:
        server.server_close()
        signal.signal(signal.SIGINT, previous)
    return 0


# =============================================================================
# =============================================================================
# 21. Command line
# =============================================================================

DEFAULT_MODEL = os.path.join(HERE, "model.safetensors")
DEFAULT_CHECKPOINT = os.path.join(HERE, "checkpoint.safetensors")
DEFAULT_VALIDATION = 5000        # held-out images when --patience asks for early stopping

USAGE = """%(prog)s [options]                 train, test and report (--help: all options)
       %(prog)s predict IMAGE... [--load M]   read your own handwriting
       %(prog)s serve [--port N] [--open]     a web page to draw digits on"""

EXAMPLES = """examples:
  python mnist_pure.py                        train on 1,000 images, test on 10,000
  python mnist_pure.py --max-train 60000 --workers 2 --save
                                              all 60,000 images on 2 cores: 98%, saved
  python mnist_pure.py --load                 test the saved model.safetensors
  python mnist_pure.py --resume checkpoint.safetensors --epochs 20
  python mnist_pure.py --hidden 256,128       two hidden layers
  python mnist_pure.py --plot curves.svg --plot-weights weights.png
  python mnist_pure.py predict digit.png      read your own handwriting
  python mnist_pure.py serve --open           draw digits in the browser
  python mnist_pure.py --trace                one training step, told step by step
  python mnist_pure.py --gradcheck            backprop checked by finite differences

On a terminal, with no options, it asks a few questions first.
Environment: MAX_TRAIN and MAX_TEST set --max-train and --max-test (options win).
Exit codes: 0 done, 1 error (explained in one line), 2 bad usage, 130 interrupted."""


def builtins_input(prompt):
    return input(prompt)


class Console:
    """Where the program talks: output and error streams, and (on a terminal)
    a way to ask. Tests pass their own."""

    def __init__(self, out=None, err=None, input=None, interactive=None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.input = input or builtins_input
        self.interactive = (stream_is_terminal(sys.stdin) and stream_is_terminal(self.out)
                            if interactive is None else interactive)

    def say(self, text=""):
        try:
            self.out.write(text + "\n")
        except UnicodeEncodeError:      # a console that cannot show the digits' blocks
            encoding = getattr(self.out, "encoding", None) or "ascii"
            self.out.write((text + "\n").encode(encoding, "replace").decode(encoding))
        self.out.flush()

    def note(self, text):
        self.err.write(text + "\n")
        self.err.flush()

    def colour(self):
        return stream_is_terminal(self.out) and not os.environ.get("NO_COLOR")


def ask(console, question, default, parse=str, attempts=3):
    """Ask on the terminal; Enter takes the default; a bad answer is asked again
    at once (at most `attempts` times). End of input is an error, not a crash."""
    for _ in range(attempts):
        try:
            answer = console.input("%s [%s] " % (question, default)).strip()
        except (EOFError, KeyboardInterrupt) as e:
            console.say()                   # end the prompt's line first
            if isinstance(e, KeyboardInterrupt):
                raise
            raise MnistError("no answer to %r (end of input)" % question)
        if not answer:
            return parse(str(default))
        try:
            return parse(answer)
        except (ValueError, argparse.ArgumentTypeError) as e:
            console.note("  %s" % e)
    raise MnistError("no usable answer to %r after %d tries" % (question, attempts))


def whole_number(minimum, maximum=None):
    """An argparse type: an int in minimum..maximum, with a plain-words error.
    Digits may be grouped: 5,000 and 5_000 are 5000."""
    def parse(text):
        try:
            value = int(text.replace(",", "_")) if re.fullmatch(r"\d{1,3}(,\d{3})+", text) \
                else int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not a whole number" % text)
        if value < minimum:
            raise argparse.ArgumentTypeError("must be at least %d, not %d" % (minimum, value))
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError("must be at most %s, not %s"
                                             % (format(maximum, ","), format(value, ",")))
        return value
    return parse


def real_number(text):
    """float(text), with a plain-words error."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number" % text)


def number_in(low, high, low_open=False, high_open=False):
    """An argparse type: a float between low and high (open ends excluded)."""
    def parse(text):
        value = real_number(text)
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            raise argparse.ArgumentTypeError("must be %s %g and %s %g, not %r" % (
                "above" if low_open else "at least", low, "below" if high_open else "at most",
                high, text))
        return value
    return parse


positive_number = number_in(0.0, 1e6, low_open=True)
probability = number_in(0.0, 1.0)
decay_factor = number_in(0.0, 1.0, low_open=True)


def layer_sizes(text):
    """An argparse type: hidden layer sizes, '128' or '256,128'."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a list of sizes like 128 or 256,128" % text)
    if not all(1 <= n <= 1 << 16 for n in sizes):
        raise argparse.ArgumentTypeError("each hidden layer needs 1 to 65536 units, not %r"
                                         % text)
    return sizes


def yes_or_no(text):
    if text.lower() in ("y", "yes"):
        return True
    if text.lower() in ("n", "no"):
        return False
    raise ValueError("answer y or n")


def train_or_load(text):
    if text.lower() in ("t", "train"):
        return "train"
    if text.lower() in ("l", "load"):
        return "load"
    raise ValueError("answer train or load")


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (exit code 2)."""

    def error(self, message):
        self.exit(2, "%s: error: %s (see --help)\n" % (self.prog, message))


def build_parser():
    parser = Parser(
        prog="mnist_pure.py", allow_abbrev=False, epilog=EXAMPLES, usage=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1])
    data = parser.add_argument_group("data")
    data.add_argument("--max-train", type=whole_number(1), metavar="N",
                      help="training images to use (default %s, all: 60,000)"
                           % format(DEFAULT_MAX_TRAIN, ","))
    data.add_argument("--max-test", type=whole_number(1), metavar="N",
                      help="test images to score on (default %s, all of them)"
                           % format(DEFAULT_MAX_TEST, ","))
    data.add_argument("--data-dir", metavar="DIR", help="folder with the four MNIST .gz files "
                      "(default: data/ beside this script)")
    recipe = parser.add_argument_group("the network and its training recipe")
    recipe.add_argument("--hidden", type=layer_sizes, metavar="N[,N...]",
                        help="hidden layer sizes: 128 (default), 256,128 for two layers ...")
    recipe.add_argument("--epochs", type=whole_number(1), metavar="N",
                        help="passes over the training images (default %d when distorting "
                             "up to %s images, else %d)" % (SMALL_SET_EPOCHS,
                                                           format(SMALL_SET, ","),
                                                           DEFAULT_EPOCHS))
    recipe.add_argument("--lr", type=positive_number, metavar="RATE",
                        help="starting learning rate (default: 0.03 up to ~14,000 images, "
                             "less beyond; at most %g with distortions; x sqrt(B) for "
                             "mini-batches, x (1 - M) with momentum; 0.001 with Adam)"
                             % DISTORTED_RATE)
    recipe.add_argument("--lr-decay", type=decay_factor, metavar="F",
                        help="multiply the rate by F ... (default %g)" % DEFAULT_LR_DECAY)
    recipe.add_argument("--decay-every", type=whole_number(1), metavar="N",
                        help="... every N epochs (default %d)" % DEFAULT_DECAY_EVERY)
    recipe.add_argument("--mastery", type=probability, metavar="P",
                        help="skip the update of an image answered right with p >= P "
                             "(default %g)" % DEFAULT_MASTERY)
    recipe.add_argument("--no-mastery", action="store_true", help="learn from every image")
    recipe.add_argument("--seed", type=whole_number(0), metavar="N",
                        help="random seed: the same seed repeats a run exactly (default %d)"
                             % DEFAULT_SEED)
    recipe.add_argument("--validation", type=whole_number(0), metavar="N",
                        help="hold out the last N training images to watch for early stopping")
    recipe.add_argument("--patience", type=whole_number(1), metavar="N",
                        help="stop when validation accuracy has not improved for N epochs, "
                             "and keep the best epoch's weights")
    more = parser.add_argument_group("more ways to learn (Part II of the file)")
    more.add_argument("--augment", nargs="?", const=SMALL_SET_DISTORTION,
                      choices=tuple(DISTORTIONS),
                      help="distort each training image at random at every visit: %s "
                           "(default: %s, on for up to %s images)"
                           % (", ".join(DISTORTIONS), SMALL_SET_DISTORTION,
                              format(SMALL_SET, ",")))
    more.add_argument("--no-augment", action="store_true",
                      help="no distortions, whatever the number of images")
    more.add_argument("--batch-size", type=whole_number(1), metavar="B",
                      help="mini-batches: one step per B images, the rate x sqrt(B) (default "
                           "1; %d with momentum or weight decay, %d with Adam, fewer for a "
                           "small set: at least %d steps an epoch)"
                           % (SGD_BATCH, ADAM_BATCH, EPOCH_STEPS))
    more.add_argument("--momentum", type=number_in(0.0, 0.999), metavar="M",
                      help="heavy-ball momentum, e.g. 0.9, the rate x (1 - M) (default 0: none)")
    more.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    more.add_argument("--optimizer", choices=tuple(OPTIMIZERS),
                      help="how gradients become steps: %s (default sgd)" % ", ".join(OPTIMIZERS))
    more.add_argument("--weight-decay", type=number_in(0.0, 1.0), metavar="L",
                      help="shrink every weight by (1 - rate * L) at every step, e.g. 1e-4 "
                           "(default 0)")
    more.add_argument("--dropout", type=number_in(0.0, 0.95, high_open=False), metavar="P",
                      help="drop each hidden unit with probability P while training")
    speed = parser.add_argument_group("speed")
    speed.add_argument("--engine", choices=("auto", "lists", "packed"),
                       help="lists: plain Python (the reference; fastest on PyPy); packed: "
                            "integer lanes (fastest on CPython); auto (default): the fastest "
                            "here that supports the options")
    speed.add_argument("--workers", type=whole_number(1, 64), metavar="N",
                       help="processes to train and test in (default 1)")
    speed.add_argument("--no-rest", action="store_true",
                       help="look at every image every epoch (default: an image answered "
                            "right with p >= %g rests for %d epoch)" % (SURE, REST_EPOCHS))
    files = parser.add_argument_group("models")
    files.add_argument("--save", nargs="?", const=DEFAULT_MODEL, metavar="PATH",
                       help="save the trained model (default path: model.safetensors)")
    files.add_argument("--load", nargs="?", const=DEFAULT_MODEL, metavar="PATH",
                       help="test a saved model instead of training one")
    files.add_argument("--resume", metavar="PATH",
                       help="continue training a saved model or checkpoint")
    files.add_argument("--checkpoint", metavar="PATH", help="save a checkpoint after every epoch "
                       "(Ctrl-C saves one too, to PATH or else to checkpoint.safetensors "
                       "beside the script)")
    output = parser.add_argument_group("output")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    output.add_argument("--json", action="store_true",
                        help="end with one line of JSON holding the run's figures")
    output.add_argument("--show", type=whole_number(0), metavar="N",
                        help="draw N test digits with their guesses (default 25, 0: none)")
    output.add_argument("--show-mistakes", type=whole_number(0), metavar="N",
                        help="draw the N most confidently wrong test digits")
    output.add_argument("--test-each-epoch", action="store_true",
                        help="score the test set after every epoch (for the table and plots)")
    output.add_argument("--plot", metavar="PATH", help="training curves as .svg or .png "
                        "(scores the test set after every epoch, which takes time)")
    output.add_argument("--plot-digits", metavar="PATH", help="test digits and guesses as .png")
    output.add_argument("--plot-weights", metavar="PATH",
                        help="the first layer's weights as 28x28 tiles, .png")
    look = parser.add_argument_group("looking inside")
    look.add_argument("--trace", action="store_true",
                      help="train on one image and explain each step (of --load's model if given)")
    look.add_argument("--gradcheck", action="store_true",
                      help="check every gradient against finite differences")
    return parser


# option name -> Settings field, for the options that are None unless given
OPTION_FIELDS = (("epochs", "epochs"), ("lr", "learning_rate"), ("lr_decay", "lr_decay"),
                 ("decay_every", "decay_every"), ("mastery", "mastery"), ("seed", "seed"),
                 ("hidden", "hidden"), ("engine", "engine"), ("data_dir", "data_dir"),
                 ("validation", "validation"), ("patience", "patience"), ("save", "save"),
                 ("load", "load"), ("resume", "resume"), ("checkpoint", "checkpoint"),
                 ("show", "show"), ("show_mistakes", "show_mistakes"), ("plot", "plot"),
                 ("plot_digits", "plot_digits"), ("plot_weights", "plot_weights"),
                 ("augment", "augment"), ("batch_size", "batch_size"), ("momentum", "momentum"),
                 ("optimizer", "optimizer"), ("weight_decay", "weight_decay"),
                 ("dropout", "dropout"), ("workers", "workers"), ("max_train", "max_train"),
                 ("max_test", "max_test"))
FLAG_FIELDS = ("nesterov", "json", "quiet", "test_each_epoch")
# options that only mean something while training: refused with --load
TRAINING_OPTIONS = ("max_train", "epochs", "lr", "lr_decay", "decay_every", "mastery",
                    "no_mastery", "seed", "hidden", "validation", "patience", "augment",
                    "no_augment",
                    "batch_size", "momentum", "nesterov", "optimizer", "weight_decay",
                    "dropout", "save", "checkpoint", "test_each_epoch", "no_rest")


def given_fields(args):
    """The Settings fields set by an option on the command line."""
    fields = {field for option, field in OPTION_FIELDS if getattr(args, option) is not None}
    fields |= {flag for flag in FLAG_FIELDS if getattr(args, flag)}
    if args.no_mastery:
        fields.add("mastery")
    if args.no_augment:
        fields.add("augment")
    if args.no_rest:
        fields.add("rest_sure")
    return fields


def option_name(field):
    return "--" + field.replace("_", "-")


# Commands the program suggests (to go on after Ctrl-C, to keep the model ...)
# are written out whole, to be pasted as they are. COMMAND_FIELDS: the Settings
# fields that options set (but where to start), in Settings' order.
COMMAND_FIELDS = tuple(
    field.name for field in dataclasses.fields(Settings)
    if field.name in {name for _, name in OPTION_FIELDS} | set(FLAG_FIELDS) | {"rest_sure"}
    and field.name not in ("load", "resume"))
PATH_FIELDS = ("data_dir", "save", "checkpoint", "plot", "plot_digits", "plot_weights")


def shown_path(path):
    """path as one types it here: relative to the current folder inside it, else whole."""
    path = os.path.abspath(path)
    try:
        relative = os.path.relpath(path)
    except ValueError:                  # on another drive (Windows)
        return path
    return path if relative.startswith(os.pardir) else relative


def script_words():
    """How to start this file again from here: the interpreter running it, and the file."""
    return [os.path.basename(sys.executable or "python"), shown_path(__file__)]


def command_text(words):
    """Words as one line to paste into a shell, quoted where a shell needs it."""
    return " ".join(shlex.quote(word) for word in words)


def option_words(field, value):
    """Settings.field = value as the command line says it: ['--lr', '0.1'],
    ['--no-augment'], ['--hidden', '256,128'], ['--json']; [] for a value that
    no option sets (a flag left off)."""
    if field in FLAG_FIELDS:
        return [option_name(field)] if value else []
    if field == "rest_sure":
        return [] if value else ["--no-rest"]
    if field in ("augment", "mastery") and not value:
        return [option_name("no_" + field)]
    option = next(option for option, name in OPTION_FIELDS if name == field)
    if isinstance(value, (tuple, list)):
        text = ",".join(map(str, value))
    elif field in PATH_FIELDS:
        text = shown_path(value)
    elif isinstance(value, float):
        text = repr(value)              # the shortest text that reads back exactly
    else:
        text = str(value)
    return [option_name(option), text]


def run_words(settings, fields):
    """The options that give each of fields its value in settings, where that
    differs from what a run without the option would take (the value Settings
    starts with, or the one choose_defaults makes for these images and options)."""
    words = []
    for field in fields:
        fresh = dataclasses.replace(settings, **{field: getattr(Settings(), field)})
        fresh.choose_defaults(settings.max_train)
        if getattr(settings, field) != getattr(fresh, field):
            words += option_words(field, getattr(settings, field))
    return words


def check_usage(parser, args, settings):
    """Combinations of options that make no sense: usage errors (exit 2)."""
    if args.load is not None and args.resume is not None:
        parser.error("--load tests a saved model and --resume trains one further: choose one")
    if args.load is not None and not (args.trace or args.gradcheck):
        for option in TRAINING_OPTIONS:
            if getattr(args, option) not in (None, False):
                parser.error("--load only tests a model, and %s is for training; to train it "
                             "further, use --resume %s" % (option_name(option), args.load))
    if settings.plot and not settings.plot.lower().endswith((".svg", ".png")):
        parser.error("--plot: the file name must end in .svg or .png, not %r" % settings.plot)
    for option, path in (("--plot-digits", settings.plot_digits),
                         ("--plot-weights", settings.plot_weights)):
        if path and not path.lower().endswith(".png"):
            parser.error("%s: the file name must end in .png, not %r" % (option, path))
    uses = OPTIMIZERS[settings.optimizer].uses
    for field in ("momentum", "nesterov", "weight_decay"):
        if getattr(settings, field) and field not in uses:
            parser.error("%s does not apply to --optimizer %s" % (option_name(field),
                                                                   settings.optimizer))
    if args.nesterov and not settings.momentum:
        parser.error("--nesterov needs --momentum M")
    if settings.workers > 1 and settings.options().use_optimizer():
        parser.error("--workers shares out plain and mini-batch SGD; momentum, Adam and weight "
                     "decay keep a state for every weight: use them with --workers 1")


def settings_from_args(parser, args, environ):
    """Settings from parsed options, then environment, then defaults."""
    settings = Settings()
    for option, variable in (("max_train", "MAX_TRAIN"), ("max_test", "MAX_TEST")):
        if getattr(args, option) is None and environ.get(variable, "").strip() and not args.load:
            try:
                setattr(settings, option, whole_number(1)(environ[variable].strip()))
            except argparse.ArgumentTypeError as e:
                parser.error("environment variable %s: %s" % (variable, e))
    for option, field in OPTION_FIELDS:
        if getattr(args, option) is not None:
            setattr(settings, field, getattr(args, option))
    for flag in FLAG_FIELDS:
        setattr(settings, flag, getattr(args, flag))
    if args.no_mastery:
        settings.mastery = 0.0
    if args.no_augment:
        settings.augment = ""
    if args.no_rest:
        settings.rest_sure = False
    if settings.patience and not settings.validation:
        settings.validation = DEFAULT_VALIDATION
    check_usage(parser, args, settings)
    return settings


def ask_settings(settings, console):
    """The questions asked on a terminal when no options were given."""
    console.say("mnist_pure: a neural network learns to read handwritten digits (Enter = default)")
    if os.path.exists(DEFAULT_MODEL):
        if ask(console, "A saved model is in %s. Train a new one or load it? (train/load)"
               % os.path.basename(DEFAULT_MODEL), "train", train_or_load) == "load":
            settings.load = DEFAULT_MODEL
            return settings
    settings.max_train = ask(console, "How many training images? (1-60,000)",
                             format(settings.max_train, ","), whole_number(1))
    # More images than there are: load_data takes them all, with a note, as for
    # --max-train; so here only the epochs are chosen, the rest for the images there are.
    chosen = dataclasses.replace(settings)
    chosen.choose_defaults(settings.max_train)
    settings.epochs = ask(console, "How many epochs? (1-1,000)", chosen.epochs,
                          whole_number(1, 1000))
    exists = os.path.exists(DEFAULT_MODEL)
    if os.access(HERE, os.W_OK) and ask(
            console, "Save the model as %s%s? (y/n)" % (
                os.path.basename(DEFAULT_MODEL), ", replacing the saved one" if exists else ""),
            "n" if exists else "y", yes_or_no):
        settings.save = DEFAULT_MODEL
    return settings


def load_data(settings, console):
    """(training set, held-out set or None, test set), cut to the settings' sizes."""
    train, test_set = load_checked_mnist(settings.data_dir, console.note)
    held_out = None
    available = len(train)
    if settings.validation:
        if settings.validation >= len(train):
            raise MnistError("--validation %d leaves no training images (there are %d)"
                             % (settings.validation, len(train)))
        held_out = train[len(train) - settings.validation:]
        available -= settings.validation
    if settings.max_train > available:
        console.note("note: asked for %s training images; using the %s there are%s"
                     % (format(settings.max_train, ","), format(available, ","),
                        " besides the held-out ones" if held_out else ""))
        settings.max_train = available
    if settings.max_test > len(test_set):
        console.note("note: asked for %s test images; using the %s there are"
                     % (format(settings.max_test, ","), format(len(test_set), ",")))
        settings.max_test = len(test_set)
    return train[:settings.max_train], held_out, test_set[:settings.max_test]


def starting_point(settings, given, console):
    """(network, TrainingState): fresh, or read from --resume. Resuming takes
    the saved recipe, except what the command line sets again; a run with no
    epochs left is refused, unless --epochs says that is all (then it is tested)."""
    if not settings.resume:
        return NeuralNetwork(settings.sizes(), settings.seed), TrainingState()
    network, _, recipe, state = load_run(settings.resume)
    if recipe is None:
        console.note("note: %s holds no training state; training its weights from epoch 1"
                     % settings.resume)
        settings.hidden = tuple(network.sizes[1:-1])
        return network, TrainingState()
    for field, value in recipe.items():
        if field not in given:
            setattr(settings, field, value)
    if network.sizes != settings.sizes():
        raise MnistError("%s is a %s network, not %s" % (
            settings.resume, architecture(network.sizes), architecture(settings.sizes())))
    finished = state.epoch >= settings.epochs or state.stopped_early
    if finished and "epochs" in given and state.epoch == settings.epochs:
        console.note("note: %s has trained the %d epoch%s asked for; testing it"
                     % (settings.resume, state.epoch, "s" if state.epoch != 1 else ""))
    elif finished:          # nothing to train: say how to train more, not test it again
        test = command_text(script_words() + ["--load", shown_path(settings.resume)])
        if state.stopped_early:
            raise MnistError("%s: training stopped early, after epoch %d; to test it: %s"
                             % (settings.resume, state.epoch, test))
        done = ("%d epochs, more than --epochs %d" if "epochs" in given else
                "%d of %d epochs") % (state.epoch, settings.epochs)
        raise MnistError("%s: already trained %s; add --epochs N (above %d) to train it "
                         "further, or test it: %s" % (settings.resume, done, state.epoch, test))
    for field, value in recipe.items():              # --epochs N is how one goes on: no note
        if field in given and field != "epochs" and getattr(settings, field) != value:
            now = " ".join(option_words(field, getattr(settings, field)))
            saved = " ".join(option_words(field, value))
            if saved:
                console.note("note: resuming with %s instead of the saved %s" % (now, saved))
            else:
                console.note("note: resuming with %s, which the saved run did not have" % now)
    for field in ("momentum", "nesterov", "weight_decay"):
        if getattr(settings, field) and field not in OPTIMIZERS[settings.optimizer].uses:
            console.note("note: the saved run's %s does not apply to --optimizer %s; left out"
                         % (" ".join(option_words(field, getattr(settings, field))),
                            settings.optimizer))
            setattr(settings, field, getattr(Settings(), field))
    changed = any(field in given and getattr(settings, field) != recipe.get(field)
                  for field in ("optimizer", "momentum", "nesterov", "weight_decay"))
    saved_state = state.optimizer is not None
    if changed:
        state.optimizer = None                    # another optimizer: its state starts afresh
    if "learning_rate" not in given and any(
            field in given and getattr(settings, field) != recipe.get(field)
            for field in ("optimizer", "momentum", "batch_size")):
        settings.learning_rate = None             # the saved rate was for other steps
        console.note("note: the learning rate is chosen afresh for these settings (the "
                     "saved %s was for the saved ones)" % " ".join(option_words(
                         "learning_rate", recipe["learning_rate"])))
    if not saved_state and not changed and settings.options().use_optimizer():
        console.note("note: the optimizer's state starts afresh (%s is a model file, which "
                     "holds none; a checkpoint would)" % settings.resume)
    return network, state


def python_version():
    return "%s %s" % ("PyPy" if ON_PYPY else "CPython", sys.version.split()[0])


def describe_options(settings):
    """The Part II options in use, in words ('' for none)."""
    words = []
    if settings.augment:
        words.append("%s distortions" % settings.augment)
    if settings.batch_size > 1:
        words.append("mini-batches of %s" % format(settings.batch_size, ","))
    if settings.optimizer == "adam":
        words.append("Adam")
    if settings.momentum:
        words.append("%smomentum %g" % ("Nesterov " if settings.nesterov else "",
                                         settings.momentum))
    if settings.weight_decay:
        words.append("weight decay %g" % settings.weight_decay)
    if settings.dropout:
        words.append("dropout %g" % settings.dropout)
    return ", ".join(words)


def describe_run(settings, n_train, n_test, state):
    decay = ("x%g every %d epochs" % (settings.lr_decay, settings.decay_every)
             if settings.lr_decay != 1 else "constant")
    mastery = ("mastery at p >= %g" % settings.mastery) if settings.mastery else "no mastery"
    held_out = " (+%s held out)" % format(settings.validation, ",") if settings.validation else ""
    options = describe_options(settings)
    workers = " x %d workers" % settings.workers if settings.workers > 1 else ""
    lines = ["mnist_pure: a %s network, %s training images%s, %s test images" % (
                 architecture(settings.sizes()), format(n_train, ","), held_out,
                 format(n_test, ",")),
             "%d epoch%s, learning rate %g (%s), %s%s, seed %d, %s engine%s on %s" % (
                 settings.epochs, "s" if settings.epochs != 1 else "", settings.learning_rate,
                 decay, mastery, ", " + options if options else "", settings.seed,
                 settings.engine_name(), workers, python_version())]
    if state.position:
        lines.append("resuming in epoch %d at image %s" % (state.epoch + 1,
                                                          format(state.position, ",")))
    elif state.epoch and state.epoch < settings.epochs:
        lines.append("resuming after epoch %d" % state.epoch)
    if settings.plot and not settings.test_each_epoch:
        lines.append("note: --plot scores the test set after every epoch, for its curves "
                     "(each pass takes a few seconds)")
    return lines


class InterruptToStop:
    """While active, Ctrl-C asks training to stop after the current batch
    (a second Ctrl-C stops at once, saving nothing)."""

    def __init__(self, stop):
        self.stop = stop

    def handle(self, signum, frame):
        if self.stop.requested:
            raise KeyboardInterrupt
        self.stop.requested = True

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self.handle)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


class InterruptIgnored:
    """While active, Ctrl-C is ignored: a checkpoint being written gets finished."""

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


def resume_command(settings, path):
    """The command that finishes this run from the checkpoint at path: its epochs,
    and what the user asked for that the checkpoint does not hold (the data, the
    workers, the model to save, the reports and pictures)."""
    return command_text(script_words() + ["--resume", shown_path(path), "--epochs",
                                          str(settings.epochs)] +
                        run_words(settings, [f for f in COMMAND_FIELDS if f not in RECIPE_CHECKS]))


def save_interrupted(settings, engine, state, n_train, console):
    """Ctrl-C: save where training is, say how to go on, exit 130."""
    path = settings.checkpoint or DEFAULT_CHECKPOINT
    with InterruptIgnored():
        save_run(path, engine, settings, state)
    where = ("in epoch %d at image %s of %s"
             % (state.epoch + 1, format(state.position, ","), format(n_train, ","))
             if state.epoch < settings.epochs else "after training, while testing")
    console.note("interrupted %s; saved a checkpoint to %s. To go on: %s"
                 % (where, path, resume_command(settings, path)))
    return 130


def testing_bar(settings, console):
    return None if settings.quiet else ProgressBar(console.err, "testing")


def test_with_bar(settings, console, engine, test_set, workers):
    """evaluate on the test set below a progress bar, wiped when done; after
    Ctrl-C its line is ended instead, so that the message starts on its own."""
    bar = testing_bar(settings, console)
    try:
        evaluation = evaluate(engine, test_set, bar, workers)
    except KeyboardInterrupt:
        if bar:
            bar.end_line()
        raise
    if bar:
        bar.finish()
    return evaluation


def accuracy_line(evaluation):
    return "test accuracy: %.2f%% (%d/%d)" % (
        100 * evaluation.accuracy, evaluation.correct, evaluation.total)


def report_pictures(settings, console, evaluation, test_set, engine, history):
    """The confusion matrix, digits in the terminal, and the picture files."""
    console.say()
    console.say(format_confusion(evaluation.confusion()))

    def items(indices):
        return [(test_set.image(k), evaluation.labels[k], evaluation.guesses[k],
                 evaluation.confidences[k]) for k in indices]
    if settings.show:
        console.say()
        console.say("the first %d test digits and the network's guesses:"
                    % min(settings.show, len(test_set)))
        console.say(format_digit_grid(items(range(min(settings.show, len(test_set)))),
                                      colour=console.colour()))
    if settings.show_mistakes:
        wrong = most_confident_mistakes(evaluation, settings.show_mistakes)
        console.say()
        console.say("the %d most confident mistakes (x guess (truth)):" % len(wrong))
        if wrong:
            console.say(format_digit_grid(items(wrong), colour=console.colour()))
    pictures = []
    if settings.plot and history:
        curves = svg_curves(history).encode("utf-8") if settings.plot.lower().endswith(".svg") \
            else png_curves(history)
        pictures.append((settings.plot, curves, "training curves"))
    if settings.plot_digits:
        pictures.append((settings.plot_digits,
                         png_digit_grid(items(range(min(settings.show or 50, len(test_set))))),
                         "test digits with guesses"))
    if settings.plot_weights:
        pictures.append((settings.plot_weights, png_weights(as_network(engine)),
                         "first-layer weights"))
    for path, content, what in pictures:
        write_atomically(path, content)
        console.say("wrote %s to %s" % (what, path))


def run_summary(settings, evaluation, state, train_seconds, test_seconds):
    """The run's figures as a dict, for --json."""
    return {"test_accuracy": evaluation.accuracy, "correct": evaluation.correct,
            "total": evaluation.total, "epochs": state.epoch,
            "best_epoch": state.best_epoch if state.best_network is not None else None,
            "sizes": settings.sizes(), "train_images": settings.max_train,
            "learning_rate": settings.learning_rate, "seed": settings.seed,
            "mastery": settings.mastery, "augment": settings.augment or None,
            "batch_size": settings.batch_size, "optimizer": settings.optimizer,
            "momentum": settings.momentum, "weight_decay": settings.weight_decay,
            "dropout": settings.dropout, "workers": settings.workers,
            "engine": settings.engine_name(), "python": python_version(),
            "train_seconds": round(train_seconds, 3), "test_seconds": round(test_seconds, 3),
            "history": [{"epoch": s.epoch, "learning_rate": s.learning_rate,
                         "loss": round(s.loss, 6), "train_accuracy": s.train_accuracy,
                         "test_accuracy": s.test_accuracy if s.test_accuracy >= 0 else None,
                         "validation_accuracy": (s.validation_accuracy
                                                 if s.validation_accuracy >= 0 else None),
                         "updated": s.updated, "skipped": s.skipped,
                         "seconds": round(s.seconds, 3)} for s in state.history]}


def training_summary(history, seconds):
    seen = sum(s.seen for s in history)
    return "trained in %.1f s: %s images seen (%s/s), %s updates, %s mastered images skipped" % (
        seconds, format(seen, ","), format(int(seen / max(seconds, 1e-9)), ","),
        format(sum(s.updated for s in history), ","), format(sum(s.skipped for s in history), ","))


EXAMPLE_DIGIT = os.path.join(HERE, "docs", "examples", "seven.png")   # the README's


def next_steps(settings):
    """What to try next, once a run is over: commands to paste as they are."""
    model = settings.save or settings.load
    load = [] if model in ("", DEFAULT_MODEL) else ["--load", shown_path(model)]
    digit = shown_path(EXAMPLE_DIGIT) if os.path.exists(EXAMPLE_DIGIT) else "your_digit.png"
    steps = [(["predict", digit] + load, "read a handwritten digit: %s, or your own"
              % ("this 7" if digit != "your_digit.png" else "a picture of one")),
             (["serve"] + load + ["--open"], "draw digits in the browser")]
    titles = ["next:", "     "]
    if not model:                   # first, the same run again, keeping the model
        fields = list(COMMAND_FIELDS)
        again = []
        if settings.resume:         # from the same file, to the same epoch
            fields.remove("epochs")
            again = ["--resume", shown_path(settings.resume), "--epochs", str(settings.epochs)]
        steps.insert(0, (again + run_words(settings, fields) + ["--save"],
                         "this run again, keeping the model"))
        titles = ["next:", "then:", "     "]
    return ["%s %s   (%s)" % (title, command_text(script_words() + words), why)
            for title, (words, why) in zip(titles, steps)]


NO_BETTER = 2.0 / N_DIGITS     # under 20% right: no better than guessing, near enough
# (checked after an epoch of 2,000 images or more, or from the second epoch on: a
# fresh network's first few hundred answers are guesses, however well it learns)


STRONG_DECAY = 0.1           # decay x rate x 125 steps: a tenth of every weight an epoch
WEIGHT_DECAY_TO_TRY = 1e-4   # the README's measured weight decay


def rate_advice(settings):
    """What to try when a run did not learn: 'the learning rate 5 is too large:
    try --lr 0.02'. The rate the recipe would choose, or if it is that already,
    a third of it (a rate too large is by far the usual cause)."""
    rate, default = settings.learning_rate, settings.default_rate
    if settings.weight_decay * rate * EPOCH_STEPS > STRONG_DECAY:
        return ("--weight-decay %g shrinks the weights faster than they learn: try "
                "--weight-decay %g" % (settings.weight_decay, WEIGHT_DECAY_TO_TRY))
    if rate < default:
        return "the learning rate %g may be too small: try --lr %.3g" % (rate, default)
    return "the learning rate %g is too large: try --lr %.3g" % (
        rate, default if rate > default else rate / 3)


def warn_or_stop(settings, console, problem):
    """A run that cannot learn says so. Above the recipe's rate (the usual
    cause: the weights blew up, or every hidden unit fell silent, and the
    network will not learn again) the run stops; otherwise it is a warning,
    and training goes on."""
    if settings.learning_rate > settings.default_rate:
        raise MnistError("%s; %s" % (problem, rate_advice(settings)))
    console.note("warning: %s; %s" % (problem, rate_advice(settings)))


def report_results(settings, console, engine, test_set, state, workers=None):
    """Test the trained network and print (and save, and draw) the results."""
    started = time.perf_counter()
    evaluation = test_with_bar(settings, console, engine, test_set, workers)
    test_seconds = time.perf_counter() - started
    history = state.history
    train_seconds = sum(s.seconds for s in history)
    if history:
        console.say()
        console.say(training_summary(history, train_seconds))
    if state.best_network is not None:
        console.say("early stopping: kept epoch %d (validation accuracy %.2f%%)%s"
                    % (state.best_epoch, 100 * state.best_accuracy,
                       ", stopped early" if state.stopped_early else ""))
    console.say("tested in %.1f s (%s images/s)" % (
        test_seconds, format(int(len(test_set) / max(test_seconds, 1e-9)), ",")))
    report_pictures(settings, console, evaluation, test_set, engine, history)
    if settings.save:
        save_run(settings.save, engine, settings, state, evaluation.accuracy, checkpoint=False)
        console.say("saved the model to %s" % settings.save)
    console.say()
    console.say(accuracy_line(evaluation))
    if settings.json:
        console.say(json.dumps(run_summary(settings, evaluation, state, train_seconds,
                                           test_seconds)))
    elif evaluation.accuracy < NO_BETTER and evaluation.total >= 100 and history:
        console.note("warning: this network reads no better than guessing; %s"
                     % rate_advice(settings))
    else:
        for line in next_steps(settings):
            console.note(line)
    return 0


def start_workers(settings, train, held_out, test_set):
    """The helper processes of --workers N (None for one process)."""
    if settings.workers < 2:
        return None
    datasets = {"train": train, "test": test_set}
    if held_out is not None:
        datasets["held_out"] = held_out
    return Workers(settings.workers, datasets, settings.sizes(), settings.engine_name(),
                   settings.recipe(), settings.options(), settings.start_method)


def train_and_report(settings, console, engine, datasets, state, workers):
    """run_training's work once the engine and the data are ready."""
    train, held_out, test_set = datasets
    validation = held_out is not None
    bar = None if settings.quiet else ProgressBar(console.err, "epoch %d" % (state.epoch + 1))
    test_each_epoch = settings.test_each_epoch or bool(settings.plot)
    warned = []                                         # the epoch that "learned nothing"

    def on_epoch(stats, engine):
        if bar:
            bar.finish()
        if test_each_epoch:
            stats.test_accuracy = test_with_bar(settings, console, engine, test_set,
                                                workers).accuracy
        console.say(format_epoch_row(stats, validation))
        steps = stats.epoch * -(-stats.seen // settings.batch_size)     # steps so far, about
        if (stats.train_accuracy < NO_BETTER and (stats.epoch > 1 or stats.seen >= 2000)
                and steps >= EPOCH_STEPS and not warned):
            warned.append(stats.epoch)                  # one warning is enough
            warn_or_stop(settings, console, "epoch %d learned nothing: %.1f%% of its images "
                         "right, as good as guessing" % (stats.epoch, 100 * stats.train_accuracy))
        if settings.checkpoint:
            save_run(settings.checkpoint, engine, settings, state)
        if bar:
            bar.restart("epoch %d" % (stats.epoch + 1))

    stop = StopFlag()
    try:
        with InterruptToStop(stop):
            engine = fit(engine, train, held_out, settings, state, stop, bar, on_epoch, workers)
    except KeyboardInterrupt:           # a second Ctrl-C: main says "interrupted", below
        if bar:
            bar.end_line()
        raise
    except Diverged as e:
        if bar:
            bar.end_line()
        raise MnistError("%s; %s" % (e, rate_advice(settings)))
    if bar:
        bar.finish()
    if stop.requested:
        return save_interrupted(settings, engine, state, len(train), console)
    try:
        return report_results(settings, console, engine, test_set, state, workers)
    except KeyboardInterrupt:
        return save_interrupted(settings, engine, state, len(train), console)


def run_training(settings, given, console):
    """Train (or resume), test, report. Returns the exit code."""
    for path in (settings.save, settings.checkpoint, settings.plot, settings.plot_digits,
                 settings.plot_weights):
        if path:
            check_destination(path)
    network, state = starting_point(settings, given, console)
    train, held_out, test_set = load_data(settings, console)
    if state.position > len(train):
        raise MnistError("%s stopped at image %d of an epoch, but there are %d training images"
                         % (settings.resume, state.position, len(train)))
    settings.choose_defaults(len(train))
    steps = len(train) // settings.batch_size
    if settings.batch_size > len(train):
        console.note("note: a batch of %s is more than the %s training images: one step an "
                     "epoch" % (format(settings.batch_size, ","), format(len(train), ",")))
    elif steps < EPOCH_STEPS and settings.batch_size > optimizer_batch(len(train), ADAM_BATCH):
        fewer = optimizer_batch(len(train), settings.batch_size)
        console.note("note: batches of %d leave %d steps an epoch; on a small set, fewer than "
                     "%d learned less (batches of %d here would give %d)" % (
                         settings.batch_size, steps, EPOCH_STEPS,
                         fewer, len(train) // fewer))
    engine = make_engine(network, settings.engine_name())
    for line in describe_run(settings, len(train), len(test_set), state):
        console.say(line)
    console.say()
    validation = held_out is not None
    console.say(epoch_header(validation))
    for stats in state.history:
        console.say(format_epoch_row(stats, validation))
    workers = start_workers(settings, train, held_out, test_set)
    try:
        return train_and_report(settings, console, engine, (train, held_out, test_set), state,
                                workers)
    except WorkerLost as e:
        path = settings.checkpoint or DEFAULT_CHECKPOINT
        with InterruptIgnored():
            save_run(path, engine, settings, state)
        raise MnistError("%s; saved the last consistent weights to %s. To go on: %s"
                         % (e, path, resume_command(settings, path)))
    finally:
        if workers is not None:
            workers.close()


def run_evaluation(settings, console):
    """--load: test a saved model, reporting the recipe it was trained with."""
    network, metadata, recipe, state = load_run(settings.load)
    for field, value in (recipe or {}).items():
        setattr(settings, field, value)             # for the report: what really trained it
    settings.hidden = tuple(network.sizes[1:-1])
    state = state or TrainingState()
    settings.max_train = (recipe or {}).get("max_train", 0)
    _, _, test_set = load_data(Settings(max_train=1, max_test=settings.max_test,
                                        data_dir=settings.data_dir), console)
    console.say("mnist_pure: testing %s (a %s network%s) on %s test images"
                % (settings.load, architecture(network.sizes),
                   ", trained for %d epochs on %s images" % (state.epoch, format(
                       settings.max_train, ",")) if recipe else "", format(len(test_set), ",")))
    settings.save = ""
    report_state = TrainingState(epoch=state.epoch,
                                 history=state.history if settings.plot else [])
    return report_results(settings, console, make_engine(network, settings.engine_name()),
                          test_set, report_state)


def run_trace(settings, console):
    """--trace: one training step on the first test image, told step by step
    (on --load's model, or a new one)."""
    _, _, test_set = load_data(settings, console)
    if settings.load:
        network = load_model(settings.load)
    else:
        network = NeuralNetwork(settings.sizes(), settings.seed)
    image, label = test_set[0]
    settings.choose_defaults(settings.max_train)
    lines, _, _ = trace_step(network, image, label, settings.learning_rate)
    for line in lines:
        console.say(line)
    return 0


GRADCHECK_TOLERANCE = 1e-6


def run_gradcheck(settings, console):
    """--gradcheck: analytic gradients against finite differences."""
    _, _, test_set = load_data(settings, console)
    rng = random.Random(settings.seed)
    if settings.load:
        network = load_model(settings.load)
    else:
        network = NeuralNetwork(settings.sizes(), settings.seed)
    worst = {}
    samples = [rng.randrange(len(test_set)) for _ in range(3)]
    console.say("gradient check of a %s network: backward() against centred finite "
                "differences on test images %s" % (architecture(network.sizes),
                                                   ", ".join(map(str, samples))))
    for k in samples:
        image, label = test_set[k]
        for name, (error, count) in gradient_check(network, image, label, rng).items():
            old = worst.get(name, (0.0, 0))
            worst[name] = (max(old[0], error), old[1] + count)
    for name, (error, count) in worst.items():
        console.say("  %-3s  %5d entries checked   largest relative error %.1e  %s"
                    % (name, count, error, "ok" if error < GRADCHECK_TOLERANCE else "TOO LARGE"))
    ok = all(error < GRADCHECK_TOLERANCE for error, _ in worst.values())
    console.say("all gradients agree (< %g)" % GRADCHECK_TOLERANCE if ok else
                "some gradients disagree: backward() has a bug")
    return 0 if ok else 1


def build_predict_parser():
    parser = Parser(
        prog="mnist_pure.py predict", allow_abbrev=False,
        description="Read handwritten digits from image files (%s) with a saved model. "
                    "Each image is prepared as MNIST's were: ink made bright on dark, cropped, "
                    "scaled into 20x20 and centred by its centre of mass in 28x28." % IMAGE_FORMATS,
        epilog="example: python mnist_pure.py --max-train 60000 --save && "
               "python mnist_pure.py predict my_seven.png")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, PGM, PBM or PPM files")
    parser.add_argument("--load", default=DEFAULT_MODEL, metavar="PATH",
                        help="the model to use (default: model.safetensors beside this script)")
    parser.add_argument("--no-draw", action="store_true",
                        help="do not draw the 28x28 image the network saw")
    return parser


def describe_prediction(path, p):
    """'digit.png: predicted 7 (98.1%), then 1 (1.2%), 9 (0.3%)'."""
    ranked = sorted(range(N_DIGITS), key=lambda k: -p[k])
    return "%s: predicted %d (%.1f%%), then %d (%.1f%%), %d (%.1f%%)" % (
        path, ranked[0], 100 * p[ranked[0]], ranked[1], 100 * p[ranked[1]],
        ranked[2], 100 * p[ranked[2]])


def model_or_advice(path):
    """(network, metadata) of the model `predict` and `serve` use; if there is
    none, MnistError saying how to make one."""
    if not os.path.exists(path):
        save = ["--save"] + ([] if path == DEFAULT_MODEL else [shown_path(path)])
        raise MnistError("%s: model file not found; train and save one first: %s"
                         % (path, command_text(script_words() + ["--max-train", "60000"] + save)))
    return read_model(path)


def run_predict(args, console):
    """`predict IMAGE...`: the saved model's guess for each image."""
    network = make_engine(model_or_advice(args.load)[0], "auto")
    failures = 0
    for path in args.images:
        try:
            image, warnings = read_digit(path)
        except MnistError as e:
            console.note("error: %s" % one_line(str(e)))
            failures += 1
            continue
        for warning in warnings:
            console.note("warning: %s: %s" % (path, warning))
        console.say(describe_prediction(path, network.predict(image)))
        if not args.no_draw:
            console.say("\n".join(render_digit(image, half=False)))
    return 1 if failures else 0


def port_number(text):
    """An argparse type: a TCP port, 0..65535 (0: any free port)."""
    value = whole_number(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError("a port is at most 65535, not %d" % value)
    return value


def allowed_host(text):
    """An argparse type: a name the Host header may give (--allow-host), such
    as mybox.local or 192.168.1.20 (no port, no scheme)."""
    named = host_and_port(text)
    if named is None or named[1] is not None or not text.strip():
        raise argparse.ArgumentTypeError("%r is not a host name such as mybox.local or "
                                         "192.168.1.20 (no port, no http://)" % text)
    return named[0]


def build_serve_parser():
    parser = Parser(
        prog="mnist_pure.py serve", allow_abbrev=False,
        description="A web page to draw digits on (mouse, finger or pen) or drop photos of "
                    "digits into, and watch a saved model read them as you draw; also an "
                    "HTTP API: POST an image file to /api/predict.",
        epilog="example: python mnist_pure.py --max-train 60000 --save && "
               "python mnist_pure.py serve --open")
    parser.add_argument("--load", default=DEFAULT_MODEL, metavar="PATH",
                        help="the model to use (default: model.safetensors beside this script)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1: this machine only; "
                             "0.0.0.0: every machine that can reach this one)")
    parser.add_argument("--port", type=port_number, default=8000,
                        help="the port to listen on (default 8000; 0: any free port)")
    parser.add_argument("--allow-host", type=allowed_host, action="append", default=[],
                        metavar="NAME",
                        help="a name the page may be opened under besides the address's own "
                             "(127.0.0.1, localhost, [::1], --host), such as the machine's "
                             "name on the network; repeat for several. Requests naming any "
                             "other get 403: a guard against DNS rebinding")
    parser.add_argument("--open", action="store_true", help="open the page in a browser")
    parser.add_argument("--verbose", action="store_true", help="log one line per request")
    return parser


def run_serve(args, console):
    """`serve`: the drawing page and its API, until Ctrl-C (section 20)."""
    network, metadata = model_or_advice(args.load)
    return serve_digits(make_engine(network, "auto"), metadata, console, source=args.load,
                        host=args.host, port=args.port, open_browser=args.open,
                        verbose=args.verbose, allowed_hosts=args.allow_host)


def run(argv, console):
    """Parse the command line and do what it asks."""
    if argv[:1] == ["predict"]:
        return run_predict(build_predict_parser().parse_args(argv[1:]), console)
    if argv[:1] == ["serve"]:
        return run_serve(build_serve_parser().parse_args(argv[1:]), console)
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from_args(parser, args, os.environ)
    if not argv and console.interactive:
        settings = ask_settings(settings, console)
    if args.trace:
        return run_trace(settings, console)
    if args.gradcheck:
        return run_gradcheck(settings, console)
    if settings.load:
        return run_evaluation(settings, console)
    return run_training(settings, given_fields(args), console)


def main(argv=None, console=None):
    """The program: returns the exit code (0 done, 1 error, 2 usage, 130 Ctrl-C)."""
    console = console or Console()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(argv, console)
    except SystemExit as e:             # argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    except MnistError as e:
        console.note("error: %s" % one_line(str(e)))
        return 1
    except KeyboardInterrupt:
        console.note("interrupted")
        return 130
    except BrokenPipeError:             # e.g. `python mnist_pure.py | head -3`
        if console.out is sys.stdout:   # no traceback when Python flushes at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    exit_code = main()
    while True:                 # a late Ctrl-C must not interrupt the exit, not even
        try:                    # one that lands while the ignoring is being set up
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            break
        except KeyboardInterrupt:
            pass
    sys.exit(exit_code)
