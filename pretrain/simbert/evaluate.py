"""How good a SimBERT is: pair, retrieval and held-out-loss metrics, and baselines.

`pair_metrics`: Spearman and accuracy at the best threshold of similarity
scores against LCQMC-style 0/1 labels (`cosine_scores` of a model's vectors,
or `jaccard_scores`, the no-model baseline). `retrieval_top1`: the share of
sentences whose nearest other sentence is from one of their groups.
`heldout_losses`: both SimBERT loss terms over one pass of a split.
"""
import collections

import numpy as np
import tensorflow as tf

from pretrain.simbert import task as simbert_task


def rankdata(x):
    """Ranks 0..n-1 with ties given their average rank."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def spearman(x, y):
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / np.sqrt((rx ** 2).sum() * (ry ** 2).sum()))


def best_threshold_accuracy(scores, labels):
    """(accuracy, threshold) of the best rule `label = score >= threshold`."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, np.int64)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    n, positives = len(s), int(y.sum())
    tp = np.concatenate([[0], np.cumsum(y)])  # predicting the top k positive, k = 0..n
    k = np.arange(n + 1)
    correct = tp + (n - positives) - (k - tp)
    valid = np.concatenate([[True], s[:-1] > s[1:], [True]])  # cut only between values
    best = int(np.argmax(np.where(valid, correct, -1)))
    if best == 0:
        threshold = s[0] + 1e-6
    elif best == n:
        threshold = s[-1]
    else:
        threshold = (s[best - 1] + s[best]) / 2
    return float(correct[best] / n), float(threshold)


def pair_metrics(scores, labels):
    """Spearman and best-threshold accuracy of similarity scores against 0/1 labels."""
    acc, threshold = best_threshold_accuracy(scores, labels)
    return {"spearman": spearman(scores, labels), "accuracy": acc, "threshold": threshold,
            "pairs": len(labels)}


def cosine_scores(encode, s1, s2):
    """cosine(encode(a), encode(b)) for each pair, encoding each distinct text once."""
    texts = sorted(set(s1) | set(s2))
    index = {t: i for i, t in enumerate(texts)}
    vecs = encode(texts)
    return np.sum(vecs[[index[t] for t in s1]] * vecs[[index[t] for t in s2]], axis=1)


def cosine_matrix(encode):
    """texts -> all-pairs cosine, for `retrieval_top1`."""
    def similarities(texts):
        vecs = encode(texts)
        return vecs @ vecs.T
    return similarities


def retrieval_top1(similarities, groups):
    """Share of sentences whose nearest other sentence is from one of its groups.

    `similarities(texts)` gives the [N, N] matrix (e.g. `cosine_matrix(encode)`).
    A sentence found in several groups is one candidate, a member of each.
    """
    members = collections.defaultdict(set)
    for g, group in enumerate(groups):
        for s in group.sentences:
            members[s].add(g)
    texts = sorted(members)
    sims = np.array(similarities(texts), np.float64)
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argmax(sims, axis=1)
    hits = [bool(members[t] & members[texts[j]]) for t, j in zip(texts, nearest)]
    return {"retrieval_top1": float(np.mean(hits)), "sentences": len(texts)}


def heldout_losses(cfg, model, path, split, batch_size, max_batches=None):
    """Both loss terms (inference mode) averaged over one pass of a split."""
    bundle = collections.namedtuple("Bundle", "encoder")(model)
    ds = simbert_task.pair_dataset(cfg, path, batch_size, split=split, repeat=False)
    step = tf.function(lambda batch: simbert_task.forward_loss(bundle, batch, training=False)[1])
    totals = collections.defaultdict(float)
    n = 0
    for batch in ds:
        for key, value in step(batch).items():
            totals[key] += float(value)
        n += 1
        if max_batches and n >= max_batches:
            break
    if n == 0:
        raise ValueError("%s: split %r has fewer than %d rows: no batch to evaluate" % (
            path, split, batch_size))
    out = {k: v / n for k, v in totals.items()}
    out["batches"] = n
    return out


def jaccard_matrix(texts):
    """All-pairs character-set Jaccard similarity: the no-model baseline."""
    chars = sorted(set("".join(texts)))
    col = {c: i for i, c in enumerate(chars)}
    x = np.zeros((len(texts), len(chars)), np.float64)
    for i, t in enumerate(texts):
        x[i, [col[c] for c in set(t)]] = 1.0
    inter = x @ x.T
    sizes = x.sum(axis=1)
    return inter / np.maximum(sizes[:, None] + sizes[None, :] - inter, 1.0)


def jaccard_scores(s1, s2):
    return np.array([len(set(a) & set(b)) / max(len(set(a) | set(b)), 1)
                     for a, b in zip(s1, s2)])
