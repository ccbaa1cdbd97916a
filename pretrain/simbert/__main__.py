"""`python -m pretrain.simbert {encode|search|generate|eval}`: encode, search and
paraphrase with a SimBERT export, or score it (pretrain/simbert/use.py).

    python -m pretrain.simbert encode --model EXPORT --text 今天天气不错 --output v.npy
    python -m pretrain.simbert search --model EXPORT --input queries.txt --corpus corpus.txt
    python -m pretrain.simbert generate --model EXPORT --text 今天天气不错 --n 20 --k 5
    python -m pretrain.simbert eval --model EXPORT --pairs lcqmc_dev.tsv --groups groups.json
"""
from absl import flags

from pretrain import cli, config, fs
from pretrain.config import note_renamed

FLAGS = flags.FLAGS
COMMANDS = ("encode", "search", "generate", "eval")


def define_flags():
    flags.DEFINE_string("model", None, "bert4keras export dir (bert_config.json, "
                        "vocab.txt, bert_model.ckpt)")
    flags.DEFINE_string("config", "simbert_tiny", "config for data settings (maxlen, "
                        "heldout_fraction, seq_len)")
    flags.DEFINE_integer("maxlen", None, "tokens per sentence (default: config simbert.maxlen)")
    flags.DEFINE_multi_string("text", [], "encode/search/generate: input text (repeatable)")
    flags.DEFINE_string("input", None, "encode/search: file with one text per line")
    flags.DEFINE_string("output", None, "encode: write the vectors here (.npy)")
    flags.DEFINE_string("corpus", None, "search: file with one candidate per line")
    flags.DEFINE_integer("k", 10, "search/generate: how many results")
    flags.DEFINE_integer("n", 20, "generate: how many samples to draw")
    flags.DEFINE_integer("topk", 5, "generate: sample among the top-k tokens (0: off)")
    flags.DEFINE_float("topp", None, "generate: nucleus sampling mass")
    flags.DEFINE_integer("seed", 0, "generate: numpy seed")
    flags.DEFINE_string("pairs", None, "eval: LCQMC-format file s1<TAB>s2<TAB>label")
    flags.DEFINE_integer("limit", None, "eval: only the first N pairs")
    flags.DEFINE_string("groups", None, "eval: SimBERT group file for retrieval + losses")
    flags.DEFINE_enum("groups_split", "heldout", ["train", "heldout", "all", "validation"],
                      "eval: which groups of --groups to use (the heldout split: "
                      "data.heldout_fraction of them; 'validation' is its deprecated name)")
    flags.DEFINE_integer("batch_size", 32, "eval: rows per batch for the held-out losses")


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise cli.UsageError("expected one command, {%s}, got %s: python -m pretrain.simbert "
                             "COMMAND --model DIR ..." % ("|".join(COMMANDS),
                                                          " ".join(argv[1:]) or "none"))
    command = argv[1]
    if not FLAGS.model:
        raise cli.UsageError("--model EXPORT_DIR is required")
    if command == "search" and not FLAGS.corpus:
        raise cli.UsageError("search needs --corpus FILE")
    if command == "eval" and not FLAGS.pairs and not FLAGS.groups:
        raise cli.UsageError("eval needs --pairs FILE and/or --groups FILE")
    if command == "encode" and FLAGS.output:
        fs.check_output_file(FLAGS.output, fs.is_npy, "NumPy .npy file")
    cli.check_input("--model", FLAGS.model, what="export dir")
    for flag in ("input", "corpus", "pairs", "groups"):
        cli.check_input("--" + flag, FLAGS[flag].value)
    if FLAGS.groups_split == "validation":
        note_renamed("--groups_split validation", "--groups_split heldout")
        FLAGS.groups_split = "heldout"
    cfg = config.load_config(FLAGS.config)
    if FLAGS.maxlen:
        cfg = config.override(cfg, ["simbert.maxlen=%d" % FLAGS.maxlen])
    # lazy: TensorFlow loads once the flags, config and paths are checked
    from pretrain.simbert import use
    use.run(command, cfg, FLAGS)


if __name__ == "__main__":
    cli.start(main, define_flags)
