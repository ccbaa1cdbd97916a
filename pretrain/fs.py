"""Files and directories, local or `gs://`: one set of helpers for the project.

A path with a scheme (`gs://`, or another `tf.io.gfile` URL such as `ram://`
in tests) goes through `tf.io.gfile`; a plain path goes through `os`, so
code that only ever sees local paths (preprocessing workers, config loading)
never imports TensorFlow. `open` reads and writes text as UTF-8.
"""
import builtins
import errno
import glob as globlib
import os
import posixpath
import re
import shutil
import tempfile

from pretrain.errors import PretrainError


class OutputPathError(PretrainError, ValueError):
    """An output path that cannot be a directory."""


class OutputWriteError(PretrainError, RuntimeError):
    """The filesystem of an output refused a write: it is full or read-only."""


# errno (OSError) and the text TensorFlow's errors carry (ResourceExhausted,
# PermissionDenied, ...) for a refused write, and the cause a message gives.
_REFUSALS = ((errno.ENOSPC, "No space left on device", "no space left on device"),
             (errno.EDQUOT, "Disk quota exceeded", "disk quota exceeded"),
             (errno.EFBIG, "File too large", "file too large for this filesystem or limit"),
             (errno.EROFS, "Read-only file system", "read-only file system"),
             (errno.EACCES, "Permission denied", "permission denied"))


def write_refusal(error):
    """The cause (say "no space left on device") when `error`, an OSError or a
    TensorFlow error, is a write the filesystem refused; else None."""
    if isinstance(error, OSError):
        return next((cause for number, _, cause in _REFUSALS if error.errno == number), None)
    if any(c.__name__ == "OpError" for c in type(error).__mro__):  # tf.errors, by name: no TF here
        return next((cause for _, text, cause in _REFUSALS if text in str(error)), None)
    return None


def free_bytes(path):
    """Free bytes on the filesystem that holds (or would hold) local `path`; None
    for a remote one."""
    if is_remote(path):
        return None
    return shutil.disk_usage(_nearest_existing(path)).free


def _nearest_existing(path):
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def refused_write(error, path, flag="--output", what=None, needed=None):
    """The OutputWriteError for `error` (see `write_refusal`) under output `path`,
    naming what was written (`what`, else the file the error names) and the
    bytes `needed` (when known) and free; None if `error` is something else."""
    cause = write_refusal(error)
    if cause is None:
        return None
    failed = None if what else getattr(error, "filename", None)
    if failed is None and not what:  # TensorFlow names the file in its message
        found = re.search(re.escape(str(path)) + r"[^\s;,'\"]*", str(error))
        failed = found.group(0) if found else None
    if cause == "permission denied" and not what and not str(failed).startswith(str(path)):
        return None  # a file it may not read, say: not the output's doing
    full = cause not in ("read-only file system", "permission denied")
    free = free_bytes(path) if full else None
    sizes = ", ".join(s for s in ("needs about %s" % _mb(needed) if needed else None,
                                  "%s free" % _mb(free) if free is not None else None) if s)
    return OutputWriteError("%s %s: %s%s%s%s; %s %s" % (
        flag, path, cause, " " + what if what else "",
        " (at %s)" % failed if failed and failed != str(path) else "",
        " (%s)" % sizes if sizes else "",
        "free some space or choose another" if full else "choose a writable", flag))


def _mb(n):
    return "%.1f MB" % (n / 1e6)


def check_writable(path, flag="--output"):
    """Raise OutputWriteError unless a file can be created in local `path` (or
    where it would be made): a read-only output fails at start, not hours in."""
    if is_remote(path):
        return
    where = _nearest_existing(path)
    try:
        handle, probe = tempfile.mkstemp(prefix=".pretrain-write-check-", dir=where)
    except OSError as e:
        if write_refusal(e) is None:
            raise
        raise OutputWriteError("%s %s: %s: cannot create a file in %s; choose a writable "
                               "directory" % (flag, path, write_refusal(e), where)) from None
    os.close(handle)
    os.remove(probe)


def is_remote(path):
    return "://" in str(path)


def resolve(path):
    """The one name of a file: a local path absolute, normalized and with its
    symlinks resolved; a remote one as it is."""
    return path if is_remote(path) else os.path.realpath(path)


def _gfile():
    # lazy: TensorFlow (~3 CPU-s, ~550 MB) only for remote paths
    import tensorflow as tf
    return tf.io.gfile


def join(base, *parts):
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def open(path, mode="r"):  # noqa: A001  (fs.open, like gfile.GFile)
    if is_remote(path):
        return _gfile().GFile(path, mode)
    if "b" in mode:
        return builtins.open(path, mode)
    return builtins.open(path, mode, encoding="utf-8")


