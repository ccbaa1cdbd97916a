"""Read documents from corpus files, and plan their split into independent chunks.

Inputs are globs, directories or files, local or `gs://` (`pretrain.fs`:
TensorFlow is imported only for gs:// paths, so worker processes stay light).
`.gz` and `.bz2` are read transparently. Three layouts, sniffed per file:

- `jsonl`: one JSON object per line; the text is taken from `--text_field`
  or auto-detected among the nlp_chinese_corpus layouts (wiki2019zh `text`;
  news2016zh / webtext2019zh `title`+`desc`+`content`; baike2018qa
  `title`+`desc`+`answer`);
- `lines`: plain text, one document per line;
- `paragraphs`: plain text, documents separated by blank lines.

`plan_chunks` cuts every file at document boundaries into chunks of about
`chunk_bytes`. A chunk is the unit of work and of output (one shard per
chunk), so the output depends on the corpus and the chunk size only, never on
the number of workers. Plain files are cut by seeking; compressed files are
scanned once and read by one task from start to end.

`read_task` yields each chunk's `Doc(where, text)`s and, for bad input
(malformed JSON, undecodable bytes, records without text, empty documents),
`Bad(where, reason)`s for the caller to count and report; `where` is a line
of the chunk, turned into `file:line` by the `where(...)` function it gives.
"""
import bz2
import collections
import gzip
import io
import json
import os
import re
import zlib

from pretrain import fs

Doc = collections.namedtuple("Doc", "where text")
Bad = collections.namedtuple("Bad", "where reason")
Chunk = collections.namedtuple("Chunk", "index path fmt start end")

FORMATS = ("jsonl", "lines", "paragraphs")
# Auto-detected JSON layouts, first match wins: (key that identifies it, fields joined).
JSON_LAYOUTS = ((("text",), ("text",)),
                (("content",), ("title", "desc", "content")),
                (("answer",), ("title", "desc", "answer")))
BAD_REASONS = ("bad_json", "bad_utf8", "not_an_object", "no_text_field", "empty_document")


# ---------------------------------------------------------------- inputs

def expand_inputs(patterns):
    """Sorted, de-duplicated files from comma-separated globs, dirs and files, by
    their resolved names (`fs.resolve`): a file has one name and one place in
    the order, however it was given."""
    if isinstance(patterns, str):
        patterns = [patterns]
    files = []
    for pattern in (p.strip() for item in patterns for p in item.split(",")):
        if not pattern:
            continue
        if fs.isdir(pattern):
            found = fs.walk_files(pattern)
        else:
            found = [f for f in fs.glob(pattern) if fs.is_remote(f) or os.path.isfile(f)]
        if not found:
            raise FileNotFoundError("--input %r matches no file" % pattern)
        files.extend(found)
    return sorted({fs.resolve(f) for f in files})


# ---------------------------------------------------------------- formats

def compression_of(path):
    return "gz" if path.endswith(".gz") else "bz2" if path.endswith(".bz2") else None


def open_stream(path):
    """Binary stream of the file's decompressed bytes."""
    raw = fs.open(path, "rb")
    kind = compression_of(path)
    if kind == "gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "bz2":
        return bz2.BZ2File(raw, mode="rb")
    return raw


def sniff_format(path, sample_bytes=1 << 16):
    with open_stream(path) as f:
        sample = f.read(sample_bytes).decode("utf-8", "replace").lstrip("\ufeff")
    first = next((line.strip() for line in sample.split("\n") if line.strip()), "")
    if first.startswith("{"):
        return "jsonl"
    if re.search(r"\S[ \t\r]*\n[ \t\r]*\n[ \t\r]*\S", sample):
        return "paragraphs"
    return "lines"


def json_text(record, fields=None):
    """The document text of a JSON record, or None if it has no text field."""
    if fields is None:
        fields = next((f for keys, f in JSON_LAYOUTS if all(k in record for k in keys)), None)
        if fields is None:
            return None
    elif not any(f in record for f in fields):
        return None
    parts = [record.get(f) for f in fields]
    return "\n".join(p.strip() for p in parts if isinstance(p, str) and p.strip())


# ---------------------------------------------------------------- planning

def _is_blank(line):
    return not line.strip()


def _next_boundary(f, target, fmt):
    """First document start at or after byte `target` of a seekable file, or None."""
    f.seek(target - 1)
    f.readline()  # finish the line holding byte target-1
    if fmt != "paragraphs":
        pos = f.tell()
        return pos if f.readline() else None
    seen_blank = False  # the line we finished may not have been blank: be conservative
    while True:
        pos = f.tell()
        line = f.readline()
        if not line:
            return None
        if _is_blank(line):
            seen_blank = True
        elif seen_blank:
            return pos


def _scan_boundaries(path, fmt, chunk_bytes):
    """Document starts every ~chunk_bytes of a compressed file (one pass)."""
    bounds, pos, start, prev_blank = [0], 0, 0, True
    with open_stream(path) as f:
        for line in f:
            blank = _is_blank(line)
            doc_start = not blank and (fmt != "paragraphs" or prev_blank)
            if doc_start and pos - start >= chunk_bytes:
                bounds.append(pos)
                start = pos
            prev_blank = blank
            pos += len(line)
    return bounds + [pos]


