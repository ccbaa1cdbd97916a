"""Export to a Hugging Face `transformers` model directory (optional extra "hf").

Which class, and why it is faithful:
- embedding_size == hidden_size: `BertForMaskedLM` (same post-LN blocks, erf
  GELU, LayerNorm eps 1e-12, tied MLM decoder with its own bias);
- embedding_size < hidden_size (RoBERTa Tiny/Small and models of their shape):
  `ElectraForMaskedLM`, whose embeddings (word+position+type -> LayerNorm at
  embedding_size -> `embeddings_project` to hidden) and generator head
  (Dense(hidden->embedding_size), GELU, LayerNorm, tied decoder + bias) are
  bert4keras's factorised BERT layer for layer.
- A with_pool='linear' pooler is Dense with a *linear* activation; BertPooler applies
  tanh, so it is written separately as `pooler.safetensors` (`dense.weight`,
  `dense.bias`): pooled = F.linear(last_hidden_state[:, 0], W, b). The UniLM
  mask is not reproduced in HF (its encoder takes padding masks only). The
  same weights are the `Dense` module of the sentence-transformers folder
  (`st_folder`) that an export with a pooler also is.
- T5s has no faithful HF class (segment embeddings, the low-rank mapping and
  the MLM head are not in T5EncoderModel, which also uses tanh-GELU), so it is
  refused with that reason.

Every export gets a model card, README.md (`model_card`). Names come from the
Google checkpoint names of `checkpoints.variable_pairs`, so
this module never touches bert4keras layers directly.
"""
import json
import os
import re

import numpy as np
from bert4keras.backend import K

from pretrain.export import check as export_check
from pretrain.export import model_card, st_folder
from pretrain.export.checkpoints import variable_pairs
from pretrain.data.tokenization import load_vocab
from pretrain.errors import PretrainError

POOLER_FILE = "pooler.safetensors"


class HFExportError(PretrainError, ValueError):
    """The model or the flags have no faithful HF export; the message says why."""


def _check_supported(cfg):
    m = cfg["model"]
    if m["type"] == "t5s":
        raise HFExportError("T5s has no faithful transformers class (T5EncoderModel lacks "
                         "segment embeddings, the low-rank mapping and the MLM head, and "
                         "uses tanh-GELU); export it with --format bert4keras")
    if m["hidden_act"] != "gelu":
        raise HFExportError("HF export supports hidden_act 'gelu' (erf) only, got %r"
                         % (m["hidden_act"],))
    size = m["attention_head_size"]
    if size is not None and size * m["num_attention_heads"] != m["hidden_size"]:
        raise HFExportError("HF BERT needs attention_head_size = hidden_size / heads")


def _factorised(cfg):
    e = cfg["model"]["embedding_size"]
    return e is not None and e != cfg["model"]["hidden_size"]


def hf_name(name, electra):
    """Google BERT checkpoint name -> transformers state-dict name."""
    head = "generator_predictions." if electra else "cls.predictions.transform."
    for old, new in (("bert/encoder/embedding_hidden_mapping_in/", "electra/embeddings_project/"),
                     ("cls/predictions/transform/", head.replace(".", "/")),
                     ("cls/predictions/output_bias",
                      "generator_lm_head/bias" if electra else "cls/predictions/bias"),
                     ("bert/", "electra/" if electra else "bert/")):
        if name.startswith(old):
            name = new + name[len(old):]
            break
    name = re.sub(r"layer_(\d+)", r"layer/\1", name)
    name = re.sub(r"/(kernel|gamma)$", "/weight", name)
    name = re.sub(r"/beta$", "/bias", name)
    name = re.sub(r"_embeddings$", "_embeddings/weight", name)
    return name.replace("/", ".")


def hf_weights(cfg, bundle):
    """(transformers config, model state dict, pooler state dict) as NumPy arrays."""
    _check_supported(cfg)
    electra = _factorised(cfg)
    pairs = variable_pairs(bundle.bert)
    values = K.batch_get_value([w for _, w in pairs])
    state, pooler = {}, {}
    for (name, _), value in zip(pairs, values):
        value = np.asarray(value, np.float32)
        if name.endswith("/kernel"):
            value = np.ascontiguousarray(value.T)  # torch Linear stores [out, in]
        if name.startswith("bert/pooler/dense/"):
            pooler["dense." + hf_name(name, False).rsplit(".", 1)[1]] = value
            continue
        state[hf_name(name, electra)] = value
    word = "%s.embeddings.word_embeddings.weight" % ("electra" if electra else "bert")
    if electra:
        state["generator_lm_head.weight"] = state[word]
    else:
        state["cls.predictions.decoder.weight"] = state[word]
        state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
    m = cfg["model"]
    config = dict(vocab_size=m["vocab_size"], hidden_size=m["hidden_size"],
                  num_hidden_layers=m["num_hidden_layers"],
                  num_attention_heads=m["num_attention_heads"],
                  intermediate_size=m["intermediate_size"], hidden_act="gelu",
                  hidden_dropout_prob=m["hidden_dropout_prob"],
                  attention_probs_dropout_prob=m["attention_probs_dropout_prob"],
                  max_position_embeddings=m["max_position_embeddings"],
                  type_vocab_size=m["type_vocab_size"],
                  # bert4keras's BERT builds every LayerNormalization with a fixed
                  # epsilon of 1e-12 (no config key changes it)
                  initializer_range=m["initializer_range"], layer_norm_eps=1e-12,
                  pad_token_id=0)
    if electra:
        config["embedding_size"] = m["embedding_size"]
    return config, state, pooler


