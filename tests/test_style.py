"""The file's promises to its readers, checked: it reads top to bottom, it uses
only the standard library, and the network's exp and log are its own."""

import ast
import os
import sys
import unittest

from helpers import SCRIPT


def module_tree():
    with open(SCRIPT, encoding="utf-8") as stream:
        return ast.parse(stream.read())


def top_level_names(tree):
    """{name: line} for what the module defines at its top level."""
    defined = {}
    for node in tree.body:
        names = []
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            names += [e.id for t in node.targets if isinstance(t, ast.Tuple)
                      for e in t.elts if isinstance(e, ast.Name)]
        elif isinstance(node, ast.AnnAssign):
            names = [node.target.id]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [(a.asname or a.name).split(".")[0] for a in node.names]
        for name in names:
            defined.setdefault(name, node.lineno)
    return defined


class ReadingOrderTests(unittest.TestCase):
    def test_no_name_is_used_before_it_is_defined(self):
        tree = module_tree()
        defined = top_level_names(tree)
        late = []
        for node in tree.body:
            if isinstance(node, ast.If):            # the __main__ guard, at the very end
                continue
            own = getattr(node, "name", None)
            for sub in ast.walk(node):
                if (isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load) and sub.id != own
                        and defined.get(sub.id, 0) > node.lineno):
                    late.append("line %d uses %s, defined at line %d"
                                % (sub.lineno, sub.id, defined[sub.id]))
        self.assertEqual(late, [])

    def test_sections_are_numbered_in_order_under_banners(self):
        with open(SCRIPT, encoding="utf-8") as stream:
            lines = stream.read().splitlines()
        numbers = [int(line[2:].split(".")[0]) for k, line in enumerate(lines)
                   if line.startswith("# ") and line[2:3].isdigit() and lines[k - 1].startswith("# ===")]
        self.assertEqual(numbers, list(range(1, 17)))


class StandardLibraryTests(unittest.TestCase):
    def test_only_the_standard_library_is_imported_and_never_pickle(self):
        imported = set()
        for node in ast.walk(module_tree()):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module.split(".")[0])
        self.assertFalse(imported & {"pickle", "marshal", "shelve", "numpy"})
        stdlib = getattr(sys, "stdlib_module_names", None)
        if stdlib is None:
            self.skipTest("sys.stdlib_module_names needs Python 3.10")
        self.assertEqual(imported - set(stdlib), set())

    def test_the_network_uses_its_own_exp_and_log(self):
        calls = {(node.func.value.id, node.func.attr) for node in ast.walk(module_tree())
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                 and isinstance(node.func.value, ast.Name)}
        self.assertFalse(calls & {("math", "exp"), ("math", "log"), ("math", "expm1"),
                                  ("math", "log1p"), ("math", "fsum")})

    def test_user_input_is_never_rejected_with_assert(self):
        self.assertEqual([n.lineno for n in ast.walk(module_tree()) if isinstance(n, ast.Assert)], [])

    def test_the_program_is_one_file(self):
        root = os.path.dirname(SCRIPT)
        python_files = [f for f in os.listdir(root) if f.endswith(".py")]
        self.assertEqual(python_files, ["mnist_pure.py"])


if __name__ == "__main__":
    unittest.main()
