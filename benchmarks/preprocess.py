"""Preprocessing throughput and memory: MB/s, CPU-seconds per MB, peak RSS.

    python benchmarks/preprocess.py --input ../shared/data/corpus/modern_translations.jsonl \\
        --mb 10 --seq_lens 128 --workers 2 --dupe_factor 1

    python benchmarks/preprocess.py --input ... --mb 5 --components

Takes the first `--mb` MB of `--input` (whole lines) into a temporary file,
runs `python -m pretrain.preprocess` on it as a separate process, and prints
wall time, MB/s, CPU-seconds per MB (all processes: driver + workers), and
peak RSS, both of the largest single process and of the whole process tree
summed (sampled from /proc every 0.1 s). `--repeat N` runs it N times and
prints the median, as CPU time varies from run to run on a shared machine.

`--components` instead times, on the same text in this process, the pieces
one document goes through: bert4keras's Tokenizer.encode against
tokenization.WordPieceTokenizer (checking the ids are identical), jieba
against rjieba (counting the documents they segment differently), rjieba on
one long text against the pieces preprocessing gives it; then it gzips the
input's uncompressed records with ISA-L and zlib.
"""
import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree_rss_kb(pid):
    """{pid: RSS kB} of `pid` and all its descendants, from /proc."""
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        try:
            with open("/proc/%d/status" % p) as f:
                rss = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
            out[p] = rss
            for task in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, task)) as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return out


def _documents(path, limit):
    """Texts of the first `limit` bytes of a JSON-lines or plain-text file."""
    import json
    docs, size = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if size >= limit:
                break
            size += len(line.encode("utf-8"))
            line = line.strip()
            if line:
                docs.append(json.loads(line)["text"] if line.startswith("{") else line)
    return docs, size / 1e6


def components(args):
    import pretrain  # noqa: F401  (tf_keras env before bert4keras)
    import jieba
    from bert4keras.tokenizers import Tokenizer
    from pretrain.data import masking
    from pretrain.data import tokenization

    docs, mb = _documents(args.input, int(args.mb * 1e6))
    vocab = os.path.join(REPO, "data", "vocab.txt")
    jieba.setLogLevel(60)
    jieba.initialize()
    rows = []
    b4k = Tokenizer(vocab, do_lower_case=True)
    fast = tokenization.WordPieceTokenizer(tokenization.read_vocab_file(vocab))
    fast.encode("warm up")
    results = {}
    for name, fn in (("bert4keras Tokenizer.encode", lambda d: b4k.encode(d)[0][1:-1]),
                     ("WordPieceTokenizer.encode", fast.encode),
                     ("jieba.lcut", jieba.lcut),
                     ("rjieba.cut", masking.Segmenter(backend="rjieba").cut)):
        t0 = time.process_time()
        results[name] = [fn(d) for d in docs]
        rows.append((name, (time.process_time() - t0) / mb))
    print("%d documents, %.1f MB of %s" % (len(docs), mb, os.path.basename(args.input)))
    for name, secs in rows:
        print("%-30s %.3f CPU-s/MB" % (name, secs))
    same_ids = sum(a == b for a, b in zip(results["bert4keras Tokenizer.encode"],
                                          results["WordPieceTokenizer.encode"]))
    same_words = sum(a == b for a, b in zip(results["jieba.lcut"], results["rjieba.cut"]))
    print("identical token ids: %d of %d documents" % (same_ids, len(docs)))
    print("identical jieba/rjieba segmentation: %d of %d documents" % (same_words, len(docs)))
    _segmenting(docs, mb, fast)
    _compressing(args)


def _segmenting(docs, mb, tokenizer):
    """rjieba's words of the documents joined (as preprocessing joins them):
    one call on the whole text against masking._word_numbers' pieces."""
    import numpy as np
    from pretrain.data import masking
    from pretrain.data import tokenization
    text = " ".join(tokenization.normalize(d) for d in docs)
    seg = masking.Segmenter(backend="rjieba")
    breaks = masking._sentence_breaks(text)
    chars = np.arange(len(text))
    for name, fn in (("one cut, its word lengths", lambda: np.cumsum(np.fromiter(
                         map(len, seg.cut(text)), np.int64))),
                     ("cut in pieces (_word_numbers)",
                      lambda: masking._word_numbers(seg, text, breaks, chars))):
        t0 = time.process_time()
        fn()
        print("%-38s %.3f CPU-s/MB" % ("rjieba, " + name, (time.process_time() - t0) / mb))


