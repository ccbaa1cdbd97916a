"""pretrain.gcs against a real GCS emulator (gcp-storage-emulator) on 127.0.0.1.

The emulator runs the real JSON API: resumable sessions with 308/Range
replies, CRC32C/MD5 computed and checked on finalise, and X-Goog-Hash on
download. It has no IAM, so the permission-denied test uses a 403 server.
"""
import base64
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import google_crc32c
import pytest

from conftest import read_tree
from pretrain import fs
from pretrain.cloud import gcs

pytest.importorskip("gcp_storage_emulator", reason="pip install gcp-storage-emulator (extras dev)")

CHUNK = gcs.CHUNK_QUANTUM  # 256 KiB: the smallest chunk Cloud Storage accepts


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator():
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
         "--port", str(port), "--in-memory", "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("emulator did not start: %s" % proc.stderr.read()[-2000:])
                time.sleep(0.1)
        yield "http://127.0.0.1:%d" % port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def bucket(emulator, monkeypatch):
    """A fresh bucket on the emulator; STORAGE_EMULATOR_HOST points the client at it."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    client = gcs.make_client()
    return client.create_bucket("b-" + uuid.uuid4().hex[:12])


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _remote(bucket, prefix):
    """{name under prefix: bytes} of the objects under gs://bucket/prefix/."""
    return {b.name[len(prefix) + 1:]: b.download_as_bytes()
            for b in bucket.client.list_blobs(bucket.name, prefix=prefix + "/")}


def _records(root, big=5 * CHUNK + 123):
    """A records-like folder: one multi-chunk part, a small part, a manifest, an empty file."""
    rng = os.urandom
    _write(os.path.join(root, "seq128", "part-00000-of-00002.tfrecord.gz"), rng(big))
    _write(os.path.join(root, "seq128", "part-00001-of-00002.tfrecord.gz"), rng(1000))
    _write(os.path.join(root, "seq128", "manifest.json"), json.dumps({"n": 2}).encode())
    _write(os.path.join(root, "seq128", "empty.txt"), b"")
    return read_tree(root)


def test_upload_then_rerun_skips_and_changed_file_is_reuploaded(bucket, tmp_path):
    src = tmp_path / "records"
    local = _records(str(src))
    dst = "gs://%s/data/records" % bucket.name
    kw = dict(chunk_size=CHUNK, state_dir=str(tmp_path / "state"))

    first = gcs.upload_dir(str(src), dst, **kw)
    assert (first.transferred, first.skipped) == (4, 0)
    assert first.bytes == sum(len(v) for v in local.values())
    remote = _remote(bucket, "data/records")
    assert remote == {k.replace(os.sep, "/"): v for k, v in local.items()}
    # The server's CRC32C and MD5 agree with independent local digests.
    for blob in bucket.client.list_blobs(bucket.name, prefix="data/records/"):
        data = remote[blob.name[len("data/records/"):]]
        assert blob.crc32c == base64.b64encode(google_crc32c.Checksum(data).digest()).decode()

    again = gcs.upload_dir(str(src), dst, **kw)
    assert (again.transferred, again.skipped, again.bytes) == (0, 4, 0)

    # Same size, different bytes: only a checksum comparison catches this change.
    small = src / "seq128" / "part-00001-of-00002.tfrecord.gz"
    changed = bytes(b ^ 0xFF for b in small.read_bytes())
    small.write_bytes(changed)
    third = gcs.upload_dir(str(src), dst, **kw)
    assert (third.transferred, third.skipped) == (1, 3)
    assert _remote(bucket, "data/records")["seq128/part-00001-of-00002.tfrecord.gz"] == changed


class _Crash(Exception):
    pass


def _crash_after(n_chunks):
    """A progress callback that 'kills' the upload after n accepted chunks."""
    seen = []

    def progress(name, nbytes):
        seen.append(nbytes)
        if len(seen) >= n_chunks:
            raise _Crash("simulated crash after %d chunks" % len(seen))
    return progress


def test_interrupted_upload_resumes_without_corrupt_object(bucket, tmp_path):
    src = tmp_path / "records"
    local = _records(str(src), big=6 * CHUNK + 7)
    dst = "gs://%s/records" % bucket.name
    state = str(tmp_path / "state")
    big = "seq128/part-00000-of-00002.tfrecord.gz"

    with pytest.raises(gcs.GcsError, match="simulated crash"):
        gcs.upload_dir(str(src), dst, workers=1, chunk_size=CHUNK, state_dir=state,
                       progress=_crash_after(3))
    names = {b.name for b in bucket.client.list_blobs(bucket.name)}
    # The interrupted file has no object at all (not a truncated one), and the manifest
    # waited for the parts, so nothing in the bucket claims a complete dataset.
    assert "records/" + big not in names
    assert "records/seq128/manifest.json" not in names
    assert len(os.listdir(state)) == 1  # the session survives the crash

    resumed = gcs.upload_dir(str(src), dst, chunk_size=CHUNK, state_dir=state)
    # The rerun continued the saved session: the 3 chunks the server held were not resent.
    assert resumed.resumed_bytes == 3 * CHUNK
    assert resumed.transferred + resumed.skipped == 4
    assert _remote(bucket, "records") == {k.replace(os.sep, "/"): v for k, v in local.items()}
    assert os.listdir(state) == []


