"""How commands start and end (pretrain/cli.py): complete --help, --set on the
command line, exit 2 with `error: ...` for expected errors, a traceback for bugs."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from pretrain import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Runs each command as `python -m NAME --help` would (runpy, __main__), in one
# process so TensorFlow is imported once; the flags a command defined are
# removed before the next one defines its own.
_HELP_ALL = textwrap.dedent("""
    import contextlib, importlib.util, io, json, runpy, sys
    from absl import app, flags
    FLAGS, out = flags.FLAGS, {}
    app.define_help_flags()  # app.run's own, defined on its first call
    for module in sys.argv[1:]:
        before = set(FLAGS)
        sys.argv = [module, "--help"]
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            try:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
                code = "no exit"
            except SystemExit as e:
                code = e.code
        # the command's own flags: those its __main__ defined (absl names that
        # module by its file); a library's import-time flags are not its
        spec = importlib.util.find_spec(module)
        if spec.submodule_search_locations:  # a package: python -m runs its __main__
            spec = importlib.util.find_spec(module + ".__main__")
        path = spec.origin
        own = FLAGS.get_key_flags_for_module(path)
        out[module] = {"code": code, "usage": text.getvalue(),
                       "flags": {f.name: f.help for f in own}}
        for name in set(FLAGS) - before:
            delattr(FLAGS, name)
    print("RESULT " + json.dumps(out))
""")


def test_every_command_has_complete_help():
    modules = cli.commands()
    # today's commands, at least (others join when they end with cli.start)
    assert {"pretrain.run", "pretrain.preprocess", "pretrain.finetune",
            "pretrain.doctor"} <= set(modules), modules
    done = subprocess.run([sys.executable, "-c", _HELP_ALL] + modules, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    for module in modules:
        got = result[module]
        assert got["code"] == 0, (module, got["code"], got["usage"][-500:])
        assert got["flags"], module
        for name, text in got["flags"].items():
            assert text and len(text.split()) >= 2, (module, name, text)
            assert ("--%s:" % name in got["usage"] or "--[no]%s:" % name in got["usage"]), (
                module, name)
    assert "--set:" in result["pretrain.run"]["usage"]
    assert "--set:" in result["pretrain.preprocess"]["usage"]


def _run(args, timeout=300):
    return subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=ROOT))


def _error_line(done):
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [l for l in done.stderr.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


def test_run_py_as_a_script_and_as_a_module():
    # the README's entry point runs from any directory; both forms parse the same flags
    for args in (["pretrain/run.py"], ["-m", "pretrain.run"]):
        done = _run(args + ["--help"])
        assert done.returncode == 0, done.stderr[-2000:]
        assert "--set: Override one config value" in done.stdout
        assert "--config: Config name" in done.stdout
    bad = _run(["pretrain/run.py", "--config", "roberta_tiny.json", "--smoke", "--set",
                "train.batch_size=0"])
    assert bad.returncode == 2
    assert _error_line(bad) == ("error: %s with --set train.batch_size=0: train.batch_size "
                                "must be an integer >= 1, got 0"
                                % os.path.join(ROOT, "configs", "roberta_tiny.json"))
    bad = _run(["-m", "pretrain.run", "--config", "roberta_tiny", "--set", "train.phases.2.steps=1"])
    assert bad.returncode == 2
    assert _error_line(bad) == ("error: --set train.phases.2.steps=1: train.phases has no "
                                "item 2 (it has 2)")


@pytest.mark.parametrize("item,message", [
    ("train.batch_size=true", "train.batch_size must be an integer >= 1, got true"),
    ("train.phases.0.learning_rate=abc",
     'train.phases[0].learning_rate must be a number > 0, got "abc"'),
])
def test_a_set_value_of_the_wrong_type_stops_the_run_before_it_writes(tmp_path, item, message):
    out = tmp_path / "out"
    done = _run(["pretrain/run.py", "--config", "roberta_tiny.json", "--smoke", "--set", item,
                 "--output", str(out)])
    assert done.returncode == 2, done.stderr[-2000:]
    assert _error_line(done) == "error: %s with --set %s: %s" % (
        os.path.join(ROOT, "configs", "roberta_tiny.json"), item, message)
    assert not out.exists()


def test_preprocess_bad_set_and_bad_input_exit_2_with_the_message(tmp_path):
    sample = os.path.join(ROOT, "data", "sample", "clue_small.txt")
    common = ["-m", "pretrain.preprocess", "--config", "roberta_tiny", "--workers", "1",
              "--noprogress"]
    bad = _run(common + ["--input", sample, "--output", str(tmp_path / "a"),
                         "--set", "data.dupe_factr=2"])
    assert bad.returncode == 2
    assert "unknown key data.dupe_factr" in _error_line(bad)
    # bad input that other modules raise as FileNotFoundError: still a message
    missing = _run(common + ["--input", str(tmp_path / "none*.txt"), "--output",
                             str(tmp_path / "b")])
    assert missing.returncode == 2
    assert "matches no file" in _error_line(missing)
    extra = _run(common + ["count", "--input", sample, "--output", str(tmp_path / "c")])
    assert extra.returncode == 2
    assert _error_line(extra).startswith("error: unexpected arguments: count (usage: ")
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "c")


_TOY = textwrap.dedent("""
    import sys
    from pretrain import cli
    from pretrain.errors import PretrainError

    class Stopped(PretrainError):
        exit_code = 130

    def main(argv):
        kind = argv[1]
        if kind == "expected":
            raise PretrainError("--x 3: expected an even number")
        if kind == "stopped":
            raise Stopped("stopped at step 7; rerun to resume")
        if kind == "status":
            return 3
        if kind == "bug":
            return {}["missing"]

    cli.start(main)
""")


@pytest.mark.parametrize("kind,code", [("expected", 2), ("stopped", 130), ("status", 3),
                                       ("ok", 0), ("bug", 1)])
def test_how_a_command_ends(kind, code):
    """An expected error: its message and its exit code, no traceback; a bug keeps its
    traceback; main's return value is the exit status."""
    done = _run(["-c", _TOY, kind], timeout=60)
    assert done.returncode == code, done.stderr
    if kind == "bug":
        assert "Traceback (most recent call last)" in done.stderr
        assert "KeyError: 'missing'" in done.stderr
    elif kind in ("expected", "stopped"):
        assert _error_line(done) == ("error: --x 3: expected an even number" if kind ==
                                     "expected" else "error: stopped at step 7; rerun to resume")
    else:
        assert done.stderr == ""
