"""Export to bert4keras (reloaded in a fresh process), warm start, trainer checkpoints."""
import copy
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf
from bert4keras.backend import K
from bert4keras.models import build_transformer_model

from pretrain.export import checkpoints
from pretrain.export import writer as export
from pretrain.export import check as export_check
from pretrain.models import build as models
from pretrain.config import REPO_ROOT, load_config
from pretrain.data.tokenization import load_vocab
from conftest import export_with_cli
from test_models import randomize, small_cfg

# Every shipped config's export must reload in bert4keras to the same outputs.
ACCEPTANCE = sorted(f[:-5] for f in os.listdir(os.path.join(REPO_ROOT, "configs"))
                    if f.endswith(".json"))


def _corrupt(src, dst, a, b):
    """Copy an export with the tensors of names `a` and `b` swapped."""
    tf.io.gfile.makedirs(dst)
    for f in tf.io.gfile.listdir(src):
        if not f.startswith(checkpoints.CKPT_NAME):
            tf.io.gfile.copy(os.path.join(src, f), os.path.join(dst, f), overwrite=True)
    reader = tf.train.load_checkpoint(os.path.join(src, checkpoints.CKPT_NAME))
    names = sorted(reader.get_variable_to_shape_map())
    swap = {a: b, b: a}
    tf.raw_ops.SaveV2(prefix=os.path.join(dst, checkpoints.CKPT_NAME), tensor_names=names,
                      shape_and_slices=[""] * len(names),
                      tensors=[reader.get_tensor(swap.get(n, n)) for n in names])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{name: (cfg, dir, bundle, diff)} for ACCEPTANCE, plus a corrupted copy."""
    root = tmp_path_factory.mktemp("exports")
    items = []
    for name in ACCEPTANCE:
        cfg = load_config(name)
        if name.endswith("_base"):  # every weight's name and shape, at 2 of 12 layers
            cfg = copy.deepcopy(cfg)
            cfg["model"]["num_hidden_layers"] = 2
        bundle = models.build_model(cfg)
        randomize(bundle)
        items.append((cfg, str(root / name), bundle))
        export.export_bert4keras(cfg, bundle, str(root / name))
    cfg, out, bundle = items[0]
    # Written to TF's in-memory filesystem, like a gs:// export: check_exports
    # must copy it locally for bert4keras (which reads with open()).
    _corrupt(out, "ram://swapped", "bert/encoder/layer_0/attention/self/query/bias",
             "bert/encoder/layer_0/attention/self/key/bias")
    items.append((cfg, "ram://swapped", bundle))
    diffs = export_check.check_exports(items, n_pairs=6, maxlen=48)
    return {name: item + (d,) for name, item, d in zip(ACCEPTANCE + ["swapped"], items, diffs)}


@pytest.mark.tpu_build
@pytest.mark.parametrize("name", ACCEPTANCE)
def test_bert4keras_reload_reproduces_outputs(exported, name):
    cfg, out, bundle, diff = exported[name]
    assert diff == 0.0, "%s: max |diff| %.3g" % (name, diff)  # same float32 ops, same CPU
    # The checkpoint holds exactly the names of bert4keras's variable_mapping().
    bert = bundle.bert
    want = {n for layer, names in bert.variable_mapping().items() if layer in bert.layers
            for n in names}
    got = {n for n, _ in tf.train.list_variables(out)}
    assert got == want
    assert tf.train.latest_checkpoint(out) == os.path.join(out, "bert_model.ckpt")
    with open(os.path.join(out, "vocab.txt"), encoding="utf-8") as f:
        assert f.read().split("\n")[:-1] == load_vocab(cfg).tokens
    with open(os.path.join(out, "bert_config.json")) as f:
        config = json.load(f)
    assert config["vocab_size"] == cfg["model"]["vocab_size"]


@pytest.mark.tpu_build
def test_check_notices_a_swapped_pair_of_zero_free_weights(exported):
    # Two biases swapped in the checkpoint: check_export must see it, and it is
    # far above the trainer's tolerance.
    assert exported["swapped"][3] > 10 * export_check.RELOAD_TOLERANCE


@pytest.mark.tpu_build
def test_simbert_export_has_pool_and_unilm(exported):
    _, out, _, _ = exported["simbert_base"]
    with open(os.path.join(out, checkpoints.INFO_NAME)) as f:
        kwargs = json.load(f)["build_transformer_model"]
    assert kwargs == {"model": "bert", "with_mlm": "linear", "with_pool": "linear",
                      "application": "unilm"}


def test_variable_mapping_weight_count_is_checked():
    # A gated FFN under BERT's 4-name mapping is an error, not a
    # silent truncation.
    with warnings.catch_warnings():  # bert4keras's shared initializer, see models.py
        warnings.simplefilter("ignore")
        bert = build_transformer_model(
            model="bert", vocab_size=100, hidden_size=32, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=32, hidden_act=["gelu", "linear"],
            return_keras_model=False)
    with pytest.raises(ValueError, match="Transformer-0-FeedForward has 6 weights"):
        checkpoints.variable_pairs(bert)


# --------------------------------------------------------------- warm start

def _teacher(tmp_path, with_pool):
    """A small full-vocab (21128) BERT exported in Google format."""
    cfg = small_cfg("roberta_tiny", num_hidden_layers=2, hidden_size=64,
                    num_attention_heads=4, intermediate_size=96, with_pool=with_pool)
    bundle = models.build_model(cfg)
    randomize(bundle, seed=3)
    out = str(tmp_path / ("teacher_pool" if with_pool else "teacher"))
    export.export_bert4keras(cfg, bundle, out)
    return bundle, out


def _student(**model):
    """simbert_tiny's simplified 13585-token vocab on the teacher's shape."""
    fields = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                  intermediate_size=96)
    fields.update(model)
    cfg = small_cfg("simbert_tiny", **fields)
    return cfg, models.build_model(cfg)


@pytest.mark.tpu_build
def test_warm_start_shrinks_vocab_with_keep_tokens(tmp_path):
    teacher, ckpt = _teacher(tmp_path, with_pool="linear")
    cfg, student = _student()
    report = checkpoints.load_pretrained(cfg, student, ckpt)  # keep_tokens from the config
    keep = np.array(load_vocab(cfg).keep_tokens)
    assert len(keep) == 13585 and report["kept_init"] == []
    np.testing.assert_array_equal(
        student.bert.layers["Embedding-Token"].get_weights()[0],
        teacher.bert.layers["Embedding-Token"].get_weights()[0][keep])
    # Same sentence in both id spaces: the student's logits are the teacher's
    # logits at the kept columns (segments all 0, so the UniLM mask is full).
    student_ids = np.array([[2, 50, 800, 3000, 13000, 3]], np.int32)
    segs = np.zeros_like(student_ids)
    pooled, logits = student.encoder.predict([student_ids, segs], verbose=0)
    t_pooled, t_logits = teacher.encoder.predict([keep[student_ids], segs], verbose=0)
    np.testing.assert_allclose(logits, t_logits[..., keep], atol=1e-5)
    np.testing.assert_allclose(pooled, t_pooled, atol=1e-5)
    # An explicit keep_tokens list does the same.
    _, again = _student()
    checkpoints.load_pretrained(cfg, again, ckpt, keep_tokens=list(keep))
    np.testing.assert_array_equal(again.encoder.get_weights()[0], student.encoder.get_weights()[0])


def test_warm_start_refuses_partial_loads(tmp_path):
    _, ckpt = _teacher(tmp_path, with_pool=False)
    cfg, student = _student()
    before = student.encoder.get_weights()
    with pytest.raises(checkpoints.CheckpointMismatchError) as e:
        checkpoints.load_pretrained(cfg, student, ckpt)
    assert "bert/pooler/dense/kernel" in str(e.value) and "bert/pooler/dense/bias" in str(e.value)
    for x, y in zip(before, student.encoder.get_weights()):  # nothing assigned
        np.testing.assert_array_equal(x, y)
    report = checkpoints.load_pretrained(cfg, student, ckpt, allow_missing=("bert/pooler/",))
    assert report["kept_init"] == ["bert/pooler/dense/kernel", "bert/pooler/dense/bias"]

    cfg, wide = _student(hidden_size=32, intermediate_size=64)
    with pytest.raises(checkpoints.CheckpointMismatchError) as e:
        checkpoints.load_pretrained(cfg, wide, ckpt, allow_missing=("bert/pooler/",))
    message = str(e.value)
    assert "shape mismatches" in message
    assert "bert/encoder/layer_1/attention/self/query/kernel: checkpoint [64, 64]" in message
    assert "bert/embeddings/word_embeddings" not in message  # 128 -> 128 fits


# --------------------------------------------------- trainer checkpoints + CLI

@pytest.mark.tpu_build
def test_cli_exports_a_trainer_checkpoint(tmp_path):
    raw_cfg = load_config("roberta_tiny")
    cfg = copy.deepcopy(raw_cfg)
    cfg["model"].update(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                        intermediate_size=64)
    bundle = models.build_model(cfg)
    randomize(bundle, seed=5)
    ckpt = tf.train.Checkpoint(model=bundle.encoder).save(str(tmp_path / "train" / "ckpt"))
    # The trainer's format restores into a fresh bundle, every weight matched.
    fresh = models.build_model(cfg, seed=9)
    checkpoints.restore_training_checkpoint(fresh, ckpt)
    for x, y in zip(bundle.encoder.get_weights(), fresh.encoder.get_weights()):
        np.testing.assert_array_equal(x, y)
    other = models.build_model(small_cfg("roberta_tiny", num_hidden_layers=2, hidden_size=32,
                                         num_attention_heads=2, intermediate_size=64))
    with pytest.raises(checkpoints.CheckpointMismatchError):
        checkpoints.restore_training_checkpoint(other, ckpt)

    # The CLI on the same checkpoint writes the same weights.
    out = export_with_cli(tmp_path, raw_cfg["path"], dict(
        num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64),
        os.path.dirname(ckpt))
    reader = tf.train.load_checkpoint(out)
    for name, weight in checkpoints.variable_pairs(bundle.bert):
        np.testing.assert_array_equal(reader.get_tensor(name), K.get_value(weight))


# ------------------------------------- trainer exports: atomic, current, checked

from test_train import records_dir, tiny_config  # noqa: E402,F401  (module fixture)


def _export_weights(out):
    reader = tf.train.load_checkpoint(os.path.join(out, checkpoints.CKPT_NAME))
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}


def _model_weights(bundle):
    return {n: K.get_value(w) for n, w in checkpoints.variable_pairs(bundle.bert)}


def _run_phase(tmp_path, records_dir, steps, out):
    from pretrain.training import trainer as train
    from pretrain.training.tasks import MlmTask
    cfg = tiny_config(tmp_path, phases=((128, steps),))
    # Growing the phase on resume is a train-section change the run must be told of.
    trainer = train.Trainer(cfg, MlmTask(cfg, records_dir), out, steps_per_loop=3, xla=False,
                            allow_train_changes=True)
    return trainer, trainer.run()[0]


def test_trainer_export_is_rewritten_when_half_written_or_stale(tmp_path, records_dir):
    out = str(tmp_path / "run")
    trainer, path = _run_phase(tmp_path, records_dir, 3, out)
    with open(os.path.join(path, checkpoints.INFO_NAME)) as f:
        info = json.load(f)
    assert info["source"]["checkpoint"] == "ckpt-3"
    assert info["reload_max_abs_diff"] == 0.0
    # A kill between files: the weights and the info file never got written.
    for name in os.listdir(path):
        if name.startswith(checkpoints.CKPT_NAME + ".data") or name == checkpoints.INFO_NAME:
            os.remove(os.path.join(path, name))
    trainer, path = _run_phase(tmp_path, records_dir, 3, out)
    assert os.path.exists(os.path.join(path, checkpoints.INFO_NAME))
    got = _export_weights(path)
    for name, value in _model_weights(trainer.bundle).items():
        np.testing.assert_array_equal(got[name], value)
    # The phase's steps grew: it trains on, and the export follows the new checkpoint.
    trainer, path = _run_phase(tmp_path, records_dir, 5, out)
    with open(os.path.join(path, checkpoints.INFO_NAME)) as f:
        assert json.load(f)["source"]["checkpoint"] == "ckpt-5"
    got = _export_weights(path)
    for name, value in _model_weights(trainer.bundle).items():
        np.testing.assert_array_equal(got[name], value)
    assert sorted(os.listdir(os.path.dirname(path))) == ["p1_seq128"]  # no staging left


def test_a_reload_that_differs_fails_the_run_and_keeps_the_last_good_export(
        tmp_path, records_dir, monkeypatch):
    from pretrain.training import trainer as train
    out = str(tmp_path / "run")
    _, path = _run_phase(tmp_path, records_dir, 3, out)
    before = _export_weights(path)
    bias = "cls/predictions/output_bias"
    write = checkpoints._to_checkpoint_layout

    def off_by_1e_3(bert, name, value):  # a checkpoint that is wrong by 1e-3 in one bias
        value = write(bert, name, value)
        return value + np.float32(1e-3) if name == bias else value

    monkeypatch.setattr(checkpoints, "_to_checkpoint_layout", off_by_1e_3)
    with pytest.raises(train.TrainingError, match=r"reload .* differs .* by [0-9.e-]+ > "
                       r"tolerance 0\.0001"):
        _run_phase(tmp_path, records_dir, 5, out)
    after = _export_weights(path)
    assert sorted(after) == sorted(before)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    assert sorted(os.listdir(os.path.dirname(path))) == ["p1_seq128"]


def test_relative_output_from_another_working_directory(tmp_path, records_dir, monkeypatch):
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    _, path = _run_phase(tmp_path, records_dir, 3, os.path.join("runs", "rel"))
    assert path == os.path.join("runs", "rel", "export", "p1_seq128")
    with open(work / path / checkpoints.INFO_NAME) as f:
        assert json.load(f)["reload_max_abs_diff"] == 0.0


def test_cli_relative_output_with_check_from_another_directory(tmp_path):
    raw = json.load(open(load_config("roberta_tiny")["path"]))
    raw.pop("smoke")
    raw["model"].update(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                        intermediate_size=64, embedding_size=16)
    raw["tokenizer"]["vocab"] = os.path.join(REPO_ROOT, "data", "vocab.txt")
    (tmp_path / "tiny.json").write_text(json.dumps(raw))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    result = subprocess.run([sys.executable, "-m", "pretrain.export", "--config", "tiny.json",
                             "--output", "rel/out", "--check"], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max |trained - bert4keras reload|: 0" in result.stdout
    assert os.path.exists(tmp_path / "rel" / "out" / checkpoints.INFO_NAME)


def test_reload_check_runs_with_gpus_hidden(tmp_path, capfd):
    cfg = small_cfg("roberta_tiny", num_hidden_layers=1, hidden_size=32,
                    num_attention_heads=2, intermediate_size=64, embedding_size=16)
    bundle = models.build_model(cfg)
    out = str(tmp_path / "e")
    export.export_bert4keras(cfg, bundle, out)
    assert export_check.check_export(cfg, out, bundle) == 0.0
    assert "reload check process: CUDA_VISIBLE_DEVICES=-1" in capfd.readouterr().out


def _cli(args, cwd):
    return subprocess.run([sys.executable] + args, cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO_ROOT))


def _one_line_error(result, *needles):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [l for l in result.stderr.splitlines() if l.startswith(("error:", "E"))
             and all(n in l for n in needles)]
    assert lines, result.stderr[-3000:]


def test_clis_refuse_bad_paths_in_one_line(tmp_path):
    """--output naming a file; a SimBERT --model that is no export, or an MLM one."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args in (["pretrain/run.py", "--config", "roberta_tiny", "--smoke"],
                 ["pretrain/run.py", "--config", "roberta_tiny", "--data", str(tmp_path)],
                 ["-m", "pretrain.export", "--config", "roberta_tiny"]):
        for output in (str(afile), str(afile / "sub")):
            _one_line_error(_cli(args + ["--output", output], REPO_ROOT),
                            "--output", "is a file, not a directory", "give a directory")
    _one_line_error(_cli(["-m", "pretrain.simbert", "encode", "--model", str(tmp_path),
                          "--text", "你好"], REPO_ROOT),
                    "--model", "no bert_config.json", "SimBERT export")
    cfg = small_cfg("roberta_tiny", num_hidden_layers=1, hidden_size=32,
                    num_attention_heads=2, intermediate_size=64, embedding_size=16)
    mlm = str(tmp_path / "mlm")
    export.export_bert4keras(cfg, models.build_model(cfg), mlm)
    _one_line_error(_cli(["-m", "pretrain.simbert", "encode", "--model", mlm,
                          "--text", "你好"], REPO_ROOT),
                    "--model", "MLM-only", "bert/pooler/dense", "simbert")