def test_file_changed_mid_upload_is_refused_then_rerun_uploads_new_bytes(bucket, tmp_path):
    path = tmp_path / "src" / "part.bin"
    _write(str(path), os.urandom(4 * CHUNK))

    def corrupt_after_first_chunk(name, nbytes):
        if nbytes and not getattr(corrupt_after_first_chunk, "done", False):
            corrupt_after_first_chunk.done = True
            with open(path, "r+b") as f:  # same size, new bytes past what was sent
                f.seek(3 * CHUNK)
                f.write(b"changed!")

    dst = "gs://%s/x" % bucket.name
    state = str(tmp_path / "state")
    with pytest.raises(gcs.GcsError, match="refused"):
        gcs.upload_dir(str(path.parent), dst, chunk_size=CHUNK, state_dir=state,
                       progress=corrupt_after_first_chunk)
    assert not bucket.blob("x/part.bin").exists()  # the server's CRC32C check kept it out

    gcs.upload_dir(str(path.parent), dst, chunk_size=CHUNK, state_dir=state)
    assert bucket.blob("x/part.bin").download_as_bytes() == path.read_bytes()


def test_download_round_trip_skip_and_interrupted_download(bucket, tmp_path):
    src = tmp_path / "export"
    local = _records(str(src))
    gcs.upload_dir(str(src), "gs://%s/runs/tiny/export" % bucket.name,
                   chunk_size=CHUNK, state_dir=str(tmp_path / "state"))
    dst = tmp_path / "got"
    uri = "gs://%s/runs/tiny/export/" % bucket.name

    first = gcs.download_dir(uri, str(dst))
    assert first.transferred == 4 and read_tree(str(dst)) == local
    again = gcs.download_dir(uri, str(dst))
    assert (again.transferred, again.skipped) == (0, 4)

    # A damaged local copy of the same size is detected by its checksum and replaced.
    target = dst / "seq128" / "part-00000-of-00002.tfrecord.gz"
    target.write_bytes(b"\0" * target.stat().st_size)
    assert gcs.download_dir(uri, str(dst)).transferred == 1
    assert read_tree(str(dst)) == local

    # Interrupted mid-file: the final name never holds partial bytes, no temp file is left.
    fresh = tmp_path / "fresh"
    with pytest.raises(gcs.GcsError, match="simulated crash"):
        gcs.download_dir(uri, str(fresh), workers=1, progress=_crash_after(2))
    leftovers = read_tree(str(fresh))
    assert not any(k.endswith(gcs.PARTIAL) for k in leftovers)
    assert all(local[k] == v for k, v in leftovers.items())
    assert gcs.download_dir(uri, str(fresh)).transferred == 4 - len(leftovers)
    assert read_tree(str(fresh)) == local

    # A user's folder (a file the objects do not name) is refused before anything is written.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(fs.OutputPathError, match="not empty.*notes.txt"):
        gcs.download_dir(uri, str(mine))
    assert os.listdir(str(mine)) == ["notes.txt"]


def test_preflight_ok_leaves_nothing_and_missing_bucket_fails_clearly(bucket):
    message = gcs.preflight("gs://%s/runs/tiny" % bucket.name)
    assert bucket.name in message and "write, read and delete work" in message
    assert list(bucket.client.list_blobs(bucket.name)) == []  # probe deleted

    with pytest.raises(gcs.GcsError) as err:
        gcs.preflight("gs://no-such-bucket-%s/runs/tiny" % uuid.uuid4().hex[:8])
    assert "does not exist" in str(err.value) and "gs://no-such-bucket-" in str(err.value)
    with pytest.raises(gcs.GcsError, match="does not exist"):
        gcs.upload_dir(os.path.dirname(__file__), "gs://no-such-bucket-x/records")
    with pytest.raises(gcs.GcsError, match="not a gs://"):
        gcs.preflight("/local/path")


class _Forbidden(http.server.BaseHTTPRequestHandler):
    """Answers like Cloud Storage does to an account without object permissions."""

    def _deny(self):
        body = json.dumps({"error": {"code": 403, "message": "ci@example.iam.gserviceaccount.com "
                                     "does not have storage.objects.create access"}}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _deny

    def log_message(self, *args):
        pass


def test_preflight_permission_denied(monkeypatch):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Forbidden)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:%d" % server.server_port)
        with pytest.raises(gcs.GcsError) as err:
            gcs.preflight("gs://locked/runs/tiny")
    finally:
        server.shutdown()
        server.server_close()
    text = str(err.value)
    assert "permission denied on gs://locked" in text and "storage.objects.create" in text


