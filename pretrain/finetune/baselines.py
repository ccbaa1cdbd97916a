"""Scores and the non-neural baselines of `pretrain.finetune --baselines`.

- `scores`: accuracy and macro-F1 (scikit-learn's, over the labels that occur
  in the gold or predicted labels).
- `majority`: every example gets the most frequent train label.
- `tfidf_lr`: character 1-3-gram TF-IDF + logistic regression, a standard
  strong baseline for Chinese text. For a pair the features are the
  element-wise product of the two texts' TF-IDF vectors (shared n-grams) and
  their absolute difference; C is chosen on dev among `C_GRID`.
The neural random-init baseline is in `pretrain.finetune`.
"""
import numpy as np

C_GRID = (0.3, 1.0, 3.0, 10.0)


def scores(labels, predictions):
    """{"accuracy", "macro_f1"} of integer label arrays."""
    from sklearn.metrics import f1_score  # lazy: scikit-learn only for the scores
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return {"accuracy": float(np.mean(labels == predictions)),
            "macro_f1": float(f1_score(labels, predictions, average="macro"))}


def majority(train_labels, splits):
    """{split: (predictions, probabilities)} predicting the commonest train label."""
    counts = np.bincount(train_labels)
    label = int(np.argmax(counts))  # ties: the first label in label order
    probs = counts / counts.sum()
    return {name: (np.full(len(y), label, np.int32), np.tile(probs, (len(y), 1)))
            for name, y in splits.items()}


def _features(vectorizer, examples):
    import scipy.sparse as sp  # lazy: only the n-gram baseline needs SciPy
    a = vectorizer.transform([e.text_a for e in examples])
    if examples[0].text_b is None:
        return a
    b = vectorizer.transform([e.text_b for e in examples])
    return sp.hstack([a.multiply(b), abs(a - b)]).tocsr()


def tfidf_lr(train, train_labels, splits, seed=0):
    """{split: (predictions, probabilities)} and the C chosen on splits["dev"].

    train / splits[name][0]: lists of finetune_data.Example; splits[name][1]:
    their integer labels.
    """
    # lazy: only the n-gram baseline needs scikit-learn
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    texts = [e.text_a for e in train] + [e.text_b for e in train if e.text_b is not None]
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True,
                                 min_df=1).fit(texts)
    x_train = _features(vectorizer, train)
    xs = {name: _features(vectorizer, examples) for name, (examples, _) in splits.items()}
    best = None
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(
            x_train, train_labels)
        dev = float(np.mean(model.predict(xs["dev"]) == splits["dev"][1]))
        if best is None or dev > best[0]:
            best = (dev, c, model)
    _, c, model = best
    out = {}
    for name, x in xs.items():
        probs = np.zeros((x.shape[0], int(np.max(train_labels)) + 1))
        probs[:, model.classes_] = model.predict_proba(x)
        out[name] = (np.argmax(probs, -1).astype(np.int32), probs)
    return out, c
