"""HF transformers export: same MLM logits (and SimBERT pooled vector) as the TF model."""
import numpy as np
import pytest

pytest.importorskip("torch", reason="HF export is the optional extra 'hf' (torch)")
pytest.importorskip("transformers", reason="HF export is the optional extra 'hf'")

from pretrain.export import check as export_check  # noqa: E402
from pretrain.export import hf as hf_export
from pretrain.models import build as models
from pretrain.config import load_config  # noqa: E402
from test_models import randomize, small_cfg  # noqa: E402


@pytest.mark.parametrize("name,model,hf_class", [
    # real config: factorised embedding 128 -> 312, ElectraForMaskedLM
    ("roberta_tiny", {}, "ElectraForMaskedLM"),
    # BERT-shaped (embedding = hidden) with SimBERT's linear pooler
    ("simbert_tiny", dict(embedding_size=None, hidden_size=64, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=96), "BertForMaskedLM"),
])
def test_hf_matches_tf(tmp_path, name, model, hf_class):
    import json
    from transformers import AutoTokenizer
    cfg = small_cfg(name, **model) if model else load_config(name)
    bundle = models.build_model(cfg)
    randomize(bundle, seed=7)
    out = str(tmp_path / "hf")
    hf_export.export_hf(cfg, bundle, out)
    with open(tmp_path / "hf" / "config.json") as f:
        assert json.load(f)["architectures"] == [hf_class]
    diff = hf_export.check_hf(cfg, out, bundle)
    # README: within 2e-5 (torch and TF sum in another order; measured 1.2e-5
    # for roberta_tiny, 2.4e-6 for the BERT-shaped SimBERT)
    assert diff <= 2e-5, diff
    # The saved tokenizer gives bert4keras's ids on real text.
    pairs = export_check.sample_pairs(4)
    ids, segs = export_check.encode_pairs(out, pairs, 64, do_lower_case=True)
    enc = AutoTokenizer.from_pretrained(out)([a for a, _ in pairs], [b for _, b in pairs],
                                             truncation="longest_first", max_length=64,
                                             padding=True)
    np.testing.assert_array_equal(np.array(enc["input_ids"]), ids)
    np.testing.assert_array_equal(np.array(enc["token_type_ids"]), segs)


def test_hf_refuses_t5s():
    bundle = models.build_model(small_cfg("t5s_tiny", num_hidden_layers=1, hidden_size=32,
                                          embedding_size=16, num_attention_heads=2,
                                          attention_head_size=16, intermediate_size=32))
    with pytest.raises(ValueError, match="T5s has no faithful transformers class"):
        hf_export.hf_weights(load_config("t5s_tiny"), bundle)


def test_simbert_export_is_a_sentence_transformer(tmp_path):
    """SentenceTransformer(export) gives SimBERT.encode's vectors and LCQMC Spearman."""
    st = pytest.importorskip("sentence_transformers",
                             reason="sentence-transformers is not installed (pip install "
                                    "sentence-transformers)")
    from conftest import shared_path
    from pretrain.export import writer
    from pretrain.simbert import evaluate as simbert_eval
    from pretrain.simbert.data import read_pairs
    from pretrain.simbert.use import SimBERT
    s1, s2, labels = read_pairs(shared_path("similarity", "lcqmc", "lcqmc_dev.tsv"), limit=500)
    cfg = load_config("simbert_tiny")  # the real tiny SimBERT: 4 x 312, embedding 128
    bundle = models.build_model(cfg)
    randomize(bundle, seed=3)  # the pooler bias and every norm scale count too
    b4k, hf = str(tmp_path / "b4k"), str(tmp_path / "hf")
    writer.publish_export(cfg, bundle, b4k, check=False)
    hf_export.export_hf(cfg, bundle, hf)
    project = SimBERT.load(b4k, maxlen=cfg["simbert"]["maxlen"])
    model = st.SentenceTransformer(hf, device="cpu")
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Dense", "Normalize"]
    texts = sorted(set(s1[:64]) | set(s2[:64]))
    want, got = project.encode(texts), model.encode(texts, batch_size=32)
    assert np.abs(want - got).max() <= 1e-5, np.abs(want - got).max()
    spearman = [simbert_eval.pair_metrics(simbert_eval.cosine_scores(encode, s1, s2),
                                          labels)["spearman"]
                for encode in (project.encode, lambda t: model.encode(t, batch_size=64))]
    assert abs(spearman[0] - spearman[1]) <= 1e-4, spearman


def test_pooling_flag_writes_a_mean_pooled_roberta(tmp_path):
    st = pytest.importorskip("sentence_transformers",
                             reason="sentence-transformers is not installed")
    import torch
    from transformers import AutoModel, AutoTokenizer
    cfg = small_cfg("roberta_tiny", num_hidden_layers=1)
    bundle = models.build_model(cfg)
    out = str(tmp_path / "hf")
    hf_export.export_hf(cfg, bundle, out, pooling="mean")
    model = st.SentenceTransformer(out, device="cpu")
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Normalize"]
    texts = [a for a, _ in export_check.sample_pairs(6)]
    # the oracle: transformers' encoder, mean over real tokens, unit length
    enc = AutoTokenizer.from_pretrained(out)(texts, padding=True, truncation=True,
                                             max_length=model.max_seq_length,
                                             return_tensors="pt")
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(out)(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * mask).sum(1) / mask.sum(1)
    want = torch.nn.functional.normalize(mean, dim=-1).numpy()
    assert np.abs(model.encode(texts) - want).max() <= 1e-5


def test_cli_refuses_what_has_no_faithful_export_in_one_line(tmp_path):
    import subprocess
    import sys
    from conftest import REPO_ROOT
    for args, needle in (
            (["--config", "t5s_tiny"], "error: T5s has no faithful transformers class"),
            (["--config", "simbert_tiny", "--pooling", "mean"],
             "error: a model with a pooler pools [CLS]; --pooling mean does not apply")):
        done = subprocess.run([sys.executable, "-m", "pretrain.export", "--format", "hf",
                               "--output", str(tmp_path / "out")] + args,
                              capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
        assert done.returncode == 2, done.stderr[-2000:]
        errors = [l for l in done.stderr.splitlines() if l.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith(needle), done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        assert not (tmp_path / "out").exists()
