"""Move records and exports between a local folder and Cloud Storage; check a bucket first.

The trainer reads and writes gs:// itself through tf.io.gfile. This module is
the google-cloud-storage side of the work around a run:

- `upload_dir`: a local folder (records/) to gs://bucket/prefix. Files go up
  in parallel. A file is skipped when the remote object has the same size and
  CRC32C. Each file is sent in chunks through a resumable session. The session
  URL is kept in a small local state file, so a rerun after a crash or Ctrl-C
  carries on from the bytes Cloud Storage already holds. An object appears
  only when its last chunk is accepted. The server first checks the CRC32C we
  declared when the session opened. So an interrupted or changed file never
  leaves a partial or corrupt object. `manifest.json` files go up last, so a
  manifest in the bucket means the parts it lists are there too.
- `download_dir`: a gs:// folder (an export) to a local folder. Each file is
  written under a temporary name and renamed only once its CRC32C matches.
- `preflight`: writes, reads back and deletes a small probe object. If
  anything fails it stops at once, with a message that names the bucket and
  the cause.

The client honours STORAGE_EMULATOR_HOST; the tests use a local emulator.

    python -m pretrain.gcs upload --src records/ --dst gs://B/records
    python -m pretrain.gcs download --src gs://B/runs/tiny/export --dst ./export
    python -m pretrain.gcs preflight --path gs://B/runs/tiny
"""
import base64
import concurrent.futures
import dataclasses
import os
import posixpath
import socket
import threading
import time
import uuid

import google_crc32c
import requests
from absl import flags, logging
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud import storage

from pretrain import fs
from pretrain.cloud import resumable as gcs_resumable
from pretrain.errors import PretrainError, UsageError

MANIFEST = "manifest.json"
PARTIAL = ".partial"  # suffix of a download in progress; never uploaded
CHUNK_QUANTUM = 256 * 1024  # Cloud Storage requires chunks in multiples of this
DEFAULT_CHUNK_SIZE = 32 * 1024 * 1024
DEFAULT_STATE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "pretrain", "gcs-sessions")
_stop = threading.Event()  # set on Ctrl-C so worker threads stop at their next chunk


class GcsError(PretrainError):
    """A transfer or check failed; the message names the bucket or object and the cause."""


@dataclasses.dataclass
class Summary:
    """What one upload_dir/download_dir call did."""
    verb: str
    transferred: int = 0
    skipped: int = 0
    bytes: int = 0  # bytes of the transferred files
    resumed_bytes: int = 0  # bytes an interrupted session had already stored
    seconds: float = 0.0

    def __str__(self):
        rate = self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0
        text = "%s %d files (%.1f MB), skipped %d unchanged, in %.1f s (%.1f MB/s)" % (
            self.verb, self.transferred, self.bytes / 1e6, self.skipped, self.seconds, rate)
        if self.resumed_bytes:
            text += "; resumed %.1f MB sent before an interruption" % (self.resumed_bytes / 1e6)
        return text


def split_gs(uri):
    """'gs://bucket/a/b/' -> ('bucket', 'a/b')."""
    if not uri.startswith("gs://") or not uri[5:].split("/")[0]:
        raise GcsError("not a gs://bucket/path URI: %r" % uri)
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def make_client():
    """A storage client from Application Default Credentials (anonymous on an emulator)."""
    try:
        # project=None: object operations need no project, and a user's ADC may not name one.
        return storage.Client(project=None)
    except auth_exceptions.DefaultCredentialsError as e:
        raise GcsError(_NO_CREDENTIALS % e) from None


_NO_CREDENTIALS = (
    "no Google Cloud credentials found (%s). On a workstation run "
    "`gcloud auth application-default login`; on Colab run "
    "`from google.colab import auth; auth.authenticate_user()`; or set "
    "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file. On a TPU VM the VM's "
    "service account is used: create the VM with the cloud-platform scope.")


