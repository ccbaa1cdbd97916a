"""Make an HF export directory a sentence-transformers model folder too.

`SentenceTransformer(export_dir)` then loads it unchanged and `encode` gives the
project's sentence vectors. The folder is sentence-transformers' module list
(`modules.json`), each module's settings in its own sub-directory:

    0  Transformer  the export itself (config.json, model.safetensors, tokenizer)
    1  Pooling      [CLS] (a pooler model, `--pooling cls`) or the mean over real tokens
    2  Dense        a model with a pooler only: its *linear* pooler, weights `linear.{weight,bias}`
    3  Normalize    unit length, as the project's sentence encoder returns

The legacy spelling (`sentence_transformers.models.*`, `pooling_mode_*_token`
booleans) is the one every sentence-transformers release from 2.x on reads.
Nothing here imports sentence-transformers: the files are plain JSON and
safetensors, and tests/test_hf_export.py loads them with the real package.
"""
import json
import os

POOLINGS = ("cls", "mean")
_MODULES = "sentence_transformers.models."


def _dump(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def write_st_folder(out_dir, hidden_size, pooling, max_seq_length, dense=None):
    """Add the sentence-transformers files to the HF export in `out_dir`.

    pooling: "cls" or "mean". dense: {"weight": [out, in], "bias": [out]} torch
    tensors of a linear layer applied to the pooled vector (the model's pooler).
    """
    # lazy: torch and safetensors are the optional extra "hf"
    from safetensors.torch import save_file
    if pooling not in POOLINGS:
        raise ValueError("pooling must be one of %s, got %r" % (POOLINGS, pooling))
    modules = [("Transformer", "")]
    pool_dir = os.path.join(out_dir, "1_Pooling")
    os.makedirs(pool_dir, exist_ok=True)
    _dump(os.path.join(pool_dir, "config.json"), {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False})
    modules.append(("Pooling", "1_Pooling"))
    if dense is not None:
        dense_dir = os.path.join(out_dir, "2_Dense")
        os.makedirs(dense_dir, exist_ok=True)
        out_features, in_features = dense["weight"].shape
        _dump(os.path.join(dense_dir, "config.json"), {
            "in_features": int(in_features), "out_features": int(out_features), "bias": True,
            "activation_function": "torch.nn.modules.linear.Identity"})
        save_file({"linear.weight": dense["weight"].contiguous(),
                   "linear.bias": dense["bias"].contiguous()},
                  os.path.join(dense_dir, "model.safetensors"))
        modules.append(("Dense", "2_Dense"))
    norm = "%d_Normalize" % len(modules)
    os.makedirs(os.path.join(out_dir, norm), exist_ok=True)
    modules.append(("Normalize", norm))
    _dump(os.path.join(out_dir, "modules.json"), [
        {"idx": i, "name": str(i), "path": path, "type": _MODULES + kind}
        for i, (kind, path) in enumerate(modules)])
    # the HF tokenizer lowercases by itself (tokenizer_config.json)
    _dump(os.path.join(out_dir, "sentence_bert_config.json"),
          {"max_seq_length": int(max_seq_length), "do_lower_case": False})
    _dump(os.path.join(out_dir, "config_sentence_transformers.json"),
          {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})
    return out_dir