# ------------------------------------------- warm start from Google's own layout

GOOGLE = dict(vocab=21128, hidden=64, layers=2, heads=4, ffn=96, positions=512, types=2)


def _google_layout_checkpoint(prefix, seed=11):
    """A checkpoint laid out like Google's chinese_L-12_H-768_A-12/bert_model.ckpt
    (names and shapes from Google BERT's modeling.py, plus the NSP head,
    global_step and the Adam slots), random values, written by a TF1 Saver."""
    V, H, I = GOOGLE["vocab"], GOOGLE["hidden"], GOOGLE["ffn"]
    shapes = {"bert/embeddings/word_embeddings": [V, H],
              "bert/embeddings/token_type_embeddings": [GOOGLE["types"], H],
              "bert/embeddings/position_embeddings": [GOOGLE["positions"], H],
              "bert/embeddings/LayerNorm/gamma": [H], "bert/embeddings/LayerNorm/beta": [H]}
    for i in range(GOOGLE["layers"]):
        layer = "bert/encoder/layer_%d/" % i
        for part in ("attention/self/query", "attention/self/key", "attention/self/value",
                     "attention/output/dense"):
            shapes[layer + part + "/kernel"], shapes[layer + part + "/bias"] = [H, H], [H]
        shapes[layer + "intermediate/dense/kernel"] = [H, I]
        shapes[layer + "intermediate/dense/bias"] = [I]
        shapes[layer + "output/dense/kernel"], shapes[layer + "output/dense/bias"] = [I, H], [H]
        for norm in ("attention/output/LayerNorm", "output/LayerNorm"):
            shapes[layer + norm + "/gamma"] = shapes[layer + norm + "/beta"] = [H]
    shapes.update({
        "bert/pooler/dense/kernel": [H, H], "bert/pooler/dense/bias": [H],
        "cls/predictions/transform/dense/kernel": [H, H],
        "cls/predictions/transform/dense/bias": [H],
        "cls/predictions/transform/LayerNorm/gamma": [H],
        "cls/predictions/transform/LayerNorm/beta": [H],
        "cls/predictions/output_bias": [V],
        "cls/seq_relationship/output_weights": [2, H], "cls/seq_relationship/output_bias": [2]})
    rng = np.random.default_rng(seed)
    values = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    graph = tf.Graph()
    with graph.as_default():
        variables = [tf.compat.v1.Variable(v, name=n) for n, v in values.items()]
        for n, v in values.items():  # AdamWeightDecayOptimizer's slots
            variables.append(tf.compat.v1.Variable(np.zeros_like(v), name=n + "/adam_m"))
            variables.append(tf.compat.v1.Variable(np.ones_like(v), name=n + "/adam_v"))
        variables.append(tf.compat.v1.Variable(np.int64(1000000), name="global_step"))
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, prefix, write_meta_graph=False, write_state=False)
    return values