def _explain(exc, bucket, doing):
    """Turn a client exception into a GcsError that says what failed, where, and what to do."""
    where = "gs://%s" % bucket
    if isinstance(exc, GcsError):
        return exc
    if isinstance(exc, api_exceptions.NotFound):
        return GcsError("bucket %s does not exist (%s failed: %s). Create it in the TPU's region: "
                        "`gcloud storage buckets create %s --location=REGION`"
                        % (where, doing, exc.message, where))
    if isinstance(exc, api_exceptions.Forbidden):
        return GcsError("permission denied on %s (%s failed: %s). The account running this needs "
                        "roles/storage.objectUser (create, read, delete objects) on the bucket"
                        % (where, doing, exc.message))
    if isinstance(exc, api_exceptions.Unauthorized):
        return GcsError("credentials rejected by Cloud Storage for %s (%s failed: %s)"
                        % (where, doing, exc.message))
    if isinstance(exc, auth_exceptions.DefaultCredentialsError):
        return GcsError(_NO_CREDENTIALS % exc)
    if isinstance(exc, auth_exceptions.GoogleAuthError):
        return GcsError("could not get an access token for %s (%s failed: %s). Refresh your login "
                        "(`gcloud auth application-default login`) or check the VM's service "
                        "account and scopes" % (where, doing, exc))
    if isinstance(exc, requests.exceptions.RequestException):
        return GcsError("cannot reach Cloud Storage for %s (%s failed: %s)" % (where, doing, exc))
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return GcsError("%s: %s failed: %s" % (where, doing, exc))
    return None  # not a storage problem: let it propagate as is


def file_crc32c(path):
    """Base64 big-endian CRC32C of a file, as Cloud Storage reports it."""
    crc = google_crc32c.Checksum()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 << 20), b""):
            crc.update(block)
    return base64.b64encode(crc.digest()).decode("ascii")


def _list_objects(client, bucket, prefix):
    """{name relative to prefix: Blob} for every object under gs://bucket/prefix/."""
    start = prefix + "/" if prefix else ""
    try:
        blobs = list(client.list_blobs(bucket, prefix=start or None))
    except Exception as e:
        raise _explain(e, bucket, "listing gs://%s/%s" % (bucket, start)) or e
    return {b.name[len(start):]: b for b in blobs if not b.name.endswith("/")}


