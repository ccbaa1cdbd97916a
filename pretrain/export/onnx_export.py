"""Export to ONNX (optional extras "hf" and "onnx"): the HF export, traced by torch.

    python -m pretrain.export --config roberta_tiny --output /tmp/rt_onnx --format onnx

writes the HF export (`pretrain.export.hf`: config, tokenizer, model card) and
`onnx/model.onnx`: inputs `input_ids`, `attention_mask`, `token_type_ids`
(int64, [batch, sequence], both axes dynamic); outputs `last_hidden_state`
and, for an MLM model, `logits` (the MLM head), or for a model with a pooler `pooled` (its
linear pooler over [CLS], not normalised).

Why through torch: tf2onnx 1.17 converts bert4keras's graph on TF 2.21 but
leaves `BroadcastArgs` ops (from the attention's einsum broadcasting) that no
ONNX opset has, so onnxruntime refuses the model. torch's exporter
(`torch.onnx.export(dynamo=True)`, which needs onnxscript) traces the
transformers model that `check_hf` already holds to the TF model; the legacy
TorchScript exporter is not used: it bakes the traced padding length into
transformers' mask code. `check_onnx` compares onnxruntime with the TF model.
"""
import importlib.util
import os

import numpy as np

from pretrain.export import check as export_check
from pretrain.export import hf as hf_export

ONNX_FILE = os.path.join("onnx", "model.onnx")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _traced(hf_dir):
    """A torch module (ids, mask, types) -> (last hidden state, logits or pooled)."""
    # lazy: torch, transformers and safetensors are the optional extra "hf"
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlm = AutoModelForMaskedLM.from_pretrained(hf_dir).eval()
            pooler = os.path.join(hf_dir, hf_export.POOLER_FILE)
            self.dense = None
            if os.path.exists(pooler):
                weights = load_file(pooler)
                self.dense = torch.nn.Linear(*weights["dense.weight"].shape[::-1])
                self.dense.load_state_dict({k.split(".")[1]: v for k, v in weights.items()})

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.mlm(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids, output_hidden_states=True)
            hidden = out.hidden_states[-1]
            if self.dense is not None:
                return hidden, self.dense(hidden[:, 0])
            return hidden, out.logits

    return Encoder().eval()


def write_onnx(hf_dir):
    """Trace the HF export in `hf_dir` to hf_dir/onnx/model.onnx; returns its path."""
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise hf_export.HFExportError(
            "--format onnx needs %s (pip install -e \".[hf,onnx]\"; see docs/export.md)"
            % " and ".join(missing))
    # lazy: torch is the optional extra "hf"; torch.onnx needs onnx + onnxscript ("onnx")
    import torch
    model = _traced(hf_dir)
    head = "pooled" if model.dense is not None else "logits"
    example = torch.tensor([[2, 100, 200, 3, 0, 0], [2, 5, 6, 7, 8, 3]])
    args = (example, (example > 0).long(), torch.zeros_like(example))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    path = os.path.join(hf_dir, ONNX_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(model, args, input_names=list(INPUTS),
                                    output_names=["last_hidden_state", head],
                                    dynamic_shapes=tuple({0: batch, 1: seq} for _ in INPUTS),
                                    dynamo=True, verbose=False)
    program.save(path)
    with open(os.path.join(hf_dir, "README.md"), "a", encoding="utf-8") as f:
        f.write("\n## ONNX\n\n`%s`: inputs %s (int64, [batch, sequence]); outputs "
                "`last_hidden_state` and `%s`.\n\n```python\nimport onnxruntime as ort\n"
                "session = ort.InferenceSession(PATH + '/%s')\n"
                "hidden, %s = session.run(None, dict(tokenizer(texts, padding=True, "
                "return_tensors='np')))\n```\n" % (ONNX_FILE, ", ".join(
                    "`%s`" % n for n in INPUTS), head, ONNX_FILE, head))
    return path


def export_onnx(cfg, bundle, out_dir, **hf_kwargs):
    """The HF export (`hf_export.export_hf` with `hf_kwargs`) plus onnx/model.onnx."""
    hf_export.export_hf(cfg, bundle, out_dir, **hf_kwargs)
    return write_onnx(out_dir)


def session(path, threads=None):
    """An onnxruntime CPU session (`threads`: intra-op threads, default all)."""
    # lazy: onnxruntime is the optional extra "onnx"
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def onnx_outputs(path, ids, segs, sess=None):
    """The export's outputs in bert4keras's order: [pooled] with a pooler, else [MLM logits]."""
    sess = sess or session(path)
    feed = {"input_ids": ids.astype(np.int64), "attention_mask": (ids > 0).astype(np.int64),
            "token_type_ids": segs.astype(np.int64)}
    return [sess.run(None, feed)[1]]


def check_onnx(cfg, out_dir, bundle, n_pairs=8, maxlen=64):
    """Max |TF - onnxruntime| on real sentence pairs (MLM logits on real tokens,
    or the pooled vector, segment ids 0 as in `hf_export.check_hf`)."""
    ids, segs = export_check.encode_pairs(out_dir, export_check.sample_pairs(n_pairs), maxlen,
                                          do_lower_case=cfg["tokenizer"]["do_lower_case"])
    if cfg["model"]["application"] == "unilm":
        segs = np.zeros_like(segs)
    want = export_check.float32_outputs(cfg, bundle, ids, segs)
    got = onnx_outputs(os.path.join(out_dir, ONNX_FILE), ids, segs)
    return export_check.max_abs_diff(want[:1], got, ids)