@pytest.mark.tpu_build
@pytest.mark.parametrize("name", ["roberta_tiny", "simbert_tiny"])
def test_warm_start_from_googles_layout(tmp_path, name):
    from pretrain import run
    from pretrain.training import trainer as train
    prefix = str(tmp_path / "chinese_L-2_H-64_A-4" / "bert_model.ckpt")
    values = _google_layout_checkpoint(prefix)
    names = {n for n, _ in tf.train.list_variables(prefix)}
    assert "global_step" in names and "cls/seq_relationship/output_weights" in names
    assert "bert/encoder/layer_1/output/dense/kernel/adam_v" in names
    cfg = small_cfg(name, embedding_size=None, hidden_size=GOOGLE["hidden"],
                    num_hidden_layers=GOOGLE["layers"], num_attention_heads=GOOGLE["heads"],
                    intermediate_size=GOOGLE["ffn"])
    data = run.SAMPLE_GROUPS if name.startswith("simbert") else str(tmp_path)
    trainer = train.Trainer(cfg, run.make_task(cfg, data), str(tmp_path / "run"),
                            init_checkpoint=prefix)
    trainer._start_weights(0)  # what a run with --init_checkpoint does first
    keep = load_vocab(cfg).keep_tokens
    assert (keep is None) == (name == "roberta_tiny")
    if keep is not None:  # simbert_tiny's simplified vocab: 13585 of the 21128 rows
        assert len(keep) == cfg["model"]["vocab_size"] == 13585
    bert = trainer.bundle.bert
    checked = 0
    for layer, ckpt_names in bert.variable_mapping().items():  # bert4keras's own names
        if layer not in bert.layers:
            continue
        for ckpt_name, weight in zip(ckpt_names, bert.layers[layer].weights):
            want = values[ckpt_name]
            if keep is not None and ckpt_name in ("bert/embeddings/word_embeddings",
                                                  "cls/predictions/output_bias"):
                want = want[keep]
            np.testing.assert_array_equal(K.get_value(weight), want, err_msg=ckpt_name)
            checked += 1
    n_weights = len(trainer.bundle.encoder.weights)
    assert checked == n_weights == len(values) - 2 - (0 if cfg["model"]["with_pool"] else 2)
    report = checkpoints.load_pretrained(cfg, models.build_model(cfg), prefix)
    assert report["unused"] == sorted(
        ["cls/seq_relationship/output_bias", "cls/seq_relationship/output_weights"]
        + ([] if cfg["model"]["with_pool"] else ["bert/pooler/dense/bias",
                                                 "bert/pooler/dense/kernel"]))


def test_publish_to_a_filesystem_without_rename(tmp_path):
    """The gs:// path (delete, copy, info file last), through a file:// URL."""
    cfg = small_cfg("roberta_tiny", num_hidden_layers=1, hidden_size=32,
                    num_attention_heads=2, intermediate_size=64, embedding_size=16)
    out = "file://%s/published/e" % tmp_path
    for seed in (1, 2):
        bundle = models.build_model(cfg)
        randomize(bundle, seed=seed)
        prefix, diff = export.publish_export(cfg, bundle, out, {"checkpoint": "ckpt-%d" % seed})
        assert prefix == out + "/" + checkpoints.CKPT_NAME and diff == 0.0
        info = export.read_info(out)
        assert info["source"] == {"checkpoint": "ckpt-%d" % seed}
        assert info["reload_max_abs_diff"] == 0.0
        reader = tf.train.load_checkpoint(prefix)
        for name, value in _model_weights(bundle).items():
            np.testing.assert_array_equal(reader.get_tensor(name), value)
    assert os.listdir(tmp_path / "published") == ["e"]  # no staging left
