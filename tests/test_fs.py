"""pretrain.fs on local paths and on a tf.io.gfile URL.

tf.io.gfile's gs:// cannot be pointed at the GCS emulator of test_gcs.py
(TF 2.21 has the googleapis.com endpoint built in, with no override), so the
remote branch runs on `ram://`, TF's in-memory filesystem: the same gfile
calls a gs:// path makes.
"""
import os
import subprocess
import sys
import uuid

import pytest

from pretrain import fs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=["local", "ram"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return "ram://fs-test-%s/root" % uuid.uuid4().hex


def test_files_and_directories(root):
    sub = fs.join(root, "a", "b")
    fs.makedirs(sub)
    fs.makedirs(sub)  # exists already: fine
    assert fs.isdir(sub) and fs.exists(sub)
    text = fs.join(sub, "t.txt")
    with fs.open(text, "w") as f:
        f.write("中文\n")
    with fs.open(text) as f:
        assert f.read() == "中文\n"
    with fs.open(text, "rb") as f:
        assert f.read() == "中文\n".encode("utf-8")
    assert fs.size(text) == len("中文\n".encode("utf-8"))
    assert not fs.isdir(text)

    fs.copy(text, fs.join(root, "c.txt"))
    fs.copy(text, fs.join(root, "c.txt"))  # replaces
    fs.rename(fs.join(root, "c.txt"), fs.join(root, "d.txt"))
    assert not fs.exists(fs.join(root, "c.txt"))
    assert sorted(fs.listdir(root)) == ["a", "d.txt"]
    assert sorted(fs.glob(fs.join(root, "*.txt"))) == [fs.join(root, "d.txt")]
    assert sorted(fs.walk_files(root)) == sorted([text, fs.join(root, "d.txt")])

    fs.remove(fs.join(root, "d.txt"))
    fs.remove(fs.join(root, "d.txt"), missing_ok=True)
    assert not fs.exists(fs.join(root, "d.txt"))
    fs.rmtree(fs.join(root, "a"))
    assert fs.listdir(root) == []


def test_remove_of_a_missing_file_fails_unless_allowed(root):
    fs.makedirs(root)
    with pytest.raises(Exception):
        fs.remove(fs.join(root, "nothing"))


def test_copy_between_local_and_remote(tmp_path):
    local = str(tmp_path / "x.bin")
    with open(local, "wb") as f:
        f.write(b"\x00\x01abc")
    remote = "ram://fs-test-%s/x.bin" % uuid.uuid4().hex
    fs.copy(local, remote)
    fs.copy(remote, str(tmp_path / "y.bin"))
    with open(str(tmp_path / "y.bin"), "rb") as f:
        assert f.read() == b"\x00\x01abc"


def test_output_dir_check(tmp_path):
    fs.check_output_dir(str(tmp_path / "new" / "dir"))  # creatable
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(fs.OutputPathError, match="is a file, not a directory"):
        fs.check_output_dir(str(blocker / "sub"), flag="--output")


def test_local_paths_never_import_tensorflow(tmp_path):
    code = ("import sys\nfrom pretrain import fs\n"
            "d = fs.join(%r, 'd')\nfs.makedirs(d)\n"
            "with fs.open(fs.join(d, 'f'), 'w') as f: f.write('x')\n"
            "assert fs.exists(fs.join(d, 'f')) and fs.listdir(d) == ['f']\n"
            "fs.rmtree(d)\nassert 'tensorflow' not in sys.modules\n" % str(tmp_path))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env=dict(os.environ, PYTHONPATH=REPO))
