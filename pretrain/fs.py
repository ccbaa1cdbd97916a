"""Files and directories, local or `gs://`: one set of helpers for the project.

A path with a scheme (`gs://`, or another `tf.io.gfile` URL such as `ram://`
in tests) goes through `tf.io.gfile`; a plain path goes through `os`, so
code that only ever sees local paths (preprocessing workers, config loading)
never imports TensorFlow. `open` reads and writes text as UTF-8.
"""
import builtins
import glob as globlib
import os
import posixpath
import shutil

from pretrain.errors import PretrainError


class OutputPathError(PretrainError, ValueError):
    """An output path that cannot be a directory."""


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
