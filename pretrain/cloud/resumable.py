"""The resumable-upload protocol of Cloud Storage, one file at a time.

A session URL (from `blob.create_resumable_upload_session`) takes the file
in chunks: each PUT says which bytes it carries, the server answers 308 with
the bytes it holds, and the last chunk's answer is the object. `send` keeps
sending from where the server is, retrying transient failures; the session
URL is saved in a small local state file so that a rerun resumes it
(`pretrain.cloud.gcs.upload_file` ties these together).
"""
import hashlib
import json
import os
import time

import requests

_RETRIES = 6  # consecutive failed requests of one upload before it gives up
TIMEOUT = (30, 600)  # connect, read (seconds) for one chunk request


class GaveUp(Exception):
    """Interrupted, or too many failed requests in a row; a rerun resumes."""


class Transient(Exception):
    """A request that may succeed if repeated (network error, 429, 5xx)."""


class Rejected(Exception):
    """The server refused the session or its data (4xx): repeating will not help."""


def put(url, size, start=None, data=b""):
    """One request of the resumable-upload protocol.

    Sends `data` at offset `start`, or asks for the session's status when
    `start` is None. Returns (object resource or None, bytes the server holds).
    """
    if start is None:
        content_range = "bytes */%d" % size
    else:
        content_range = "bytes %d-%d/%d" % (start, start + len(data) - 1, size)
    try:
        resp = requests.put(url, data=data, headers={"Content-Range": content_range},
                            timeout=TIMEOUT)
    except (requests.ConnectionError, requests.Timeout) as e:
        raise Transient(str(e)) from None
    if resp.status_code in (200, 201):
        return resp.json(), size
    if resp.status_code == 308:  # incomplete; Range says what was stored, absent if nothing
        held = resp.headers.get("Range")
        return None, int(held.rsplit("-", 1)[1]) + 1 if held else 0
    if resp.status_code == 429 or resp.status_code >= 500:
        raise Transient("HTTP %d" % resp.status_code)
    raise Rejected("HTTP %d: %s" % (resp.status_code, resp.text[:500]))


def send(url, f, size, offset, chunk_size, name, progress, stop):
    """Send the file from `offset` (None: ask the server first) until the object exists.

    Returns (object resource, the offset the upload started from).
    """
    failures, start = 0, offset
    while True:
        if stop.is_set():
            raise GaveUp("interrupted")
        try:
            if offset is None or size == 0:  # status query; with size 0 it also finalises
                obj, offset = put(url, size)
                start = offset if start is None else start
            else:
                f.seek(offset)
                obj, held = put(url, size, offset, f.read(chunk_size))
                if progress:
                    progress(name, held - offset)
                offset = held
            if obj is not None:
                return obj, start
            failures = 0
        except Transient as e:
            failures += 1
            if failures > _RETRIES:
                raise GaveUp("gave up after %d failed requests (%s); rerun to resume"
                               % (failures, e)) from None
            time.sleep(min(2 ** failures, 30))
            offset = None  # the server may have stored part of the chunk: ask it


def state_path(state_dir, uri):
    return os.path.join(state_dir, hashlib.sha256(uri.encode()).hexdigest()[:32] + ".json")


def load_session(path, identity):
    """The saved session URL for this exact file version, else None."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    return saved["url"] if saved.get("identity") == identity else None


def save_session(path, identity, url):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as f:
        json.dump({"identity": identity, "url": url}, f)
    os.replace(tmp, path)


def forget(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
