"""Synthetic "photos" of MNIST digits for the tests, standard library only:
a digit drawn dark on light paper, large and smooth, under uneven light
(a gradient, a vignette, a shadow, a dark table beyond the page's edge) and
camera noise.

    python tests/photomaker.py docs/photos     # writes the README's examples

A photo is made of two layers, multiplied: the paper's brightness at each
pixel (a function of x, y), and the ink, 0..1, which takes away a share of
that light: grey = paper * (1 - darkness * ink) + noise."""

import math
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import mnist_pure  # noqa: E402


def digit_ink_at(image, u, v):
    """Ink 0..1 of a 28x28 MNIST image (ink = 255) at (u, v), in its pixels,
    interpolated bilinearly between pixel centres: smooth when scaled up."""
    u, v = u - 0.5, v - 0.5
    i, j = math.floor(u), math.floor(v)
    fu, fv = u - i, v - j

    def at(a, b):
        return image[b * 28 + a] if 0 <= a < 28 and 0 <= b < 28 else 0
    top = at(i, j) * (1 - fu) + at(i + 1, j) * fu
    bottom = at(i, j + 1) * (1 - fu) + at(i + 1, j + 1) * fu
    return (top * (1 - fv) + bottom * fv) / 255


def ink_layer(width, height, digits):
    """digits: [(28x28 image, left, top, side)], each drawn side x side."""
    ink = [0.0] * (width * height)
    for image, left, top, side in digits:
        for y in range(max(0, top), min(height, top + side)):
            for x in range(max(0, left), min(width, left + side)):
                value = digit_ink_at(image, (x - left + 0.5) * 28 / side, (y - top + 0.5) * 28 / side)
                ink[y * width + x] = max(ink[y * width + x], value)
    return ink


def strokes_layer(width, height, strokes, radius):
    """Ink of pen strokes: polylines [(x, y), ...] in pixels, `radius` thick,
    with a soft one-pixel edge."""
    ink = [0.0] * (width * height)
    for line in strokes:
        for (x0, y0), (x1, y1) in zip(line, line[1:]):
            length2 = (x1 - x0) ** 2 + (y1 - y0) ** 2 or 1e-9
            for y in range(max(0, int(min(y0, y1) - radius - 2)), min(height, int(max(y0, y1) + radius + 3))):
                for x in range(max(0, int(min(x0, x1) - radius - 2)), min(width, int(max(x0, x1) + radius + 3))):
                    t = min(1.0, max(0.0, ((x - x0) * (x1 - x0) + (y - y0) * (y1 - y0)) / length2))
                    d = math.hypot(x - x0 - t * (x1 - x0), y - y0 - t * (y1 - y0))
                    value = min(1.0, max(0.0, radius + 0.5 - d))
                    ink[y * width + x] = max(ink[y * width + x], value)
    return ink


def blur(values, width, height, radius):
    """The mean of each (2 radius + 1)-square around every value (cut short
    at the edges), by running sums along rows, then along columns."""
    out = list(values)
    for count, lines in ((width, [range(y * width, (y + 1) * width) for y in range(height)]),
                         (height, [range(x, width * height, width) for x in range(width)])):
        for line in lines:
            sums = [0.0]
            for k in line:
                sums.append(sums[-1] + out[k])
            for i, k in enumerate(line):
                low, high = max(0, i - radius), min(count, i + radius + 1)
                out[k] = (sums[high] - sums[low]) / (high - low)
    return out


def blotchy_noise(width, height, deviation, radius, seed):
    """Camera noise as it comes out of a camera: in blotches about 2 radius + 1
    pixels wide (each pixel is made from its neighbours' sensors, then
    compressed), Gaussian, of the given standard deviation."""
    rng = random.Random(seed)
    noise = blur([rng.gauss(0, 1) for _ in range(width * height)], width, height, radius)
    spread = math.sqrt(sum(v * v for v in noise) / len(noise))
    return [v * deviation / spread for v in noise]


def photo(width, height, ink, paper, noise=6.0, darkness=0.85, seed=1, blotch=0):
    """Luminance bytes: paper(x, y) dimmed by the ink, plus Gaussian noise of
    deviation `noise`, each pixel's own, or in blotches of radius `blotch`."""
    rng = random.Random(seed)
    blotches = blotchy_noise(width, height, noise, blotch, seed) if noise and blotch else None
    out = bytearray(width * height)
    for y in range(height):
        for x in range(width):
            value = paper(x, y) * (1 - darkness * ink[y * width + x])
            if blotches:
                value += blotches[y * width + x]
            elif noise:
                value += rng.gauss(0, noise)
            out[y * width + x] = 0 if value < 0 else 255 if value > 255 else int(value + 0.5)
    return bytes(out)


