"""Reader throughput: masked sequences per CPU-second, dynamic masking against static records.

    python benchmarks/reader.py --input ../shared/data/corpus/wiki_cmrc2018_zh_hans.jsonl \\
        --mb 2 --seq_lens 128,512 --batch_size 256 --batches 40

Preprocesses the first `--mb` MB of `--input` twice into a temporary dir
(static masking with dupe_factor 1, and dynamic), then for each length and
each kind reads `--batches` batches through `inputs.mlm_dataset` (the
trainer's reader: interleave, shuffle, batch, parse, and for dynamic records
the masking), after one warm-up batch. Prints sequences per CPU-second of
this process (all tf.data threads) and per wall second.
"""
import argparse
import os
import shutil
import tempfile
import time

import pretrain  # noqa: E402,F401  (tf_keras env before TensorFlow)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--mb", type=float, default=2.0)
    parser.add_argument("--config", default="roberta_tiny")
    parser.add_argument("--seq_lens", default="128,512")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()

    from pretrain import config
    from pretrain.training import inputs
    from pretrain.data import preprocess
    seq_lens = [int(x) for x in args.seq_lens.split(",")]
    tmp = tempfile.mkdtemp(prefix="bench_reader_")
    try:
        src = os.path.join(tmp, "corpus" + os.path.splitext(args.input)[1])
        with open(args.input, "rb") as f, open(src, "wb") as out:
            size = 0
            for line in f:
                if size >= args.mb * 1e6:
                    break
                out.write(line)
                size += len(line)
        base = config.load_config(args.config)
        print("input %.1f MB (%s), batch %d, %d batches per figure"
              % (size / 1e6, os.path.basename(args.input), args.batch_size, args.batches))
        for mode in ("static", "dynamic"):
            cfg = dict(base, data=dict(base["data"], masking=mode))
            data_dir = os.path.join(tmp, mode)
            preprocess.run(cfg, src, data_dir, seq_lens=seq_lens, dupe_factor=1, workers=2,
                           heldout_fraction=0.0, progress=False)
            for L in seq_lens:
                ds = inputs.mlm_dataset(data_dir, cfg, L, args.batch_size, seed=1)
                it = iter(ds)
                next(it)  # tracing, thread pools, first files
                cpu0, t0 = time.process_time(), time.time()
                for _ in range(args.batches):
                    next(it)["input_ids"].numpy()
                cpu, wall = time.process_time() - cpu0, time.time() - t0
                n = args.batches * args.batch_size
                print("seq %4d  %-7s  %8.0f sequences/CPU-s  %8.0f sequences/s wall"
                      % (L, mode, n / cpu, n / wall))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
