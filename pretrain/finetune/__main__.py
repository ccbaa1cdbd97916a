"""`python -m pretrain.finetune`: fine-tune an export on a classification or
sentence-pair task, score it on dev/test, and compare it with baselines.

    python -m pretrain.finetune --model runs/tiny/export/phase1_seq128 --task pair \\
        --train train.tsv --dev dev.tsv --test test.tsv --output runs/ft --baselines

The model, its training and what OUTPUT holds: pretrain/finetune/classifier.py.
"""
from absl import flags

from pretrain import cli, fs
from pretrain.runtime import tpu_runtime

FLAGS = flags.FLAGS
# The settings are flags, one each (there is no config file to --set into).
SETTINGS = ("model", "task", "train", "dev", "test", "output", "epochs", "batch_size",
            "learning_rate", "warmup_proportion", "maxlen", "seed", "dropout",
            "max_bad_fraction", "baselines", "xla", "labels")


def define_flags(flag_values=None):
    """The command's flags, on absl's global FLAGS unless `flag_values` is given."""
    fv = {"flag_values": flags.FLAGS if flag_values is None else flag_values}
    flags.DEFINE_string("model", None, "Export dir to fine-tune (bert_config.json, vocab.txt, "
                        "bert_model.ckpt, pretrain_export.json), as `pretrain.export` or a "
                        "training run writes it: roberta_*, simbert_*, t5s_*.", **fv)
    flags.DEFINE_enum("task", None, ["classification", "pair"], "classification: one text "
                      "per example; pair: two texts (e.g. LCQMC), encoded as [CLS] a [SEP] b "
                      "[SEP].", **fv)
    flags.DEFINE_string("train", None, "Train file: TSV (text<TAB>label or text_a<TAB>text_b"
                        "<TAB>label) or JSON lines (sentence/label or sentence1/sentence2/"
                        "label), format auto-detected; .gz/.bz2 and gs:// are read too.", **fv)
    flags.DEFINE_string("dev", None, "Dev file (same formats); scored after every epoch, its "
                        "best accuracy picks the epoch that is kept.", **fv)
    flags.DEFINE_string("test", None, "Optional test file (same formats), scored once with "
                        "the kept epoch.", **fv)
    flags.DEFINE_string("output", None, "Output dir: model/, metrics.json, predictions_*.tsv, "
                        "tensorboard/ (local or gs://).", **fv)
    flags.DEFINE_integer("epochs", 3, "Passes over the train set.", **fv)
    flags.DEFINE_integer("batch_size", 32, "Global batch size (examples per update).", **fv)
    flags.DEFINE_float("learning_rate", 1e-4, "Peak AdamW learning rate.", **fv)
    flags.DEFINE_float("warmup_proportion", 0.1, "Fraction of the updates with linear warmup; "
                       "then linear decay to 0.", **fv)
    flags.DEFINE_integer("maxlen", 128, "Tokens per example, [CLS]/[SEP] included; longer "
                         "texts are truncated (in a pair, the longer of the two first), shorter "
                         "ones padded.", **fv)
    flags.DEFINE_integer("seed", 0, "Seed of the classifier init, the shuffles and dropout.", **fv)
    flags.DEFINE_float("dropout", 0.1, "Dropout rate on the [CLS] vector.", **fv)
    flags.DEFINE_float("max_bad_fraction", 0.05, "Largest fraction of bad lines per file "
                       "(each reported as file:line: reason and skipped) before stopping.", **fv)
    flags.DEFINE_list("labels", None, "The label set, e.g. 0,1 (its order is the class "
                      "order): a row with another label is a bad line (file:line, counted, "
                      "skipped within --max_bad_fraction). Without it the train labels are "
                      "the classes, and one under 1%% of train rows or absent from dev/test is "
                      "warned of.", **fv)
    flags.DEFINE_bool("baselines", False, "Also score the majority class, char n-gram TF-IDF + "
                      "logistic regression and the same architecture from random init "
                      "(written under OUTPUT/random_init) on the same splits.", **fv)
    cli.define_device_flags(flag_values)
    flags.mark_flags_as_required(["model", "task", "train", "dev", "output"], **fv)


def main(argv):
    if len(argv) != 1:
        raise cli.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    args = {k: FLAGS[k].value for k in SETTINGS}
    tpu_runtime.check_local(FLAGS.tpu)
    fs.check_output_dir(args["output"],
                        owns=lambda names: fs.is_finetune_output(args["output"], names),
                        what="fine-tuning output")
    cli.check_input("--model", args["model"], what="export dir")
    for split in ("train", "dev", "test"):
        cli.check_input("--" + split, args[split])
    # lazy: TensorFlow loads once the flags and paths are checked
    from pretrain.finetune import classifier
    from pretrain.runtime.strategy import make_strategy
    strategy = make_strategy(FLAGS.tpu, FLAGS.tpu_timeout, allow_cpu=FLAGS.allow_cpu)
    classifier.run(args, strategy)


if __name__ == "__main__":
    cli.start(main, define_flags)