def export_hf(cfg, bundle, out_dir, pooling=None, max_seq_length=None, facts=None,
              license="other"):
    """Write a `from_pretrained`-loadable directory (+ vocab, tokenizer config).

    A model with a pooler, or any model given `pooling` ("cls" or
    "mean"), is also written as a sentence-transformers folder (`st_folder`):
    With a pooler it is [CLS] -> the linear pooler -> unit length.
    max_seq_length: the sentence-transformers truncation (default: the config's
    task's own section's maxlen, else max_position_embeddings). facts: the run's
    (`model_card.run_facts`) for the README.md model card.
    """
    config, state, pooler = hf_weights(cfg, bundle)
    try:
        # lazy: torch and transformers are the optional extra "hf"
        import torch
        from safetensors.torch import save_file
        from transformers import (BertConfig, BertForMaskedLM, BertTokenizer,
                                  ElectraConfig, ElectraForMaskedLM)
    except ImportError as e:
        raise HFExportError("--format hf needs the extra 'hf' (%s); see docs/export.md, "
                            "'Installing the HF and ONNX extras without CUDA'" % e) from None
    if pooler and cfg["model"]["with_pool"] != "linear":
        raise HFExportError("the sentence-transformers folder reproduces a linear pooler only, "
                         "got with_pool=%r" % (cfg["model"]["with_pool"],))
    if pooler and pooling not in (None, "cls"):
        raise HFExportError("a model with a pooler pools [CLS]; --pooling %s does not apply"
                         % pooling)
    if "embedding_size" in config:
        model = ElectraForMaskedLM(ElectraConfig(**config))
    else:
        model = BertForMaskedLM(BertConfig(**config))
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    want = set(model.state_dict())
    if set(tensors) != want:
        raise ValueError("HF state dict mismatch: missing %s, unexpected %s" % (
            sorted(want - set(tensors)), sorted(set(tensors) - want)))
    model.load_state_dict(tensors, strict=True)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    vocab_path = os.path.join(out_dir, "vocab.txt")
    load_vocab(cfg).write(vocab_path)
    BertTokenizer(vocab_path, do_lower_case=cfg["tokenizer"]["do_lower_case"]).save_pretrained(
        out_dir)
    if pooler:
        save_file({k: torch.from_numpy(v) for k, v in pooler.items()},
                  os.path.join(out_dir, POOLER_FILE))
        with open(os.path.join(out_dir, "pooler_config.json"), "w") as f:
            json.dump({"activation": cfg["model"]["with_pool"], "input": "[CLS] hidden state",
                       "file": POOLER_FILE}, f, indent=2)
        pooling = "cls"
    if pooling is not None:
        m = cfg["model"]
        task_section = cfg.get(cfg["data"]["task"]) or {}  # e.g. a sentence task's maxlen
        st_folder.write_st_folder(
            out_dir, m["hidden_size"], pooling,
            max_seq_length or task_section.get("maxlen") or m["max_position_embeddings"],
            dense={k.split(".")[1]: torch.from_numpy(v) for k, v in pooler.items()} or None)
    n_params = sum(p.numel() for p in model.parameters()) + sum(v.size for v in pooler.values())
    model_card.write_card(out_dir, cfg, n_params, type(model).__name__, facts,
                          sentence=pooling is not None, license=license)
    return out_dir


def hf_outputs(out_dir, ids, segs):
    """[pooled (if any), MLM logits] of the HF directory, loaded with from_pretrained."""
    # lazy: torch and transformers are the optional extra "hf"
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM
    model = AutoModelForMaskedLM.from_pretrained(out_dir).eval()
    ids_t = torch.from_numpy(ids.astype(np.int64))
    with torch.no_grad():
        out = model(input_ids=ids_t, token_type_ids=torch.from_numpy(segs.astype(np.int64)),
                    attention_mask=(ids_t > 0).long(), output_hidden_states=True)
    outputs = [out.logits.numpy()]
    pooler_path = os.path.join(out_dir, POOLER_FILE)
    if os.path.exists(pooler_path):
        p = load_file(pooler_path)
        cls = out.hidden_states[-1][:, 0]
        outputs.insert(0, torch.nn.functional.linear(cls, p["dense.weight"],
                                                     p["dense.bias"]).numpy())
    return outputs


def check_hf(cfg, out_dir, bundle, n_pairs=8, maxlen=64):
    """Max |TF - HF| over the MLM logits (real tokens) and the pooled vector.

    Compared with application 'encoder' semantics: for a UniLM config the
    sentence pairs are given segment ids 0 only, where the UniLM mask is the
    full bidirectional mask.
    """
    ids, segs = export_check.encode_pairs(out_dir, export_check.sample_pairs(n_pairs), maxlen,
                                    do_lower_case=cfg["tokenizer"]["do_lower_case"])
    if cfg["model"]["application"] == "unilm":
        segs = np.zeros_like(segs)
    want = export_check.float32_outputs(cfg, bundle, ids, segs)
    got = hf_outputs(out_dir, ids, segs)
    return export_check.max_abs_diff(want, got, ids)