def smoothstep(edge0, edge1, x):
    t = min(1.0, max(0.0, (x - edge0) / (edge1 - edge0)))
    return t * t * (3 - 2 * t)


# The paper's brightness, as functions of (x, y).

def even(level=215):
    return lambda x, y: level


def gradient(width, low=90, high=230):
    """Light from one side: from `low` at the left edge to `high` at the right."""
    return lambda x, y: low + (high - low) * x / (width - 1)


def vignette(width, height, centre=225, corners=0.35):
    """A lens's fall-off: `corners` of the centre's light in the corners."""
    cx, cy, reach = (width - 1) / 2, (height - 1) / 2, math.hypot(width / 2, height / 2)
    return lambda x, y: centre * (1 - (1 - corners) * (math.hypot(x - cx, y - cy) / reach) ** 2)


def shadow(width, level=215, depth=0.45):
    """A soft shadow over the left third, taking `depth` of the light."""
    edge, soft = width / 3, width / 12
    return lambda x, y: level * (1 - depth * (1 - smoothstep(edge - soft, edge + soft, x)))


def page_edge(width, level=215, table=45):
    """The page ends at 84% of the width; beyond it, a dark table."""
    edge = width * 0.84
    return lambda x, y: table + (level - table) * (1 - smoothstep(edge - 2, edge + 2, x))


def gradient_and_wave(width):
    """Light from one side, slowly, with a gentle wave of light across it
    (the paper of a page photographed under a lampshade's folds, say)."""
    return lambda x, y: 200 - 90 * x / width + 25 * math.sin(y / 90)


def sine_band():
    """A gentle wave of light alone: bands of light and shade across the page."""
    return lambda x, y: 200 + 25 * math.sin(y / 90)


def everything(width, height):
    """Vignette, gradient and shadow at once."""
    v, g, s = vignette(width, height), gradient(width, 0.5, 1.0), shadow(width, 1.0)
    return lambda x, y: v(x, y) * g(x, y) * s(x, y)


SIDE = 240                    # the photos are 240x240 (two digits: 320x240)


def examples(test):
    """{name: (width, height, luminance bytes)}: the README's photos, made
    from MNIST test digits (test: the test Dataset)."""
    two, seven, five, zero = test.image(1), test.image(0), test.image(15), test.image(3)
    digit = ink_layer(SIDE, SIDE, [(two, 40, 48, 160)])
    speck = [0.0] * (SIDE * SIDE)
    speck[120 * SIDE + 120] = 1.0
    beside = ink_layer(SIDE, SIDE, [(seven, 24, 48, 160)])
    for y in range(24, 30):
        for x in range(210, 216):
            beside[y * SIDE + x] = 1.0
    pair = ink_layer(320, SIDE, [(five, 8, 48, 152), (zero, 160, 48, 152)])
    return {
        "gradient": (SIDE, SIDE, photo(SIDE, SIDE, digit, gradient(SIDE))),
        "vignette": (SIDE, SIDE, photo(SIDE, SIDE, digit, vignette(SIDE, SIDE))),
        "shadow": (SIDE, SIDE, photo(SIDE, SIDE, digit, shadow(SIDE))),
        "page_edge": (SIDE, SIDE, photo(SIDE, SIDE, digit, page_edge(SIDE))),
        "noise": (SIDE, SIDE, photo(SIDE, SIDE, digit, even(), noise=12)),
        "everything": (SIDE, SIDE, photo(SIDE, SIDE, digit, everything(SIDE, SIDE))),
        "speck": (SIDE, SIDE, photo(SIDE, SIDE, speck, even(), noise=0)),
        "speck_beside": (SIDE, SIDE, photo(SIDE, SIDE, beside, even())),
        "two_digits": (320, SIDE, photo(320, SIDE, pair, even())),
        "blank": (SIDE, SIDE, photo(SIDE, SIDE, [0.0] * (SIDE * SIDE), gradient(SIDE))),
        "solid_ink": (SIDE, SIDE, photo(SIDE, SIDE, [1.0] * (SIDE * SIDE), even())),
    }


def main(folder):
    train, test = mnist_pure.load_mnist(os.path.join(os.path.dirname(HERE), "data"))
    os.makedirs(folder, exist_ok=True)
    for name, (width, height, grey) in examples(test).items():
        path = os.path.join(folder, name + ".png")
        with open(path, "wb") as stream:
            stream.write(mnist_pure.png_bytes(width, height, grey, 1))
        print(path)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(HERE), "docs", "photos"))
