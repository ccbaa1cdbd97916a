"""A full or read-only output disk, for real: a small tmpfs (mounted here when
the container lets us; else the test is skipped saying why). Each command
must end in one `error:` line naming the path and the cause, exit 2, and
leave no temporary file behind; the next start removes a killed run's."""
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from conftest import REPO_ROOT

SAMPLE = os.path.join(REPO_ROOT, "data", "sample", "clue_small.txt")


def _mount(path, size, read_only=False):
    os.makedirs(path)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", path],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip("cannot mount a tmpfs here (%s): a full disk needs one"
                    % (done.stderr.strip() or "mount exit %d" % done.returncode))
    if read_only:
        subprocess.run(["mount", "-o", "remount,ro", path], check=True)


@pytest.fixture
def small_disk():
    """mount(size, read_only=False) -> a fresh tmpfs dir of that size."""
    mounted = []

    def mount(size, read_only=False):
        path = os.path.join("/tmp", "pretrain-disk-test-" + uuid.uuid4().hex[:8])
        _mount(path, size, read_only)
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", path], check=False)
        shutil.rmtree(path, ignore_errors=True)


def _command(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run([sys.executable] + list(args), cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _one_error_line(done, path):
    """The command's single `error:` line; it names `path`."""
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-4000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-4000:]
    assert path in errors[0], errors[0]
    return errors[0]


def _temporaries(root):
    return sorted(os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files
                  if n.endswith(".tmp") or n.endswith("_temp"))


def _run(output, *extra):
    return _command("pretrain/run.py", "--config", "roberta_tiny", "--smoke", "--output", output,
                    *extra)


def test_a_read_only_output_fails_before_the_model_is_built(small_disk):
    output = os.path.join(small_disk("1m", read_only=True), "run")
    line = _one_error_line(_run(output), output)
    assert "read-only" in line


def test_too_little_space_is_refused_at_start_with_both_figures(small_disk):
    output = os.path.join(small_disk("30m"), "run")
    done = _run(output)
    line = _one_error_line(done, output)
    assert "--skip_space_check" in line and "free" in line and "needs" in line, line
    assert not os.path.exists(os.path.join(output, "checkpoints"))


def test_a_disk_that_fills_at_a_checkpoint_ends_in_one_line_and_no_partial_save(small_disk):
    disk = small_disk("30m")
    output = os.path.join(disk, "run")
    done = _run(output, "--skip_space_check", "--set", "train.save_every=2")
    line = _one_error_line(done, output)
    assert "no space left" in line, line
    assert _temporaries(disk) == []


def test_a_killed_runs_partial_checkpoints_are_removed_at_the_next_start(small_disk):
    """The leftovers of a save cut short (ckpt-N_temp) go, before the free space is
    measured; files whose names are not the trainer's temporaries stay."""
    disk = small_disk("30m")
    output = os.path.join(disk, "run")
    phase = os.path.join(output, "checkpoints", "phase1_seq128")
    partial = os.path.join(phase, "ckpt-10_temp")
    os.makedirs(partial)
    with open(os.path.join(partial, "part-00000-of-00001.data-00000-of-00001"), "wb") as f:
        f.write(b"\0" * (20 << 20))  # most of the disk
    kept = [os.path.join(phase, "notes_temp"), os.path.join(phase, "ckpt-x_temp"),
            os.path.join(output, "ckpt-3_temp")]
    for path in kept:
        os.makedirs(path)
    line = _one_error_line(_run(output), output)
    assert "--skip_space_check" in line
    assert not os.path.exists(partial)
    assert all(os.path.isdir(p) for p in kept)


def _preprocess(output, *extra):
    return _command("-m", "pretrain.preprocess", "--config", "roberta_tiny", "--input", SAMPLE,
                    "--output", output, "--seq_lens", "128", "--workers", "1",
                    "--noprogress", "--shard_mb", "0.5", *extra)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_preprocessing_onto_a_full_disk_ends_in_one_line_and_no_tmp(small_disk, workers):
    disk = small_disk("200k")
    output = os.path.join(disk, "records")
    line = _one_error_line(_preprocess(output, "--workers", workers), output)
    assert "no space left" in line, line
    assert _temporaries(disk) == []


def test_preprocessing_removes_its_own_leftover_tmp_files_only(tmp_path):
    """Temporaries a rerun would not write again (a length not asked for now, a
    chunk past the end) are removed too; other names stay."""
    output = str(tmp_path / "records")
    seq, state = os.path.join(output, "seq512"), os.path.join(output, ".preprocess")
    os.makedirs(seq)
    os.makedirs(state)
    leftovers = [os.path.join(seq, "part-00001-of-00009.tfrecord.gz.tmp"),
                 os.path.join(seq, "eval-00000-of-00009.tfrecord.tmp"),
                 os.path.join(seq, "manifest.json.tmp"),
                 os.path.join(state, "chunk-00007.json.tmp")]
    kept = [os.path.join(seq, "notes.tmp"), os.path.join(seq, "part-1.tfrecord.gz.tmp"),
            os.path.join(state, "chunk-x.json.tmp")]
    for path in leftovers + kept:
        with open(path, "wb") as f:
            f.write(b"partial")
    done = _preprocess(output)
    assert done.returncode == 0, done.stderr[-4000:]
    assert [p for p in leftovers if os.path.exists(p)] == []
    assert all(os.path.exists(p) for p in kept)


def _file_size_limit(limit):
    """preexec_fn: writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored,
    which exec keeps), as on a quota: no mount needed."""
    import resource
    import signal

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_file_size_limit_during_preprocessing_ends_in_one_line(tmp_path):
    output = str(tmp_path / "records")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "pretrain.preprocess", "--config", "roberta_tiny", "--input",
         SAMPLE, "--output", output, "--seq_lens", "128", "--workers", "1", "--noprogress"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
        preexec_fn=_file_size_limit(64 << 10))
    line = _one_error_line(done, output)
    assert "file too large" in line, line
    assert _temporaries(output) == []


@pytest.mark.parametrize("name", ["roberta_tiny", "t5s_tiny", "simbert_tiny"])
def test_the_start_up_estimate_counts_the_parameters_the_trainer_saves(name):
    """Against the model bert4keras builds: within 1%."""
    from pretrain.config import load_config
    from pretrain.models import build
    from pretrain.training import disk
    cfg = load_config(name)
    built = build.build_model(cfg, check_vocab=False).encoder.count_params()
    assert abs(disk.estimated_params(cfg) - built) < 0.01 * built


def test_only_refused_writes_under_the_output_become_its_error(tmp_path):
    """A file the run may not read (its data) is not the output's fault; a
    refused write under the output is, and the message says where and why."""
    import errno
    from pretrain import fs
    out = str(tmp_path / "run")
    denied = PermissionError(errno.EACCES, "Permission denied", "/data/part-00000")
    assert fs.refused_write(denied, out) is None
    assert fs.refused_write(FileNotFoundError(errno.ENOENT, "No such file", out), out) is None
    under = PermissionError(errno.EACCES, "Permission denied", os.path.join(out, "run.json"))
    assert str(fs.refused_write(under, out)) == (
        "--output %s: permission denied (at %s/run.json); choose a writable --output"
        % (out, out))
    full = str(fs.refused_write(OSError(errno.ENOSPC, "No space left on device"), out,
                                needed=5e6))
    assert full.startswith("--output %s: no space left on device (needs about 5.0 MB, " % out)
    assert full.endswith(" MB free); free some space or choose another --output")