def exists(path):
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path):
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def size(path):
    return _gfile().stat(path).length if is_remote(path) else os.path.getsize(path)


def listdir(path):
    """Names in a directory (no trailing "/" on subdirectories)."""
    if is_remote(path):
        return [n.rstrip("/") for n in _gfile().listdir(path)]
    return os.listdir(path)


def glob(pattern):
    """Paths matching `pattern` (locally `**` matches any depth)."""
    if is_remote(pattern):
        return _gfile().glob(pattern)
    return globlib.glob(pattern, recursive=True)


def walk_files(path):
    """Every file under a directory, at any depth."""
    walk = _gfile().walk if is_remote(path) else os.walk
    return [join(d, f) for d, _, files in walk(path) for f in files]


def makedirs(path):
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def remove(path, missing_ok=False):
    if missing_ok and not exists(path):
        return
    if is_remote(path):
        _gfile().remove(path)
    else:
        os.remove(path)


def rmtree(path):
    if is_remote(path):
        _gfile().rmtree(path)
    else:
        shutil.rmtree(path)


def rename(src, dst):
    """Move a file, replacing `dst` (on gs:// a copy then a delete)."""
    if is_remote(src) or is_remote(dst):
        _gfile().rename(src, dst, overwrite=True)
    else:
        os.replace(src, dst)


def copy(src, dst):
    """Copy a file, replacing `dst`; either side may be local or remote."""
    if is_remote(src) or is_remote(dst):
        _gfile().copy(src, dst, overwrite=True)
    else:
        shutil.copyfile(src, dst)


def check_output_dir(path, flag="--output", owns=None, what="output"):
    """Raise OutputPathError unless `path` is a directory or can be made one.

    With `owns(names)` (the names in the directory), a directory that is not
    empty must be this command's own earlier output (`what`): a command may
    replace what it wrote, never a user's files it did not write.
    """
    if is_remote(path):
        blocked = path if exists(path) and not isdir(path) else None
    else:
        blocked = os.path.abspath(path)
        while not os.path.exists(blocked):  # the nearest part that exists
            blocked = os.path.dirname(blocked)
        blocked = None if os.path.isdir(blocked) else blocked
    if blocked:
        raise OutputPathError("%s %s: %s is a file, not a directory; give a directory path "
                              "(it is created if missing)" % (flag, path, blocked))
    names = sorted(listdir(path)) if owns is not None and isdir(path) else []
    if names and not owns(names):
        shown = ", ".join(names[:5]) + (" and %d more" % (len(names) - 5) if len(names) > 5
                                         else "")
        raise OutputPathError("%s %s is not empty and is not an earlier %s: it holds %s; "
                              "give a new or empty directory (nothing was written)"
                              % (flag, path, what, shown))


def check_output_file(path, owns, what, flag="--output"):
    """Raise OutputPathError if `path` is a directory, or an existing file that
    `owns(path)` does not recognise as this command's earlier `what`."""
    if isdir(path):
        raise OutputPathError("%s %s is a directory; give a file path" % (flag, path))
    if exists(path) and not owns(path):
        raise OutputPathError("%s %s exists and is not an earlier %s; give a new path "
                              "(it was left unchanged)" % (flag, path, what))


# What a command's own earlier output holds (the `owns` of check_output_dir),
# here so the TF-free command entries can check before TensorFlow loads.
EXPORT_INFO = "pretrain_export.json"  # pretrain.export.checkpoints.INFO_NAME
EXPORT_FILES = ("bert_config.json", EXPORT_INFO, "vocab.txt", "spm.model", "checkpoint",
                "model.h5")


def is_export(names, partial=False):
    """Whether a directory holding `names` is an earlier export (which a new one
    may replace): its info file (unless `partial`: one being written), and
    nothing an export does not write (bert_model.ckpt.* besides those)."""
    return (partial or EXPORT_INFO in names) and all(
        n in EXPORT_FILES or n.startswith("bert_model.ckpt.") for n in names)


def is_hf_export(names):
    return "config.json" in names and "tokenizer_config.json" in names


def is_finetune_output(out, names):
    """Whether `names` in `out` are all what `pretrain.finetune` writes there:
    model/ a fine-tuned export, random_init/ the same layout."""
    for name in names:
        path = join(out, name)
        if name in ("model", "model.old", "model.partial"):
            if not is_export(listdir(path), partial=name != "model"):
                return False
        elif name == "random_init":
            if not is_finetune_output(path, listdir(path)):
                return False
        elif name not in ("metrics.json", "tensorboard") and not (
                name.startswith("predictions_") and name.endswith(".tsv")):
            return False
    return True


def is_npy(path):
    with open(path, "rb") as f:
        return f.read(6) == b"\x93NUMPY"
