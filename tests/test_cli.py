"""The command line, end to end: main([...]) in-process, and the script as a
real process where exit codes, signals and pipes matter."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from unittest import mock

from helpers import SCRIPT, assert_one_line_error, mnist_pure as m, run_main, run_script

QUICK = ("--max-train", "500", "--epochs", "2", "--max-test", "1000", "--quiet", "--show", "0")


class TemporaryFolder(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)

    def path(self, name):
        return os.path.join(self.folder, name)


class EndToEndTests(TemporaryFolder):
    def test_a_fresh_run_with_no_terminal_trains_1000_images_and_reaches_88_percent(self):
        code, out, err = run_script(stdin=subprocess.DEVNULL, cwd=self.folder)
        self.assertEqual(code, 0, err)
        last = out.strip().splitlines()[-1]
        match = re.fullmatch(r"test accuracy: (\d+\.\d\d)% \((\d+)/10000\)", last)
        self.assertIsNotNone(match, last)
        self.assertGreaterEqual(float(match.group(1)), 88.0)
        self.assertIn("1,000 training images", out)
        self.assertIn("the first 25 test digits", out)
        self.assertEqual(os.listdir(self.folder), [])         # it wrote nothing

    def test_the_summary_ends_with_the_accuracy_line(self):
        run = run_main(*QUICK)
        self.assertEqual(run.code, 0, run.err)
        self.assertRegex(run.last_line, r"^test accuracy: \d+\.\d\d% \(\d+/1000\)$")
        self.assertIn("epoch        lr    loss", run.out)
        self.assertIn("true\\guess", run.out)

    def test_json_is_the_last_line_and_holds_the_figures(self):
        run = run_main(*QUICK, "--json")
        summary = json.loads(run.last_line)
        self.assertEqual((summary["total"], summary["epochs"], summary["train_images"]), (1000, 2, 500))
        self.assertEqual(len(summary["history"]), 2)
        self.assertIn("test accuracy: %.2f%%" % (100 * summary["test_accuracy"]), run.out)

    def test_the_same_seed_repeats_a_run_exactly(self):
        first = json.loads(run_main(*QUICK, "--json", "--seed", "7").last_line)
        second = json.loads(run_main(*QUICK, "--json", "--seed", "7").last_line)
        other = json.loads(run_main(*QUICK, "--json", "--seed", "8").last_line)

        def strip(summary):
            return [{k: v for k, v in h.items() if k != "seconds"} for h in summary["history"]]
        self.assertEqual(strip(first), strip(second))
        self.assertEqual(first["correct"], second["correct"])
        self.assertNotEqual(strip(first), strip(other))

    def test_training_from_a_real_subset_passes_an_accuracy_bar(self):
        run = run_main("--max-train", "2000", "--epochs", "3", "--quiet", "--show", "0", "--json")
        self.assertGreater(json.loads(run.last_line)["test_accuracy"], 0.84)

    def test_the_environment_sets_sizes_and_options_win(self):
        old = dict(os.environ)
        self.addCleanup(lambda: (os.environ.clear(), os.environ.update(old)))
        os.environ.update(MAX_TRAIN="300", MAX_TEST="400")
        summary = json.loads(run_main("--epochs", "1", "--quiet", "--show", "0", "--json").last_line)
        self.assertEqual((summary["train_images"], summary["total"]), (300, 400))
        summary = json.loads(run_main("--epochs", "1", "--quiet", "--show", "0", "--json",
                                      "--max-test", "500").last_line)
        self.assertEqual((summary["train_images"], summary["total"]), (300, 500))

    def test_asking_for_more_images_than_exist_uses_all_of_them_with_a_notice(self):
        run = run_main("--max-train", "200", "--max-test", "20000", "--epochs", "1", "--quiet",
                       "--show", "0")
        self.assertEqual(run.code, 0)
        self.assertIn("asked for 20,000 test images; using the 10,000 there are", run.err)
        self.assertIn("(", run.last_line)
        self.assertTrue(run.last_line.endswith("/10000)"))

    def test_show_and_show_mistakes_draw_digits(self):
        run = run_main("--max-train", "300", "--epochs", "1", "--max-test", "200", "--quiet",
                       "--show", "10", "--show-mistakes", "5")
        self.assertIn("the first 10 test digits", run.out)
        self.assertIn("the 5 most confident mistakes", run.out)
        self.assertIn("█", run.out)

    def test_test_each_epoch_fills_the_tables_test_column(self):
        run = run_main(*QUICK, "--test-each-epoch", "--json")
        history = json.loads(run.last_line)["history"]
        self.assertTrue(all(0 < h["test_accuracy"] <= 1 for h in history))

    def test_early_stopping_reports_the_epoch_it_kept(self):
        run = run_main("--max-train", "300", "--epochs", "4", "--max-test", "300", "--quiet",
                       "--show", "0", "--patience", "1", "--validation", "500", "--json")
        summary = json.loads(run.last_line)
        self.assertIn(summary["best_epoch"], (1, 2, 3, 4))
        self.assertIn("early stopping: kept epoch %d" % summary["best_epoch"], run.out)
        self.assertTrue(all(h["validation_accuracy"] is not None for h in summary["history"]))


class SaveLoadResumeTests(TemporaryFolder):
    def test_load_tests_a_saved_model_and_gets_the_same_accuracy(self):
        model = self.path("model.safetensors")
        trained = run_main(*QUICK, "--save", model)
        self.assertIn("saved the model to " + model, trained.out)
        loaded = run_main("--load", model, "--max-test", "1000", "--quiet", "--show", "0")
        self.assertEqual(loaded.code, 0, loaded.err)
        self.assertEqual(loaded.last_line, trained.last_line)

    def test_two_epochs_equal_one_epoch_then_one_more_resumed(self):
        whole, half, model = self.path("whole.st"), self.path("half.st"), self.path("half.st")
        straight = run_main(*QUICK, "--save", whole, "--json")
        run_main(*(QUICK[:3] + ("1",) + QUICK[4:]), "--save", half)
        resumed = run_main("--resume", model, "--epochs", "2", "--max-test", "1000", "--quiet",
                           "--show", "0", "--save", model, "--json")
        self.assertEqual(resumed.code, 0, resumed.err)
        self.assertEqual(json.loads(resumed.last_line)["correct"], json.loads(straight.last_line)["correct"])
        self.assertEqual(m.load_model(whole).weights, m.load_model(model).weights)
        self.assertEqual(m.load_model(whole).biases, m.load_model(model).biases)

    def test_a_checkpoint_is_written_after_every_epoch(self):
        checkpoint = self.path("ck.safetensors")
        run_main(*QUICK, "--checkpoint", checkpoint)
        _, metadata, recipe, state = m.load_run(checkpoint)
        self.assertEqual((state.epoch, state.position, metadata["epochs"]), (2, 0, "2"))
        self.assertEqual(recipe["max_train"], 500)

    def test_load_of_a_missing_model_is_one_line(self):
        run = run_main("--load", self.path("none.safetensors"))
        self.assertEqual(run.code, 1)
        assert_one_line_error(self, run.err, "none.safetensors", "not found")

    def test_load_and_resume_together_are_a_usage_error(self):
        run = run_main("--load", "a", "--resume", "b")
        self.assertEqual(run.code, 2)
        assert_one_line_error(self, run.err, "choose one")


class UsageTests(unittest.TestCase):
    def assert_usage_error(self, *argv, fragment=""):
        run = run_main(*argv)
        self.assertEqual(run.code, 2, run.err)
        assert_one_line_error(self, run.err, fragment)

    def test_abbreviated_options_are_refused(self):
        self.assert_usage_error("--max-tr", "5", fragment="--max-tr")
        self.assert_usage_error("--ep", "5", fragment="--ep")

    def test_counts_must_be_positive_whole_numbers(self):
        self.assert_usage_error("--max-train", "0", fragment="at least 1")
        self.assert_usage_error("--max-train", "-5", fragment="at least 1")
        self.assert_usage_error("--max-test", "ten", fragment="not a whole number")
        self.assert_usage_error("--epochs", "1.5", fragment="not a whole number")

    def test_the_learning_rate_must_be_positive_and_finite(self):
        for bad in ("0", "-0.1", "nan", "inf", "fast"):
            self.assert_usage_error("--lr", bad, fragment="--lr")

    def test_an_option_another_optimizer_has_is_refused_naming_the_optimizer(self):
        self.assert_usage_error("--optimizer", "adam", "--nesterov",
                                fragment="--nesterov does not apply to --optimizer adam")
        self.assert_usage_error("--optimizer", "adam", "--momentum", "0.9",
                                fragment="--momentum does not apply to --optimizer adam")
        self.assert_usage_error("--nesterov", fragment="--nesterov needs --momentum M")

    def test_an_unknown_engine_is_refused(self):
        self.assert_usage_error("--engine", "turbo", fragment="turbo")

    def test_a_bad_environment_variable_is_a_usage_error(self):
        old = dict(os.environ)
        self.addCleanup(lambda: (os.environ.clear(), os.environ.update(old)))
        os.environ["MAX_TEST"] = "-3"
        self.assert_usage_error(fragment="MAX_TEST")

    def test_plot_files_need_a_known_extension(self):
        self.assert_usage_error("--plot", "curves.jpg", fragment=".svg or .png")
        self.assert_usage_error("--plot-weights", "w.svg", fragment=".png")

    def test_help_shows_examples_and_exits_0(self):
        run = run_main("--help")
        self.assertEqual(run.code, 0)
        self.assertIn("examples:", run.out + run.err)

    def test_a_missing_data_folder_is_one_line_saying_where(self):
        run = run_main("--data-dir", "/nonexistent/mnist")
        self.assertEqual(run.code, 1)
        assert_one_line_error(self, run.err, "/nonexistent/mnist", "yann.lecun.com")


class InteractiveTests(unittest.TestCase):
    def setUp(self):
        # The questions depend on whether a saved model sits beside the script.
        self.had_model = os.path.exists(m.DEFAULT_MODEL)

    def test_it_asks_for_the_training_size_and_epochs_then_trains(self):
        answers = ["train"] if self.had_model else []
        run = run_main(answers=answers + ["300", "1", "n"], interactive=True)
        self.assertEqual(run.code, 0, run.err)
        self.assertIn("How many training images?", run.out)
        self.assertIn("300 training images", run.out)
        self.assertIn("1 epoch,", run.out)

    def test_enter_takes_the_defaults(self):
        prompts = []
        answers = (["train"] if self.had_model else []) + ["", "", "n"]
        settings = m.ask_settings(m.Settings(), console_answering(answers, prompts))
        self.assertEqual((settings.max_train, settings.epochs, settings.save), (1000, 12, ""))

    def test_a_bad_answer_is_asked_again(self):
        prompts = []
        answers = (["train"] if self.had_model else []) + ["lots", "-1", "200", "3", "maybe", "n"]
        settings = m.ask_settings(m.Settings(), console_answering(answers, prompts))
        self.assertEqual((settings.max_train, settings.epochs), (200, 3))

    def test_three_bad_answers_give_up_with_one_line(self):
        answers = (["train"] if self.had_model else []) + ["x", "y", "z"]
        run = run_main(answers=answers, interactive=True)
        self.assertEqual(run.code, 1)
        assert_one_line_error(self, run.err.splitlines()[-1], "How many training images")

    def test_end_of_input_at_a_prompt_is_one_line_not_a_traceback(self):
        run = run_main(answers=[], interactive=True)
        self.assertEqual(run.code, 1)
        assert_one_line_error(self, run.err, "end of input")

    def test_ctrl_c_at_a_prompt_exits_130(self):
        run = run_main(answers=[KeyboardInterrupt()], interactive=True)
        self.assertEqual(run.code, 130)
        assert_one_line_error(self, run.err, "interrupted")

    def test_options_mean_no_questions(self):
        run = run_main(*QUICK, answers=[], interactive=True)
        self.assertEqual(run.code, 0)
        self.assertNotIn("?", run.out.split("\n")[0])


def console_answering(answers, prompts):
    replies = list(answers)

    def fake_input(prompt):
        prompts.append(prompt)
        if not replies:
            raise EOFError
        return replies.pop(0)
    import io
    return m.Console(out=io.StringIO(), err=io.StringIO(), input=fake_input, interactive=True)


class LookingInsideTests(unittest.TestCase):
    def test_trace_tells_one_step_and_the_loss_goes_down(self):
        run = run_main("--trace")
        self.assertEqual(run.code, 0)
        self.assertIn("p = softmax(z)", run.out)
        self.assertIn("dz = p - onehot(7)", run.out)
        before, after = map(float, re.search(r"loss (\S+) -> (\S+) \(down\)", run.out).groups())
        self.assertLess(after, before)
        self.assertLessEqual(len(run.out.splitlines()), 24)          # one screen

    def test_gradcheck_reports_every_tensor_below_1e_6(self):
        run = run_main("--gradcheck")
        self.assertEqual(run.code, 0, run.out)
        errors = dict((name, float(err)) for name, err in
                      re.findall(r"^\s+(\w+)\s+\d+ entries checked\s+largest relative error (\S+)",
                                 run.out, re.M))
        self.assertEqual(sorted(errors), ["W1", "W2", "b1", "b2"])
        self.assertTrue(all(e < 1e-6 for e in errors.values()), errors)
        self.assertIn("784-128-10", run.out)


class DeeperNetworkTests(unittest.TestCase):
    def test_hidden_takes_a_list_of_layer_sizes(self):
        run = run_main("--hidden", "32,16", "--max-train", "300", "--epochs", "1",
                       "--max-test", "300", "--quiet", "--show", "0", "--json")
        self.assertEqual(run.code, 0, run.err)
        self.assertIn("a 784-32-16-10 network", run.out)
        self.assertEqual(json.loads(run.last_line)["sizes"], [784, 32, 16, 10])

    def test_gradcheck_of_a_two_hidden_layer_network_passes(self):
        run = run_main("--gradcheck", "--hidden", "32,16")
        self.assertEqual(run.code, 0, run.out)
        self.assertIn("784-32-16-10", run.out)
        errors = re.findall(r"^\s+(\w+)\s+\d+ entries checked\s+largest relative error (\S+)",
                            run.out, re.M)
        self.assertEqual(sorted(name for name, _ in errors), ["W1", "W2", "W3", "b1", "b2", "b3"])
        self.assertTrue(all(float(e) < 1e-6 for _, e in errors))

    def test_trace_shows_every_layer_of_a_deeper_network(self):
        run = run_main("--trace", "--hidden", "32,16")
        self.assertEqual(run.code, 0)
        for line in ("a1 = x @ W1 + b1", "h1 = relu(a1)", "a2 = h1 @ W2 + b2", "h2 = relu(a2)",
                     "z = h2 @ W3 + b3", "da2 = (W3 @ dz)", "da1 = (W2 @ da2)", "|dW3|", "|dW1|"):
            self.assertIn(line, run.out)

    def test_bad_layer_sizes_are_a_usage_error(self):
        for bad in ("0", "12,x", "128,,64"):
            run = run_main("--hidden", bad)
            self.assertEqual(run.code, 2)
            self.assertIn("--hidden", run.err)


class RoughEdgeTests(TemporaryFolder):
    """What a new user tripped over, each now smooth."""

    def test_help_shows_plain_percent_signs_and_every_command_in_its_usage(self):
        run = run_main("--help")
        self.assertNotIn("%%", run.out)
        usage = run.out.split("\n\n")[0]
        for command in ("predict", "serve"):
            self.assertIn(command, usage)
        self.assertNotIn("~3 minutes", run.out)

    def test_the_prompt_takes_more_images_than_exist_as_the_flag_does_with_its_note(self):
        answers = ["train"] if os.path.exists(m.DEFAULT_MODEL) else []
        prompts = []
        console = console_answering(answers + ["70000", "", "n"], prompts)
        asked = m.ask_settings(m.Settings(), console)
        self.assertEqual(len([p for p in prompts if "training images" in p]), 1)
        parser = m.build_parser()
        flagged = m.settings_from_args(parser, parser.parse_args(["--max-train", "70000"]), {})
        notes = []
        for settings in (asked, flagged):
            train, _, _ = m.load_data(settings, console)
            settings.choose_defaults(len(train))
            notes.append(console.err.getvalue())
            console.err.truncate(0)
            console.err.seek(0)
        self.assertEqual(len(train), 60000)
        self.assertEqual(notes, ["note: asked for 70,000 training images; using the 60,000 "
                                 "there are\n"] * 2)
        self.assertEqual(asked.recipe(), flagged.recipe())    # chosen for 60,000, both

    def test_ctrl_d_and_ctrl_c_at_a_prompt_end_the_prompts_line_first(self):
        for reply, code in ((EOFError(), 1), (KeyboardInterrupt(), 130)):
            answers = (["train"] if os.path.exists(m.DEFAULT_MODEL) else []) + [reply]
            run = run_main(answers=answers, interactive=True)
            self.assertEqual(run.code, code)
            self.assertTrue(run.out.endswith("] \n"), repr(run.out[-40:]))

    def test_json_with_load_reports_what_the_model_was_trained_with(self):
        model = self.path("m.safetensors")
        self.assertEqual(run_main("--max-train", "600", "--epochs", "3", "--max-test", "100",
                                  "--quiet", "--show", "0", "--lr", "0.03", "--save",
                                  model).code, 0)
        summary = json.loads(run_main("--load", model, "--max-test", "100", "--quiet", "--show",
                                      "0", "--json").last_line)
        self.assertEqual((summary["epochs"], summary["train_images"], summary["learning_rate"]),
                         (3, 600, 0.03))

    def test_trace_with_load_traces_the_saved_model(self):
        model = self.path("m.safetensors")
        run_main("--max-train", "2000", "--epochs", "2", "--max-test", "10", "--quiet",
                 "--show", "0", "--save", model)
        trained = run_main("--trace", "--load", model)
        fresh = run_main("--trace")
        p_trained = float(re.search(r"the answer is 7 \(p = (\S+)\)", trained.out).group(1))
        p_fresh = float(re.search(r"the answer is 7 \(p = (\S+)\)", fresh.out).group(1))
        self.assertGreater(p_trained, 0.9)
        self.assertLess(p_fresh, 0.5)

    def test_training_options_with_load_are_refused_not_ignored(self):
        for option in (("--max-train", "5000"), ("--epochs", "3"), ("--augment",),
                       ("--hidden", "64")):
            run = run_main("--load", self.path("any.safetensors"), *option)
            self.assertEqual(run.code, 2, option)
            self.assertIn(option[0], run.err)
            self.assertIn("--resume", run.err)

    def test_plot_says_why_it_takes_longer(self):
        run = run_main("--max-train", "200", "--epochs", "1", "--max-test", "200", "--quiet",
                       "--show", "0", "--plot", self.path("c.svg"))
        self.assertIn("--plot scores the test set after every epoch", run.out)

    def test_early_stopping_shows_validation_accuracy_in_the_table(self):
        run = run_main("--max-train", "300", "--epochs", "2", "--max-test", "100", "--quiet",
                       "--show", "0", "--patience", "1", "--validation", "500")
        header = next(line for line in run.out.splitlines() if line.startswith("epoch"))
        self.assertIn("valid acc", header)
        kept = re.search(r"kept epoch \d+ \(validation accuracy (\S+)%\)", run.out).group(1)
        self.assertIn(kept + "%", run.out.split("early stopping")[0])

    def test_the_end_of_a_run_suggests_commands_that_work_as_pasted(self):
        # In a folder of its own, a copy of the program (with its data and the
        # README's example digit) runs; each command it suggests is run as
        # printed, there, in turn: the same run again, saving the model, whose
        # own suggestions then read the example with that model.
        folder = self.path("copy")
        os.makedirs(os.path.join(folder, "docs", "examples"))
        shutil.copy(SCRIPT, folder)
        shutil.copy(m.EXAMPLE_DIGIT, os.path.join(folder, "docs", "examples"))
        os.symlink(m.DATA_DIR, os.path.join(folder, "data"))
        done = subprocess.run([sys.executable, "mnist_pure.py", "--max-train", "300",
                               "--epochs", "1", "--max-test", "100", "--show", "0"],
                              cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=300)
        self.assertEqual(done.returncode, 0, done.stderr)

        def suggested(err):
            return [shlex.split(command) for command in re.findall(
                r"^(?:next:|then:| {5}) (.*?)   \(", err, re.M)]
        again, predict, serve = suggested(done.stderr)
        self.assertEqual(again[-1], "--save")
        self.assertEqual(serve[2:], ["serve", "--open"])
        rerun = subprocess.run(again, cwd=folder, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
        self.assertEqual(rerun.returncode, 0, rerun.stderr)
        self.assertEqual(rerun.stdout.splitlines()[-1], done.stdout.splitlines()[-1])
        self.assertTrue(os.path.exists(os.path.join(folder, "model.safetensors")))
        self.assertEqual(suggested(rerun.stderr), [predict, serve])
        read = subprocess.run(predict, cwd=folder, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
        self.assertEqual(read.returncode, 0, read.stderr)
        self.assertRegex(read.stdout, r"docs/examples/seven\.png: predicted \d")

    def test_with_a_model_elsewhere_the_suggestions_load_it(self):
        model = self.path("m.safetensors")
        run = run_main("--max-train", "100", "--epochs", "1", "--max-test", "100", "--quiet",
                       "--show", "0", "--save", model)
        self.assertEqual(run.code, 0, run.err)
        commands = re.findall(r"^(?:next:| {5}) (.*?)   \(", run.err, re.M)
        self.assertEqual(len(commands), 2)
        for command in commands:
            words = shlex.split(command)
            self.assertEqual(os.path.abspath(words[words.index("--load") + 1]), model)


class ProcessTests(TemporaryFolder):
    """Things only a real process shows: signals, pipes, no traceback."""

    def training(self, checkpoint):
        """The program training on all images, a second into its first epoch."""
        process = subprocess.Popen([sys.executable, SCRIPT, "--max-train", "60000", "--epochs", "3",
                                    "--checkpoint", checkpoint, "--quiet"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   universal_newlines=True, cwd=self.folder)
        for line in process.stdout:                 # training starts after the table header
            if line.startswith("epoch"):
                break
        time.sleep(1.0)
        return process

    def test_ctrl_c_pressed_again_and_again_while_saving_never_prints_a_traceback(self):
        checkpoint = self.path("ck.safetensors")
        process = self.training(checkpoint)
        while process.poll() is None:               # the first stops training; the rest
            process.send_signal(signal.SIGINT)      # land while it saves and exits
            time.sleep(0.02)
        err = process.stderr.read()
        process.stdout.close()
        process.stderr.close()
        self.assertNotIn("Traceback", err)
        self.assertNotIn("Exception ignored", err)
        self.assertEqual(process.returncode, 130, err)
        self.assertTrue(os.path.exists(checkpoint))

    def test_ctrl_c_during_training_saves_a_checkpoint_and_exits_130(self):
        checkpoint = self.path("ck.safetensors")
        process = self.training(checkpoint)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
        self.assertEqual(process.returncode, 130, err)
        assert_one_line_error(self, err, "interrupted in epoch", "of 60,000", checkpoint,
                              "To go on: ")
        words = shlex.split(err.split("To go on: ")[1])      # from where the program ran
        self.assertTrue(os.path.samefile(os.path.join(self.folder,
                                                      words[words.index("--resume") + 1]),
                                         checkpoint))
        _, _, recipe, state = m.load_run(checkpoint)
        self.assertEqual((recipe["max_train"], recipe["epochs"]), (60000, 3))
        where = re.search(r"in epoch (\d+) at image ([\d,]+)", err)
        self.assertEqual((state.epoch + 1, state.position),
                         (int(where.group(1)), int(where.group(2).replace(",", ""))))
        self.assertEqual([f for f in os.listdir(self.folder) if f.endswith(".tmp")], [])

    def test_a_closed_pipe_ends_quietly(self):
        process = subprocess.Popen([sys.executable, SCRIPT, "--max-train", "100", "--epochs", "1",
                                    "--max-test", "100"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.folder)
        for _ in range(3):
            process.stdout.readline()
        process.stdout.close()                      # like `| head -3`
        err = process.stderr.read().decode()
        process.wait(timeout=120)
        process.stderr.close()
        self.assertNotIn("Traceback", err)
        self.assertNotIn("BrokenPipeError", err)

    def test_importing_the_module_does_nothing_but_define(self):
        done = subprocess.run([sys.executable, "-c", "import mnist_pure"], cwd=os.path.dirname(SCRIPT),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual((done.returncode, done.stdout, done.stderr), (0, b"", b""))



TINY = ("--max-train", "200", "--max-test", "100", "--quiet", "--show", "0")


def hint(err):
    """The command after "To go on: " in a one-line message."""
    return err.split("To go on: ", 1)[1].strip()


def follow(command):
    """Run a command the program printed, as a shell would, from here."""
    environment = dict(os.environ)
    environment.pop("MAX_TRAIN", None)
    environment.pop("MAX_TEST", None)
    return subprocess.run(command, shell=True, env=environment, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300)


class StopAfter:
    """A StopFlag whose request comes after `reads` looks at it (Ctrl-C, in-process)."""

    def __init__(self, reads):
        self.reads = reads

    def __call__(self):
        return self

    @property
    def requested(self):
        self.reads -= 1
        return self.reads < 0


class GoingOnTests(TemporaryFolder):
    """The commands a stopped or finished run prints: following them finishes the run
    the user started; resuming says what changed, and what is left to do."""

    def test_following_the_hint_after_ctrl_c_finishes_the_run_with_save_workers_and_json(self):
        options = TINY + ("--epochs", "2", "--workers", "2", "--json")
        whole, model, checkpoint = self.path("whole.st"), self.path("m.st"), self.path("ck.st")
        straight = run_main(*options, "--save", whole)
        self.assertEqual(straight.code, 0, straight.err)
        with mock.patch.object(m, "StopFlag", StopAfter(1)):      # stops in epoch 1 or 2
            stopped = run_main(*options, "--save", model, "--checkpoint", checkpoint)
        self.assertEqual(stopped.code, 130, stopped.err)
        self.assertFalse(os.path.exists(model))
        done = follow(hint(stopped.err))
        self.assertEqual(done.returncode, 0, done.stderr)
        summary = json.loads(done.stdout.splitlines()[-1])         # --json went on too
        self.assertEqual((summary["workers"], summary["epochs"]), (2, 2))
        self.assertEqual(summary["correct"], json.loads(straight.last_line)["correct"])
        self.assertEqual(m.load_model(model).weights, m.load_model(whole).weights)

    def test_following_the_hint_after_ctrl_c_while_testing_tests_and_saves_the_model(self):
        model, checkpoint = self.path("m.st"), self.path("ck.st")

        def ctrl_c(*_, **__):
            raise KeyboardInterrupt
        with mock.patch.object(m, "answers", ctrl_c):
            stopped = run_main(*TINY, "--epochs", "1", "--save", model, "--checkpoint",
                               checkpoint)
        self.assertEqual(stopped.code, 130, stopped.err)
        self.assertIn("interrupted after training, while testing", stopped.err)
        done = follow(hint(stopped.err))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("has trained the 1 epoch asked for; testing it", done.stderr)
        self.assertRegex(done.stdout.splitlines()[-1], r"^test accuracy: .*/100\)$")
        self.assertTrue(os.path.exists(model))

    def test_the_hint_after_a_lost_worker_carries_the_same_options(self):
        model, checkpoint, data = self.path("m.st"), self.path("ck.st"), self.path("data")
        os.symlink(m.DATA_DIR, data)                # another --data-dir than the default

        def lost(*_):
            raise m.WorkerLost("worker process 1 was killed by signal 9")
        with mock.patch.object(m, "train_and_report", lost), \
                mock.patch.object(m, "start_workers", lambda *_: None):
            run = run_main(*TINY, "--epochs", "1", "--workers", "2", "--data-dir", data,
                           "--save", model, "--checkpoint", checkpoint, "--json")
        self.assertEqual(run.code, 1)
        assert_one_line_error(self, run.err, "killed by signal 9", "To go on: ")
        done = follow(hint(run.err))
        self.assertEqual(done.returncode, 0, done.stderr)
        summary = json.loads(done.stdout.splitlines()[-1])
        self.assertEqual((summary["workers"], summary["total"], summary["epochs"]), (2, 100, 1))
        self.assertTrue(os.path.exists(model))

    def test_the_interactive_save_answer_is_in_the_hint(self):
        settings = m.Settings(epochs=3, save=m.DEFAULT_MODEL, workers=2)
        words = shlex.split(m.resume_command(settings, self.path("ck.st")))
        self.assertEqual(os.path.abspath(words[words.index("--save") + 1]), m.DEFAULT_MODEL)
        self.assertEqual(words[words.index("--workers") + 1], "2")

    def test_resuming_a_finished_model_says_how_to_train_it_further(self):
        model = self.path("m.st")
        self.assertEqual(run_main(*TINY, "--epochs", "1", "--save", model).code, 0)
        run = run_main("--resume", model, *TINY)
        self.assertEqual(run.code, 1)
        assert_one_line_error(self, run.err, "already trained 1 of 1 epochs; add --epochs N")
        self.assertEqual(run.out, "")                       # no old table, no "trained in"
        test = run.err.split("or test it: ")[1].strip()
        self.assertEqual(run_main(*shlex.split(test)[2:], "--max-test", "100").code, 0)
        fewer = run_main("--resume", model, "--epochs", "1", *TINY)     # all it asked for
        self.assertEqual(fewer.code, 0, fewer.err)
        self.assertIn("has trained the 1 epoch asked for; testing it", fewer.err)
        self.assertNotIn("resuming", fewer.out)                 # it trains nothing
        more = run_main("--resume", model, "--epochs", "2", *TINY)
        self.assertEqual(more.code, 0, more.err)
        self.assertIn("resuming after epoch 1", more.out)

    def test_resuming_a_run_that_stopped_early_says_so(self):
        model = self.path("m.st")
        m.save_run(model, m.NeuralNetwork(seed=1), m.Settings(learning_rate=0.05, epochs=9,
                                                             augment=""),
                   m.TrainingState(epoch=4, stopped_early=True))
        run = run_main("--resume", model, *TINY)
        self.assertEqual(run.code, 1)
        assert_one_line_error(self, run.err, "stopped early, after epoch 4", "--load " + model)

    def test_each_note_on_a_changed_setting_names_the_option_as_one_types_it(self):
        model = self.path("m.st")
        self.assertEqual(run_main(*TINY, "--epochs", "1", "--save", model).code, 0)
        run = run_main("--resume", model, "--epochs", "1", *TINY, "--lr", "0.1", "--no-augment",
                       "--momentum", "0.5", "--nesterov", "--no-rest")   # (no epoch to train)
        self.assertEqual(run.code, 0, run.err)
        notes = [line for line in run.err.splitlines() if line.startswith("note: resuming")]
        self.assertEqual(sorted(notes), sorted([
            "note: resuming with --lr 0.1 instead of the saved --lr 0.02",
            "note: resuming with --no-augment instead of the saved --augment affine",
            "note: resuming with --momentum 0.5 instead of the saved --momentum 0.0",
            "note: resuming with --nesterov, which the saved run did not have",
            "note: resuming with --no-rest, which the saved run did not have"]))
        other = run_main("--resume", model, "--epochs", "2", *TINY, "--hidden", "64")
        self.assertEqual(other.code, 1)
        assert_one_line_error(self, other.err, "is a 784-128-10 network, not 784-64-10")
        self.assertNotIn("(64,)", other.err)

    def test_a_batch_larger_than_the_training_set_gets_a_note(self):
        run = run_main("--batch-size", "5000", "--max-train", "100", "--epochs", "1",
                       "--max-test", "100", "--quiet", "--show", "0")
        self.assertEqual(run.code, 0, run.err)
        self.assertEqual(run.err.splitlines()[0], "note: a batch of 5,000 is more than the 100 "
                                                  "training images: one step an epoch")
        run = run_main("--batch-size", "100", "--max-train", "100", "--epochs", "1",
                       "--max-test", "100", "--quiet", "--show", "0")
        self.assertNotIn("a batch of", run.err)

    def test_a_batch_past_the_set_takes_the_rate_of_the_whole_set(self):
        settings = m.Settings(batch_size=5000, augment="")
        settings.choose_defaults(2000)
        self.assertEqual(settings.learning_rate, float("%.3g" % (0.03 * 2000 ** 0.5)))

    def test_batches_that_leave_a_small_set_few_steps_an_epoch_get_a_note(self):
        quick = ("--max-train", "2000", "--epochs", "1", "--max-test", "100", "--hidden", "8",
                 "--no-augment", "--quiet", "--show", "0")
        run = run_main("--batch-size", "32", *quick)
        self.assertEqual(run.code, 0, run.err)
        self.assertIn("note: batches of 32 leave 62 steps an epoch; on a small set, fewer than "
                      "125 learned less (batches of 16 here would give 125)", run.err)
        for options in (("--batch-size", "16"), ("--momentum", "0.9")):    # 125 steps
            run = run_main(*options, *quick)
            self.assertNotIn("steps an epoch", run.err, options)


class ResumeWithAnotherOptimizerTests(TemporaryFolder):
    def train(self, *options):
        run = run_main("--max-train", "300", "--max-test", "100", "--epochs", "1", "--quiet",
                       "--show", "0", "--hidden", "32", "--momentum", "0.9", *options)
        self.assertEqual(run.code, 0, run.err)

    def test_a_model_file_resumes_with_the_optimizer_started_afresh_and_says_so(self):
        model = os.path.join(self.folder, "m.safetensors")
        self.train("--save", model)
        run = run_main("--resume", model, "--epochs", "2", "--quiet", "--show", "0")
        self.assertEqual(run.code, 0, run.err)
        self.assertIn("note: the optimizer's state starts afresh (%s is a model file, which "
                      "holds none; a checkpoint would)" % model, run.err)

    def test_another_optimizer_takes_its_own_rate_and_drops_what_it_does_not_use(self):
        checkpoint = os.path.join(self.folder, "c.safetensors")
        self.train("--checkpoint", checkpoint)
        run = run_main("--resume", checkpoint, "--epochs", "2", "--optimizer", "adam",
                       "--quiet", "--show", "0", "--json")
        self.assertEqual(run.code, 0, run.err)
        self.assertIn("--momentum 0.9 does not apply to --optimizer adam", run.err)
        self.assertIn("the learning rate is chosen afresh", run.err)
        self.assertNotIn("state starts afresh", run.err)          # another optimizer: of course
        summary = json.loads(run.out.strip().splitlines()[-1])
        self.assertEqual((summary["optimizer"], summary["momentum"], summary["learning_rate"]),
                         ("adam", 0.0, 0.001))


class CannotLearnTests(unittest.TestCase):
    """A run that cannot learn says so, in one line naming the rate and one to
    try, and never suggests keeping the model."""

    def test_too_large_a_rate_stops_the_run_naming_it_and_the_default(self):
        for engine in ("packed", "lists"):           # weights past +-32 / an epoch at chance
            run = run_main("--max-train", "2000", "--max-test", "100", "--epochs", "2",
                           "--lr", "5", "--engine", engine, "--quiet", "--show", "0")
            self.assertEqual(run.code, 1, engine)
            assert_one_line_error(self, run.err, "learning rate 5 is too large",
                                  "try --lr 0.02")
            self.assertNotIn("--save", run.err + run.out)

    def test_too_strong_a_weight_decay_is_named_as_the_cause_and_warned_of_once(self):
        run = run_main("--max-train", "2000", "--max-test", "100", "--epochs", "3",
                       "--hidden", "16", "--weight-decay", "0.5", "--quiet", "--show", "0")
        self.assertEqual(run.code, 0, run.err)
        advice = "--weight-decay 0.5 shrinks the weights faster than they learn: try " \
                 "--weight-decay 0.0001"
        nothing = [line for line in run.err.splitlines() if "learned nothing" in line]
        self.assertEqual(len(nothing), 1, run.err)             # epochs 2 and 3: warned once
        self.assertRegex(nothing[0], r"^warning: epoch 2 learned nothing: [\d.]+% of its images "
                                     r"right, as good as guessing; " + re.escape(advice) + "$")
        self.assertIn("warning: this network reads no better than guessing; " + advice, run.err)

    def test_too_small_a_rate_warns_and_does_not_suggest_keeping_the_model(self):
        run = run_main("--max-train", "2000", "--max-test", "300", "--epochs", "2",
                       "--lr", "1e-6", "--quiet", "--show", "0")
        self.assertEqual(run.code, 0)
        self.assertIn("warning: epoch 1 learned nothing", run.err)
        self.assertIn("the learning rate 1e-06 may be too small: try --lr 0.02", run.err)
        self.assertIn("warning: this network reads no better than guessing", run.err)
        self.assertNotIn("--save", run.err)

    def test_each_option_at_its_defaults_chooses_the_rule_s_batch_and_rate(self):
        cases = [((), 1, 0.03), (("--momentum", "0.9"), 32, 0.017),
                 (("--momentum", "0.9", "--nesterov"), 32, 0.017),
                 (("--optimizer", "adam"), 64, 0.001), (("--batch-size", "64"), 64, 0.24),
                 (("--batch-size", "16", "--momentum", "0.5"), 16, 0.06),
                 (("--weight-decay", "1e-4"), 32, 0.17), (("--dropout", "0.2"), 1, 0.03),
                 (("--momentum", "0.9", "--lr", "0.5"), 32, 0.5),
                 (("--optimizer", "adam", "--batch-size", "4", "--lr", "0.01"), 4, 0.01)]
        for options, batch, rate in cases:
            parser = m.build_parser()
            settings = m.settings_from_args(parser, parser.parse_args(list(options)), {})
            settings.augment = ""
            settings.choose_defaults(13000)       # plain rate 0.03; x sqrt(32) x 0.1 = 0.0170
            self.assertEqual((settings.batch_size, settings.learning_rate), (batch, rate),
                             options)
        small = m.Settings(momentum=0.9, augment="")
        small.choose_defaults(1000)                     # 125 steps an epoch
        self.assertEqual(small.batch_size, 8)


if __name__ == "__main__":
    unittest.main()