def _cli(args, env):
    return subprocess.run([sys.executable, "-m", "pretrain.gcs"] + args, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli(emulator, bucket, tmp_path):
    env = dict(os.environ, STORAGE_EMULATOR_HOST=emulator)
    _write(str(tmp_path / "r" / "a.bin"), b"abc")
    done = _cli(["upload", "--src", str(tmp_path / "r"), "--dst", "gs://%s/r" % bucket.name,
                 "--state_dir", str(tmp_path / "s")], env)
    assert done.returncode == 0, done.stderr
    assert "uploaded 1 files" in done.stdout

    missing = _cli(["preflight", "--path", "gs://no-such-bucket-cli/runs/tiny"], env)
    assert missing.returncode == 2  # PretrainError: message, exit 2
    assert "gcs preflight failed: bucket gs://no-such-bucket-cli does not exist" in missing.stderr

    # No credentials anywhere: no emulator, no key file, an empty home and gcloud config,
    # and the metadata-server probe disabled (and pointed at a closed local port).
    bare = {k: v for k, v in os.environ.items()
            if k not in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")}
    bare.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
                NO_GCE_CHECK="true", GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9")
    nocred = _cli(["preflight", "--path", "gs://some-bucket/runs/tiny"], bare)
    assert nocred.returncode == 2
    assert "no Google Cloud credentials found" in nocred.stderr

    usage = _cli(["upload"], env)
    assert usage.returncode != 0 and "upload needs --src --dst" in usage.stderr


def test_tpu_fetch_script_downloads_the_export(emulator, bucket, tmp_path):
    export = tmp_path / "run" / "export"
    _write(str(export / "phase1" / "bert_config.json"), b'{"hidden_size": 64}')
    _write(str(export / "phase1" / "bert_model.ckpt.data-00000-of-00001"), os.urandom(3000))
    gcs.upload_dir(str(export), "gs://%s/runs/tiny/export" % bucket.name,
                   state_dir=str(tmp_path / "state"))
    env = dict(os.environ, STORAGE_EMULATOR_HOST=emulator, PROJECT="unused", BUCKET=bucket.name,
               RUN_NAME="tiny", EXPORT_LOCAL=str(tmp_path / "got"), PYTHON=sys.executable)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(["bash", os.path.join(repo, "scripts", "tpu_fetch.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert read_tree(str(tmp_path / "got")) == read_tree(str(export))


_KILL_AFTER_CHUNKS = """
import os, signal, sys
from pretrain.cloud import gcs
chunks = []
def progress(name, nbytes):
    chunks.append(nbytes)
    if len(chunks) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # no exception, no cleanup: the process is gone
gcs.upload_dir(sys.argv[1], sys.argv[2], workers=1, chunk_size=gcs.CHUNK_QUANTUM,
               state_dir=sys.argv[3], progress=progress)
"""


def test_upload_killed_mid_file_resumes_in_a_new_process(emulator, bucket, tmp_path):
    src = tmp_path / "src"
    data = os.urandom(5 * CHUNK + 1)
    _write(str(src / "part.bin"), data)
    dst, state = "gs://%s/r" % bucket.name, str(tmp_path / "state")
    env = dict(os.environ, STORAGE_EMULATOR_HOST=emulator)
    killed = subprocess.run([sys.executable, "-c", _KILL_AFTER_CHUNKS, str(src), dst, state],
                            env=env, capture_output=True, timeout=60)
    assert killed.returncode == -9
    assert not bucket.blob("r/part.bin").exists()

    summary = gcs.upload_dir(str(src), dst, chunk_size=CHUNK, state_dir=state)
    assert summary.resumed_bytes == 2 * CHUNK
    assert bucket.blob("r/part.bin").download_as_bytes() == data


def test_doctor_checks_the_bucket_with_the_current_credentials(emulator, bucket):
    env = dict(os.environ, STORAGE_EMULATOR_HOST=emulator)
    ok = subprocess.run([sys.executable, "-m", "pretrain.doctor", "--gcs",
                         "gs://%s/runs" % bucket.name], env=env, capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "gs://%s/runs is readable and writable" % bucket.name in ok.stdout
    assert list(bucket.list_blobs()) == []  # the probe object is gone again
    missing = subprocess.run([sys.executable, "-m", "pretrain.doctor", "--gcs",
                              "gs://no-such-bucket-%s/x" % uuid.uuid4().hex[:8]], env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1
    assert "gcs:          FAILED:" in missing.stdout and "no-such-bucket" in missing.stdout
