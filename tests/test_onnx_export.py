"""ONNX export: onnxruntime on the CPU reproduces bert4keras's outputs on real text."""
import os
import subprocess
import sys

import numpy as np
import pytest

for _module, _extra in (("torch", "hf"), ("transformers", "hf"), ("onnx", "onnx"),
                        ("onnxscript", "onnx"), ("onnxruntime", "onnx")):
    pytest.importorskip(_module, reason="the ONNX export needs %s (pip install -e .[hf,onnx])"
                        % _module)

from pretrain.export import check as export_check  # noqa: E402
from pretrain.export import onnx_export  # noqa: E402
from pretrain.models import build as models  # noqa: E402
from pretrain.config import load_config  # noqa: E402
from test_models import randomize  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cli_writes_an_onnx_roberta_with_dynamic_axes(tmp_path):
    out = str(tmp_path / "rt")
    done = subprocess.run([sys.executable, "-m", "pretrain.export", "--config", "roberta_tiny",
                           "--format", "onnx", "--output", out, "--check"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [l for l in done.stdout.splitlines() if l.startswith("max |TF - onnxruntime|")][0]
    assert float(line.rsplit(" ", 1)[1]) <= 1e-4, line
    import onnx
    model = onnx.load(os.path.join(out, onnx_export.ONNX_FILE))
    assert [i.name for i in model.graph.input] == list(onnx_export.INPUTS)
    assert [o.name for o in model.graph.output] == ["last_hidden_state", "logits"]
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert not dims[0].HasField("dim_value") and not dims[1].HasField("dim_value"), value
    assert "## ONNX" in open(os.path.join(out, "README.md"), encoding="utf-8").read()


def test_onnx_simbert_pooled_vector_equals_bert4keras(tmp_path):
    cfg = load_config("simbert_tiny")
    bundle = models.build_model(cfg)
    randomize(bundle, seed=5)
    out = str(tmp_path / "sb")
    onnx_export.export_onnx(cfg, bundle, out)
    # batches of other sizes and lengths than the traced example
    for n, maxlen in ((1, 24), (32, 64)):
        pairs = export_check.sample_pairs(n)
        ids, segs = export_check.encode_pairs(out, pairs, maxlen, do_lower_case=True)
        want = export_check.float32_outputs(cfg, bundle, ids, np.zeros_like(segs))[0]
        got = onnx_export.onnx_outputs(os.path.join(out, onnx_export.ONNX_FILE), ids,
                                       np.zeros_like(segs))[0]
        assert got.shape == want.shape == (n, cfg["model"]["hidden_size"])
        assert np.abs(want - got).max() <= 1e-4, np.abs(want - got).max()
