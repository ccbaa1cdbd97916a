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
