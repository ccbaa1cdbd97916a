"""Every command, run as a real process: a bad command line, a missing file or
a bad config ends in exactly one `error: ...` line on stderr and exit 2, and
neither that nor `--help` imports TensorFlow."""
import json
import os
import subprocess
import sys

import pytest

from pretrain import cli
from test_imports import _HOOK

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = cli.commands()
SAMPLE = os.path.join(ROOT, "data", "sample", "clue_small.txt")

# Bad invocations beyond the ones every command gets (an unknown flag, a stray
# argument): a missing required flag, a bad value, a missing file, a bad
# config. {BAD} is a config file with a mistake, {TMP} a fresh directory.
CASES = {
    "pretrain.run": [
        (["--smoke"], "--config must have a value"),
        (["--config", "roberta_tiny", "--steps_per_loop", "many"], "--steps_per_loop=many"),
        (["--config", "roberta_tiny", "--precision", "fp8"], "--precision=fp8"),
        (["--config", "roberta_tiny", "--data", "{TMP}/none", "--output", "{TMP}/o"],
         "--data {TMP}/none: no such"),
        (["--config", "roberta_tiny", "--data", "{TMP}", "--output", "{TMP}/o",
          "--init_checkpoint", "{TMP}/ckpt-9"], "--init_checkpoint {TMP}/ckpt-9: no such"),
        (["--config", "{BAD}", "--smoke"], "{BAD}: model.type must be one of"),
        (["--config", "roberta_tiny", "--smoke", "--phase", "7"], "--phase '7'"),
        (["--config", "roberta_tiny", "--smoke", "--steps", "0"], "--steps=0"),
        (["--config", "roberta_tiny", "--smoke", "--steps", "1"],
         "--steps 1: config roberta_tiny has 2 phases"),
        (["--config", "roberta_tiny", "--smoke", "--set", "data.seq_lens=[128]"],
         "data.seq_lens and data.max_predictions"),
        (["--config", "roberta_tiny", "--smoke", "--set", "train.phases.0.learning_rate=true",
          "--output", "{TMP}/o"], "train.phases[0].learning_rate must be a number > 0, got true"),
    ],
    "pretrain.preprocess": [
        (["--config", "roberta_tiny", "--input", SAMPLE], "--output are required"),
        (["--config", "roberta_tiny", "--input", SAMPLE, "--output", "{TMP}/r",
          "--workers", "two"], "--workers=two"),
        (["--config", "roberta_tiny", "--input", "{TMP}/none*.txt", "--output", "{TMP}/r",
          "--noprogress"], "matches no file"),
        (["--config", "{BAD}", "--input", SAMPLE, "--output", "{TMP}/r"], "{BAD}: model.type"),
        (["--config", "roberta_tiny", "--input", SAMPLE, "--output", "{TMP}/r",
          "--set", "data.dupe_factr=2"], "unknown key data.dupe_factr"),
        (["--config", "roberta_tiny", "--input", SAMPLE, "--output", "{TMP}/r",
          "--set", 'data.masked_lm_prob="0.15"'], 'data.masked_lm_prob must be a number in (0, 1)'),
    ],
    "pretrain.export": [
        (["--config", "roberta_tiny"], "--output must have a value"),
        (["--config", "roberta_tiny", "--output", "{TMP}/e", "--format", "tflite"],
         "--format=tflite"),
        (["--config", "roberta_tiny", "--output", "{TMP}/e", "--checkpoint", "{TMP}/ckpt-3"],
         "--checkpoint {TMP}/ckpt-3: no such checkpoint"),
        (["--config", "{BAD}", "--output", "{TMP}/e"], "{BAD}: model.type"),
        (["--config", "{TMP}/none.json", "--output", "{TMP}/e"], "not found"),
    ],
    "pretrain.finetune": [
        (["--model", "{TMP}", "--task", "pair", "--train", SAMPLE, "--output", "{TMP}/f"],
         "--dev must have a value"),
        (["--model", "{TMP}", "--task", "regression", "--train", SAMPLE, "--dev", SAMPLE,
          "--output", "{TMP}/f"], "--task=regression"),
        (["--model", "{TMP}", "--task", "pair", "--train", SAMPLE, "--dev", SAMPLE,
          "--output", "{TMP}/f", "--epochs", "1.5"], "--epochs=1.5"),
        (["--model", "{TMP}", "--task", "pair", "--train", SAMPLE, "--dev", "{TMP}/dev.tsv",
          "--output", "{TMP}/f"], "--dev {TMP}/dev.tsv: no such file"),
        (["--model", "{TMP}/none", "--task", "pair", "--train", SAMPLE, "--dev", SAMPLE,
          "--output", "{TMP}/f"], "--model {TMP}/none: no such export dir"),
    ],
    "pretrain.simbert": [
        (["encode", "--text", "你好"], "--model EXPORT_DIR is required"),
        (["search", "--model", "{TMP}", "--text", "你好"], "search needs --corpus"),
        (["eval", "--model", "{TMP}", "--groups_split", "dev"], "--groups_split=dev"),
        (["encode", "--model", "{TMP}/none"], "--model {TMP}/none: no such export dir"),
        (["search", "--model", "{TMP}", "--corpus", "{TMP}/c.txt"],
         "--corpus {TMP}/c.txt: no such file"),
        (["encode", "--model", "{TMP}", "--config", "{BAD}"], "{BAD}: model.type"),
    ],
    "pretrain.gcs": [
        (["upload", "--dst", "gs://bucket/x"], "upload needs --src"),
        (["upload", "--src", "{TMP}", "--dst", "gs://bucket/x", "--workers", "all"],
         "--workers=all"),
        (["upload", "--src", "{TMP}/none", "--dst", "gs://bucket/x"],
         "no such local folder: {TMP}/none"),
    ],
    "pretrain.doctor": [
        (["--detect=maybe"], "--detect"),
    ],
    "pretrain.model_summary": [
        (["--json"], "--config must have a value"),
        (["--config", "roberta_tiny", "--vocab_size", "big"], "--vocab_size=big"),
        (["--config", "{TMP}/none.json"], "not found"),
        (["--config", "{BAD}"], "{BAD}: model.type"),
    ],
}
# What every command is given, its own cases or not (a stray argument may be
# reported after a missing required flag: any message).
COMMON = [(["--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
          (["no_such_argument"], "")]


def _probe_env(tmp_path):
    """PYTHONPATH with a site hook that leaves tf-PID.txt in `probe` when TF is imported."""
    probe, hook = tmp_path / "probe", tmp_path / "hook"
    probe.mkdir()
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_HOOK)
    return probe, dict(os.environ, IMPORT_PROBE_DIR=str(probe),
                       PYTHONPATH=os.pathsep.join([str(hook), ROOT]))


def _run(module, args, tmp_path):
    probe, env = _probe_env(tmp_path)
    done = subprocess.run([sys.executable, "-m", module] + args, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    tf = [p.read_text() for p in probe.glob("tf-*.txt")]
    return done, tf


def _bad_config(tmp_path):
    with open(os.path.join(ROOT, "configs", "roberta_tiny.json"), encoding="utf-8") as f:
        raw = json.load(f)
    raw["model"]["type"] = "gpt"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    return str(path)


def test_every_command_has_its_cases():
    # a new command gets the common cases; its own join the table
    assert {"pretrain.run", "pretrain.preprocess", "pretrain.export", "pretrain.finetune",
            "pretrain.simbert", "pretrain.gcs", "pretrain.doctor",
            "pretrain.model_summary"} <= set(COMMANDS)
    assert set(CASES) <= set(COMMANDS)


@pytest.mark.parametrize("module,args,expected",
                         [(m, a, e) for m in COMMANDS for a, e in COMMON + CASES.get(m, [])])
def test_a_bad_invocation_is_one_error_line_and_exit_2(tmp_path, module, args, expected):
    tmp = tmp_path / "work"
    tmp.mkdir()
    fill = {"{TMP}": str(tmp), "{BAD}": _bad_config(tmp_path)}

    def sub(text):
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    done, tf = _run(module, [sub(a) for a in args], tmp_path)
    lines = done.stderr.splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    assert sub(expected) in lines[0], lines[0]
    assert "Traceback" not in done.stderr and done.stdout == "", done.stdout[-2000:]
    assert not tf, "TensorFlow imported before the error:\n" + tf[0][-3000:]
    assert not os.listdir(tmp), "a failed command left files: %s" % os.listdir(tmp)


@pytest.mark.parametrize("module", COMMANDS)
def test_help_imports_no_tensorflow(tmp_path, module):
    done, tf = _run(module, ["--help"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--" in done.stdout and done.stderr == "", done.stderr[-3000:]
    assert not tf, "--help imported TensorFlow:\n" + tf[0][-3000:]


def test_the_heldout_fraction_flag_and_its_old_name(tmp_path):
    corpus = tmp_path / "docs.txt"
    with open(SAMPLE, encoding="utf-8") as f:
        corpus.write_text("".join(f.readlines()[:60]), encoding="utf-8")
    common = ["--config", "roberta_tiny", "--input", str(corpus), "--seq_lens", "128",
              "--workers", "1", "--noprogress", "--masking", "dynamic"]
    both, tf = _run("pretrain.preprocess", common + ["--output", str(tmp_path / "a"),
                                                     "--eval_fraction", "0.2",
                                                     "--heldout_fraction", "0.2"], tmp_path)
    assert both.returncode == 2 and both.stderr.splitlines() == [
        "error: --eval_fraction and --heldout_fraction are the same setting; give "
        "--heldout_fraction only"], both.stderr
    runs = {}
    for flag in ("--eval_fraction", "--heldout_fraction"):
        out = tmp_path / flag.strip("-")
        done = subprocess.run([sys.executable, "-m", "pretrain.preprocess"] + common + [
            "--output", str(out), flag, "0.3"], cwd=ROOT, capture_output=True, text=True,
            timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
        assert done.returncode == 0, done.stderr[-3000:]
        notes = [l for l in done.stderr.splitlines() if "deprecated" in l]
        assert notes == (["warning: --eval_fraction is deprecated; use --heldout_fraction "
                          "(same meaning)"] if flag == "--eval_fraction" else []), notes
        with open(out / "seq128" / "manifest.json", encoding="utf-8") as f:
            runs[flag] = json.load(f)
    assert runs["--eval_fraction"]["eval_fraction"] == 0.3
    assert runs["--eval_fraction"]["eval"] == runs["--heldout_fraction"]["eval"]