def plan_chunks(files, chunk_bytes, fmt="auto"):
    """[[Chunk, ...] per task]: a task is one chunk, or all chunks of a compressed file."""
    tasks, index = [], 0
    for path in files:
        file_fmt = sniff_format(path) if fmt == "auto" else fmt
        if compression_of(path):
            bounds = _scan_boundaries(path, file_fmt, chunk_bytes)
        else:
            size = fs.size(path)
            bounds = [0]
            with fs.open(path, "rb") as f:
                while bounds[-1] + chunk_bytes < size:
                    nxt = _next_boundary(f, bounds[-1] + chunk_bytes, file_fmt)
                    if nxt is None:
                        break
                    bounds.append(nxt)
            bounds.append(size)
        chunks = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            chunks.append(Chunk(index, path, file_fmt, start, end))
            index += 1
        tasks.extend([chunks] if compression_of(path) else [[c] for c in chunks])
    return tasks


# ---------------------------------------------------------------- reading

class _Lines(object):
    """(line number, byte offset, bytes) of a stream, with a one-line pushback."""

    def __init__(self, stream, pos=0, lineno=None):
        self._stream, self.pos, self.lineno = stream, pos, lineno
        self._pending = None

    def next(self):
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        line = self._stream.readline()
        if not line:
            return None
        item = (self.lineno, self.pos, line)
        self.pos += len(line)
        if self.lineno is not None:
            self.lineno += 1
        return item

    def push(self, item):
        self._pending = item


class _Where(object):
    """file:line for reports. Line numbers of a chunk read from the middle of a
    file are counted only when a report needs them."""

    def __init__(self, path, start, lineno):
        self.path, self.start, self._base = path, start, lineno

    def __call__(self, lineno_in_chunk):
        """`file:line` of the chunk's 0-based line `lineno_in_chunk`."""
        if self._base is None:
            with fs.open(self.path, "rb") as f:
                count, left = 0, self.start
                while left:
                    block = f.read(min(left, 1 << 22))
                    if not block:
                        break
                    count, left = count + block.count(b"\n"), left - len(block)
            self._base = count + 1
        return "%s:%d" % (self.path, self._base + lineno_in_chunk)


def _decode(line):
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _documents(lines, chunk, text_fields):
    """Docs and Bads of one chunk from a positioned `_Lines`."""
    n = 0  # line number within the chunk
    para, para_line = [], None
    while True:
        item = lines.next()
        if item is None or item[1] >= chunk.end:
            if item is not None:
                lines.push(item)
            break
        line = item[2]
        n += 1
        text = _decode(line)
        if text is None:
            yield Bad(n - 1, "bad_utf8")
            continue
        if item[1] == 0:
            text = text.lstrip("\ufeff")
        if chunk.fmt == "paragraphs":
            if text.strip():
                para_line = n - 1 if not para else para_line
                para.append(text.rstrip("\r\n"))
                continue
            if para:
                yield Doc(para_line, "\n".join(para))
                para = []
            continue
        if not text.strip():
            continue
        if chunk.fmt == "lines":
            yield Doc(n - 1, text.rstrip("\r\n"))
            continue
        try:
            record = json.loads(text)
        except ValueError:
            yield Bad(n - 1, "bad_json")
            continue
        if not isinstance(record, dict):
            yield Bad(n - 1, "not_an_object")
            continue
        body = json_text(record, text_fields)
        if body is None:
            yield Bad(n - 1, "no_text_field")
        elif not body:
            yield Bad(n - 1, "empty_document")
        else:
            yield Doc(n - 1, body)
    if para:
        yield Doc(para_line, "\n".join(para))


def read_task(chunks, text_fields=None):
    """Yield (chunk, where, iterator of Doc/Bad, lines) for each chunk of a task, in order.

    `Doc.where` / `Bad.where` are line numbers within the chunk (0-based);
    `where(n)` formats them as `file:line`; `lines.pos` is the byte offset reached.
    """
    path = chunks[0].path
    sequential = compression_of(path) is not None
    stream = open_stream(path)
    try:
        lines = _Lines(stream, 0, 0) if sequential else None
        for chunk in chunks:
            if sequential:
                base = (lines._pending[0] if lines._pending else lines.lineno) + 1
            else:
                stream.seek(chunk.start)
                lines, base = _Lines(stream, chunk.start), None
            yield (chunk, _Where(path, chunk.start, base), _documents(lines, chunk, text_fields),
                   lines)
    finally:
        stream.close()


def open_text(path):
    """A whole (small) text file, e.g. a user dictionary."""
    with open_stream(path) as f:
        return io.TextIOWrapper(f, encoding="utf-8").read()


def is_heldout(text, fraction, seed=0):
    """Whether `text` belongs to the held-out split of share `fraction`.

    A crc32 of the text (seeded), so the split depends neither on chunking
    nor on order: preprocessing uses it for documents, SimBERT for groups.
    """
    if not fraction:
        return False
    return zlib.crc32(text.encode("utf-8"), seed & 0xFFFFFFFF) < fraction * 2 ** 32
