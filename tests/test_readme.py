"""The README's promises that are code: its "Use it from Python" snippet runs as
written, and the commands it shows are the program's own."""

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

from helpers import ROOT, mnist_pure as m

README = os.path.join(ROOT, "README.md")


def readme():
    with open(README, encoding="utf-8") as stream:
        return stream.read()


def section(title):
    """The README's text under `## title`, up to the next `## `."""
    text = readme()
    start = text.index("\n## " + title)
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, re.S)


class UseItFromPythonTests(unittest.TestCase):
    def test_the_snippet_runs_as_written_trains_predicts_saves_and_loads(self):
        (snippet,) = python_blocks(section("Use it from Python"))[:1]
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        environment = dict(os.environ, PYTHONPATH=ROOT)
        done = subprocess.run([sys.executable, "-c", snippet], cwd=folder, env=environment,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=600)
        self.assertEqual(done.returncode, 0, done.stderr)
        printed = done.stdout.strip().splitlines()
        accuracy = float(printed[0])
        self.assertGreater(accuracy, 0.85)
        probabilities = ast.literal_eval(printed[1])
        self.assertEqual(len(probabilities), 10)
        self.assertAlmostEqual(sum(probabilities), 1.0)
        self.assertTrue(os.path.exists(os.path.join(folder, "m.safetensors")))

    def test_every_name_the_section_uses_exists(self):
        used = set(re.findall(r"\bmp\.(\w+)", section("Use it from Python")))
        self.assertTrue(used)
        self.assertEqual([name for name in used if not hasattr(m, name)], [])


class CommandTests(unittest.TestCase):
    def test_every_option_the_readme_shows_is_one_the_program_knows(self):
        known = set(re.findall(r"--[a-z][a-z-]+", m.build_parser().format_help()))
        known |= set(re.findall(r"--[a-z][a-z-]+", m.build_predict_parser().format_help()))
        known |= set(re.findall(r"--[a-z][a-z-]+", m.build_serve_parser().format_help()))
        commands = re.findall(r"(?:python3?|pypy3) mnist_pure\.py[^\n`|]*", readme())
        shown = {option for command in commands for option in re.findall(r"--[a-z][a-z-]+",
                                                                           command)}
        self.assertEqual(sorted(shown - known), [])


if __name__ == "__main__":
    unittest.main()