def _compressing(args):
    """gzip of the uncompressed dynamic records of the input (128+512): ISA-L
    (the default writer) against zlib at the fallback's level 1 and at 3."""
    import zlib
    from isal import isal_zlib
    tmp = tempfile.mkdtemp(prefix="bench_gzip_")
    try:
        subprocess.run([sys.executable, "-m", "pretrain.preprocess", "--config", args.config,
                        "--input", args.input, "--output", tmp, "--seq_lens", "128,512",
                        "--workers", str(args.workers), "--compress=false", "--progress=false",
                        "--masking", "dynamic"], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        data = b"".join(open(os.path.join(d, f), "rb").read() for d, _, fs in os.walk(tmp)
                        for f in sorted(fs) if f.endswith(".tfrecord"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("gzip of %.1f MB of records (all of --input):" % (len(data) / 1e6))
    for name, module, level in (("ISA-L level 2", isal_zlib, 2), ("zlib level 1", zlib, 1),
                                ("zlib level 3", zlib, 3)):
        t0 = time.process_time()
        out = module.compress(data, level)
        print("  %-14s %.2f CPU-s, %.1f MB" % (name, time.process_time() - t0, len(out) / 1e6))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--mb", type=float, default=10.0, help="MB of the input to use")
    parser.add_argument("--config", default="roberta_tiny")
    parser.add_argument("--seq_lens", default="128")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dupe_factor", type=int, default=1)
    parser.add_argument("--compress", default="true", choices=["true", "false"])
    parser.add_argument("--extra", default="", help="more flags for pretrain.preprocess")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of the same command; more than one prints their median")
    parser.add_argument("--components", action="store_true",
                        help="time tokenizers, segmenters and gzip instead of the whole CLI")
    args = parser.parse_args()
    if args.components:
        return components(args)

    tmp = tempfile.mkdtemp(prefix="bench_preprocess_")
    try:
        corpus_path = os.path.join(tmp, "corpus" + os.path.splitext(args.input)[1])
        limit = int(args.mb * 1e6)
        size = 0
        with open(args.input, "rb") as src, open(corpus_path, "wb") as dst:
            for line in src:
                if size >= limit:
                    break
                dst.write(line)
                size += len(line)
        mb = size / 1e6
        print("input %.1f MB (%s), seq_lens %s, dupe_factor %d, workers %d, compress %s %s"
              % (mb, os.path.basename(args.input), args.seq_lens, args.dupe_factor,
                 args.workers, args.compress, args.extra))
        rates = []
        for _ in range(args.repeat):
            out = os.path.join(tmp, "out")
            shutil.rmtree(out, ignore_errors=True)
            rates.append(run_once(args, corpus_path, out, mb))
        if args.repeat > 1:
            rates.sort()
            print("%d runs: median %.3f CPU-s/MB (min %.3f, max %.3f)"
                  % (len(rates), rates[len(rates) // 2], rates[0], rates[-1]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_once(args, corpus_path, out, mb):
    """One `pretrain.preprocess` process: prints its figures, returns CPU-s/MB."""
    cmd = [sys.executable, "-m", "pretrain.preprocess", "--config", args.config,
           "--input", corpus_path, "--output", out,
           "--seq_lens", args.seq_lens, "--dupe_factor", str(args.dupe_factor),
           "--workers", str(args.workers), "--compress=%s" % args.compress,
           "--progress=false"] + args.extra.split()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks = {"tree": 0, "single": 0}
    stderr = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()))
    reader.start()
    while proc.poll() is None:
        rss = _tree_rss_kb(proc.pid)
        peaks["tree"] = max(peaks["tree"], sum(rss.values()))
        peaks["single"] = max([peaks["single"]] + list(rss.values()))
        time.sleep(0.1)
    reader.join()
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.stderr.write(stderr[0].decode("utf-8", "replace")[-3000:])
        raise SystemExit("preprocess failed (exit %d)" % proc.returncode)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out_mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out)
                 for f in fs) / 1e6
    print("wall %.1f s  |  %.2f MB/s  |  CPU %.1f s = %.3f CPU-s/MB  |  peak RSS: largest "
          "process %.0f MB, all processes %.0f MB (ru_maxrss %.0f MB)  |  output %.1f MB"
          % (wall, mb / wall, cpu, cpu / mb, peaks["single"] / 1024.0,
             peaks["tree"] / 1024.0, after.ru_maxrss / 1024.0, out_mb), flush=True)
    return cpu / mb


if __name__ == "__main__":
    main()