def _local_files(root):
    """Sorted relative POSIX paths of the files under root."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if not name.endswith(PARTIAL):
                out.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(out)


def _run_parallel(job, items, workers, summary):
    """Run job(item) -> (transferred, nbytes, resumed) on a thread pool; collect failures."""
    failures = []
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        futures = {pool.submit(job, item): item for item in items}
        try:
            for future in concurrent.futures.as_completed(futures):
                try:
                    transferred, nbytes, resumed = future.result()
                except Exception as e:  # one bad file must not stop the others
                    failures.append("%s: %s" % (futures[future], e))
                    continue
                if transferred:
                    summary.transferred += 1
                    summary.bytes += nbytes
                    summary.resumed_bytes += resumed
                else:
                    summary.skipped += 1
        except KeyboardInterrupt:
            _stop.set()  # running uploads stop after their current chunk; their sessions persist
            raise
    return failures


def _raise_failures(failures, total, verb):
    if failures:
        raise GcsError("%d of %d %s failed; rerun the same command to finish (files already done "
                       "are skipped):\n  %s" % (len(failures), total, verb, "\n  ".join(failures)))


# ---------------------------------------------------------------- upload

def _send(*args):
    try:
        return gcs_resumable.send(*args, stop=_stop)
    except gcs_resumable.GaveUp as e:
        raise GcsError(str(e)) from None


def upload_file(bucket, path, name, chunk_size=DEFAULT_CHUNK_SIZE, state_dir=None,
                progress=None, crc32c=None):
    """Upload one file to `bucket` (a storage.Bucket) as `name`, resuming a saved session.

    Returns the number of bytes a resumed session had already stored (0 for a
    fresh upload). Raises GcsError if the server rejects the data.
    """
    size = os.path.getsize(path)
    crc32c = crc32c or file_crc32c(path)
    uri = "gs://%s/%s" % (bucket.name, name)
    # A session is only valid for the very bytes it started with.
    identity = {"uri": uri, "size": size, "mtime_ns": os.stat(path).st_mtime_ns, "crc32c": crc32c}
    state = gcs_resumable.state_path(state_dir or DEFAULT_STATE_DIR, uri)
    obj, resumed = None, 0
    with open(path, "rb") as f:
        url = gcs_resumable.load_session(state, identity)
        if url:
            try:
                obj, resumed = _send(url, f, size, None, chunk_size, name, progress)
            except gcs_resumable.Rejected as e:  # expired (after a week) or refused: start again
                logging.info("cannot resume the upload of %s (%s); starting again", uri, e)
                url = None
        if url is None:
            blob = bucket.blob(name)
            # Declared up front, checked by the server before the object is created.
            blob.crc32c = crc32c
            try:
                url = blob.create_resumable_upload_session(size=size,
                                                           timeout=gcs_resumable.TIMEOUT)
            except Exception as e:
                raise _explain(e, bucket.name, "starting the upload of %s" % uri) or e
            if size > chunk_size:  # only multi-chunk files are worth resuming
                gcs_resumable.save_session(state, identity, url)
            try:
                obj, resumed = _send(url, f, size, 0, chunk_size, name, progress)
            except gcs_resumable.Rejected as e:
                gcs_resumable.forget(state)
                raise GcsError("Cloud Storage refused %s (%s); if the file changed while it was "
                               "being sent, rerun" % (uri, e)) from None
    gcs_resumable.forget(state)
    if str(obj.get("size")) != str(size) or obj.get("crc32c") != crc32c:
        # The server did not check our declared CRC32C (an emulator or a proxy may not): do it here.
        bucket.blob(name).delete()
        raise GcsError("%s arrived corrupt (size %s crc32c %s, expected %d %s); deleted it"
                       % (uri, obj.get("size"), obj.get("crc32c"), size, crc32c))
    return resumed


def upload_dir(src, dst, workers=8, chunk_size=DEFAULT_CHUNK_SIZE, state_dir=None,
               client=None, progress=None):
    """Upload every file under local `src` to gs:// `dst`, skipping unchanged ones.

    `progress(name, nbytes)` is called after each accepted chunk. Returns a Summary;
    raises GcsError listing the files that failed (a rerun finishes them).
    """
    if chunk_size <= 0 or chunk_size % CHUNK_QUANTUM:
        raise GcsError("chunk size must be a positive multiple of 256 KiB, got %d" % chunk_size)
    if not os.path.isdir(src):
        raise GcsError("no such local folder: %s" % src)
    bucket_name, prefix = split_gs(dst)
    client = client or make_client()
    bucket = client.bucket(bucket_name)
    remote = _list_objects(client, bucket_name, prefix)
    summary = Summary("uploaded")
    started = time.time()
    _stop.clear()

    def job(rel):
        path = os.path.join(src, rel)
        size = os.path.getsize(path)
        crc = file_crc32c(path)
        old = remote.get(rel)
        if old is not None and old.size == size and old.crc32c == crc:
            return False, size, 0
        resumed = upload_file(bucket, path, posixpath.join(prefix, rel), chunk_size,
                              state_dir, progress, crc)
        logging.info("uploaded %s (%.1f MB)", rel, size / 1e6)
        return True, size, resumed

    files = _local_files(src)
    parts = [f for f in files if posixpath.basename(f) != MANIFEST]
    manifests = [f for f in files if posixpath.basename(f) == MANIFEST]
    _raise_failures(_run_parallel(job, parts, workers, summary), len(files), "uploads")
    _raise_failures(_run_parallel(job, manifests, workers, summary), len(files), "uploads")
    summary.seconds = time.time() - started
    return summary


# ---------------------------------------------------------------- download

class _CheckedWriter:
    """A file wrapper that computes CRC32C as bytes arrive and reports progress."""

    def __init__(self, f, name, progress):
        self.f, self.name, self.progress = f, name, progress
        self.crc = google_crc32c.Checksum()

    def write(self, data):
        if _stop.is_set():
            raise GcsError("interrupted")
        self.crc.update(data)
        n = self.f.write(data)
        if self.progress:
            self.progress(self.name, len(data))
        return n

    def crc32c(self):
        return base64.b64encode(self.crc.digest()).decode("ascii")


def download_blob(blob, local, progress=None):
    """Download one listed blob to `local` atomically (temp file, CRC32C check, rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
    tmp = local + PARTIAL
    try:
        with open(tmp, "wb") as f:
            out = _CheckedWriter(f, blob.name, progress)
            # raw_download: the stored bytes, never decompressed in transit, so CRC32C applies.
            blob.download_to_file(out, raw_download=True, checksum="crc32c")
        if out.crc32c() != blob.crc32c:
            raise GcsError("gs://%s/%s arrived corrupt (crc32c %s, expected %s)"
                           % (blob.bucket.name, blob.name, out.crc32c(), blob.crc32c))
        os.replace(tmp, local)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def download_dir(src, dst, workers=8, client=None, progress=None):
    """Download every object under gs:// `src` into local `dst`, skipping identical files.

    A `dst` that is not empty must be an earlier download of `src` (it holds
    only names the objects have): a differing file there is replaced, so a
    user's folder is refused before anything is written.
    """
    bucket_name, prefix = split_gs(src)
    client = client or make_client()
    remote = _list_objects(client, bucket_name, prefix)
    if not remote:
        raise GcsError("no objects under %s: is the path right, and did the run finish "
                       "its export?" % src)
    tops = {rel.split("/")[0] for rel in remote}
    fs.check_output_dir(dst, "--dst", owns=lambda names: all(
        n in tops or n.endswith(PARTIAL) for n in names), what="download of %s" % src)
    summary = Summary("downloaded")
    started = time.time()
    _stop.clear()

    def job(rel):
        blob = remote[rel]
        if any(part in ("", ".", "..") for part in rel.split("/")):
            raise GcsError("refusing object name that would leave %s: %r" % (dst, blob.name))
        local = os.path.join(dst, *rel.split("/"))
        if (os.path.isfile(local) and os.path.getsize(local) == blob.size
                and file_crc32c(local) == blob.crc32c):
            return False, blob.size, 0
        try:
            download_blob(blob, local, progress)
        except Exception as e:
            raise _explain(e, bucket_name, "downloading %s" % blob.name) or e
        logging.info("downloaded %s (%.1f MB)", rel, blob.size / 1e6)
        return True, blob.size, 0

    _raise_failures(_run_parallel(job, sorted(remote), workers, summary), len(remote),
                    "downloads")
    summary.seconds = time.time() - started
    return summary


# ---------------------------------------------------------------- preflight

def preflight(path, client=None):
    """Check that a run can write, read and delete objects under gs:// `path`.

    Fails fast (no retries) with a GcsError naming the bucket and the cause.
    Delete matters too: the checkpoint manager removes old checkpoints.
    """
    bucket_name, prefix = split_gs(path)
    client = client or make_client()
    name = posixpath.join(prefix, ".preflight-%s-%d-%s"
                          % (socket.gethostname(), os.getpid(), uuid.uuid4().hex[:8]))
    blob = client.bucket(bucket_name).blob(name)
    payload = b"pretrain preflight probe\n"

    def step(doing, call):
        try:
            return call()
        except Exception as e:
            raise _explain(e, bucket_name, "%s gs://%s/%s" % (doing, bucket_name, name)) or e

    step("writing a probe object", lambda: blob.upload_from_string(payload, retry=None, timeout=30))
    got = step("reading it back", lambda: blob.download_as_bytes(retry=None, timeout=30))
    step("deleting it", lambda: blob.delete(retry=None, timeout=30))
    if got != payload:
        raise GcsError("gs://%s/%s read back different bytes than were written"
                       % (bucket_name, name))
    return "gs://%s/%s: bucket exists; write, read and delete work" % (bucket_name, prefix)


# ---------------------------------------------------------------- CLI

COMMANDS = ("upload", "download", "preflight")


def define_flags():
    flags.DEFINE_string("src", None, "upload: local folder; download: gs:// folder")
    flags.DEFINE_string("dst", None, "upload: gs:// folder; download: local folder")
    flags.DEFINE_string("path", None, "preflight: the gs:// folder a run will write to")
    flags.DEFINE_integer("workers", 8, "files transferred in parallel")
    flags.DEFINE_integer("chunk_mb", DEFAULT_CHUNK_SIZE >> 20,
                         "upload chunk size in MiB; a rerun resumes at a chunk boundary")
    flags.DEFINE_string("state_dir", DEFAULT_STATE_DIR,
                        "where upload session URLs are kept so a rerun can resume")


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise UsageError("expected one command, {%s}, got %s: python -m pretrain.gcs COMMAND "
                         "--flags" % ("|".join(COMMANDS), " ".join(argv[1:]) or "none"))
    command, f = argv[1], flags.FLAGS
    needed = ("path",) if command == "preflight" else ("src", "dst")
    missing = [name for name in needed if not f[name].value]
    if missing:
        raise UsageError("%s needs --%s" % (command, " --".join(missing)))
    try:
        if command == "upload":
            print(upload_dir(f.src, f.dst, f.workers, f.chunk_mb << 20, f.state_dir))
        elif command == "download":
            print(download_dir(f.src, f.dst, f.workers))
        else:
            print(preflight(f.path))
    except GcsError as e:
        raise GcsError("gcs %s failed: %s" % (command, e)) from None
