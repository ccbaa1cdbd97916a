"""From a document's tokens to masked-LM examples.

- `Segmenter`: jieba word boundaries, from rjieba (jieba-rs) when it is
  installed, else jieba; a user dictionary works with both.
- `prepare_document`: token ids, the jieba word of each token, and sentence
  ends (。！？；!?; and newlines, with closing quotes kept on the sentence).
- `pack`: greedy packing of whole sentences into `[CLS] ... [SEP]` of at most
  L tokens, as bert4keras's pretraining data does; a sentence longer than
  L-2 is cut into pieces, never dropped.
- `Masker`: Chinese whole-word masking as Google BERT's
  create_pretraining_data does: words in random order until
  round(15% of the tokens) are chosen (at most max_predictions), skipping a
  word that would overshoot; then 80% [MASK], 10% a random non-special
  token, 10% unchanged. It works on many sequences at once with NumPy.
"""
import bisect
import importlib.util
import re

import numpy as np

from pretrain.data.tokenization import normalize

# A sentence ends after a run of these, plus any closing quotes/brackets.
_END, _CLOSE = "。！？；!?;…\n", "”’\"'」』）)》"
SENTENCE_END = re.compile("[%s]+[%s]*" % (_END, _CLOSE))  # the rule _sentence_breaks follows
_KIND = np.zeros(0x10000, np.uint8)  # 1: ends a sentence, 2: closes one (all in the BMP)
_KIND[[ord(c) for c in _END]] = 1
_KIND[[ord(c) for c in _CLOSE]] = 2


def default_backend():
    """rjieba when installed (it is ~20x faster), else jieba; without importing either."""
    return "rjieba" if importlib.util.find_spec("rjieba") else "jieba"


class Segmenter(object):
    """`cut(text) -> words` whose concatenation is `text`."""

    def __init__(self, user_dict_text=None, backend="auto"):
        backend = default_backend() if backend == "auto" else backend
        self.backend = backend
        entries = parse_user_dict(user_dict_text) if user_dict_text else []
        if backend == "rjieba":
            import rjieba  # lazy: optional (jieba is the fallback); only this backend needs it
            # The import already built rjieba.cut's dictionary: a second one
            # only for user words, which must not reach rjieba.cut.
            self.cut = rjieba.cut
            if entries:
                self._jieba = rjieba.Jieba()
                for word, freq, tag in entries:
                    # freq None: jieba-rs picks one that makes it a word, as jieba does
                    self._jieba.add_word(word, freq, tag)
                self.cut = self._jieba.cut
        elif backend == "jieba":
            import jieba  # lazy: only the jieba backend pays its import
            jieba.setLogLevel(60)
            self._jieba = jieba.Tokenizer()
            self._jieba.initialize()
            for word, freq, tag in entries:
                self._jieba.add_word(word, freq, tag)
            self.cut = self._jieba.lcut
        else:
            raise ValueError("unknown segmenter backend %r (auto, rjieba, jieba)" % backend)


def parse_user_dict(text):
    """jieba's user dictionary format: `word [freq] [tag]` per line."""
    entries = []
    for line in text.splitlines():
        parts = line.strip().lstrip("\ufeff").split()
        if not parts:
            continue
        freq = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        tag = parts[-1] if len(parts) > 1 and not parts[-1].isdigit() else None
        entries.append((parts[0], freq, tag))
    return entries


def prepare_document(text, tokenizer, segmenter=None):
    """(ids int32[n], word int32[n] or None, sentence ends int64[k]) of a document.

    Word boundaries come from segmenting the tokenizer's normalized text, so
    they share its coordinates; tokens of one word share a word number.
    """
    norm, ids, starts = tokenizer.encode_with_offsets(text)
    breaks = _sentence_breaks(norm)
    words = None
    if segmenter is not None and len(ids):
        words = _word_numbers(segmenter, norm, breaks, starts)
    sentence_ends = np.searchsorted(starts, breaks)
    return ids, words, np.append(sentence_ends, len(ids))


CUT_CHARS = 4000  # about how much text the segmenter gets at once


def _word_numbers(segmenter, text, breaks, starts):
    """The word of each token start: how many of the segmenter's words of
    `text` end at or before it (a count per character, not a search).

    The text goes to the segmenter in pieces of about CUT_CHARS, cut at
    sentence breaks (`breaks`): jieba segments each run of Han characters
    and letters on its own and yields other characters one by one, and a
    break always follows such a character, so the words are the same (tests
    check this) and ~20% faster to get than from one long text, whose words
    all live at once.
    """
    size = len(text)
    at = np.searchsorted(breaks, np.arange(CUT_CHARS, size, CUT_CHARS))
    bounds = [0] + np.unique(breaks[at[at < len(breaks)]]).tolist() + [size]
    ends = np.cumsum(np.concatenate([
        np.fromiter(map(len, segmenter.cut(text[a:b])), np.int64)
        for a, b in zip(bounds[:-1], bounds[1:]) if b > a]))
    return np.cumsum(np.bincount(ends, minlength=size + 1), dtype=np.int32)[starts]


def _sentence_breaks(text):
    """Where each sentence ends in `text` (int64 character offsets): the ends
    of SENTENCE_END's matches, by NumPy on the code points."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    kind = _KIND[np.minimum(codes, len(_KIND) - 1)]  # U+FFFF and above: neither
    end, close = kind == 1, kind == 2
    # a closing mark is matched when the last other character before it ends a sentence
    last_other = np.maximum.accumulate(np.where(close, -1, np.arange(len(kind))))
    matched = end | (close & end[last_other] & (last_other >= 0))
    # a match goes on with a closing mark, or with an end right after an end
    goes_on = np.append(close[1:], False) | (end & np.append(end[1:], False))
    return np.flatnonzero(matched & ~goes_on) + 1


def prepare_documents(texts, tokenizer, segmenter=None):
    """`prepare_document` of each text, with one tokenizer and segmenter call for all.

    Short documents are dominated by per-call costs, so their normalized texts
    are joined with spaces: a space splits tokens, jieba words and no
    sentence, so every document gets what it would alone (tests check this).
    SentencePiece treats spaces as text: it goes document by document.
    """
    if not hasattr(tokenizer, "encode_normalized") or len(texts) < 2:
        return [prepare_document(t, tokenizer, segmenter) for t in texts]
    norms = [normalize(t, tokenizer.do_lower_case) for t in texts]
    lens = np.fromiter(map(len, norms), np.int64, len(norms))
    doc_start = np.cumsum(lens + 1) - lens - 1  # where each text starts in the join
    joined = " ".join(norms)
    ids, starts = tokenizer.encode_normalized(joined)
    breaks = _sentence_breaks(joined)
    words = None
    if segmenter is not None and len(ids):
        words = _word_numbers(segmenter, joined, breaks, starts)
    tok_start = np.searchsorted(starts, doc_start)
    tok_end = np.searchsorted(starts, doc_start + lens)
    break_tok = np.searchsorted(starts, breaks)
    break_doc = np.searchsorted(doc_start, breaks, side="right") - 1
    first_break = np.searchsorted(break_doc, np.arange(len(texts) + 1))
    # each document's sentence ends, then its length, back to back (in document order)
    all_ends = np.concatenate([break_tok - tok_start[break_doc], tok_end - tok_start])
    all_ends = all_ends[np.argsort(np.concatenate([break_doc, np.arange(len(texts))]),
                                   kind="stable")]
    bounds = zip(tok_start.tolist(), tok_end.tolist(), (first_break[:-1] + np.arange(
        len(texts))).tolist(), (first_break[1:] + np.arange(1, len(texts) + 1)).tolist())
    return [(ids[a:b], None if words is None else words[a:b], all_ends[c:e])
            for a, b, c, e in bounds]


def pack(sentence_ends, max_tokens, offset=0):
    """[(start, end)) token ranges: sentences packed greedily, long ones cut
    (shifted by `offset`). One step per range, not per sentence: bisect finds
    the last sentence end that fits."""
    ends = sentence_ends.tolist()
    out, start, last = [], 0, ends[-1] if ends else 0
    while start < last:
        i = bisect.bisect_right(ends, start + max_tokens)
        fit = ends[i - 1] if i else 0
        if fit <= start:  # the next sentence alone is too long: cut it
            fit = start + max_tokens
        out.append((start + offset, fit + offset))
        start = fit
    return out


def select_words(g_len, g_seq, budgets):
    """Google BERT's choice of words, for many sequences at once.

    Words (of `g_len` tokens, in sequence `g_seq`, sorted by sequence and
    then in random order) are taken in order; a word that would overshoot the
    sequence's budget is skipped; a sequence stops once its budget is met.
    Returns the boolean mask of taken words.
    """
    n = len(budgets)
    first = np.searchsorted(g_seq, np.arange(n + 1))
    # Vectorized: words in order while they fit, up to the first overshoot ...
    covered = np.cumsum(g_len)
    covered -= np.repeat(covered[first[:-1]] - g_len[first[:-1]], np.diff(first))
    take = covered <= budgets[g_seq]
    index = np.arange(len(g_seq))
    fail = np.append(np.where(take, len(g_seq), index), len(g_seq))
    first_fail = np.minimum.reduceat(fail, first[:-1]) if len(g_seq) else np.zeros(n, np.int64)
    take &= index < first_fail[g_seq]
    # ... then, in Python, only the sequences still short of their budget.
    got = np.bincount(g_seq[take], weights=g_len[take], minlength=n).astype(np.int64)
    for s in np.flatnonzero((got < budgets) & (first_fail < first[1:])).tolist():
        budget, have = int(budgets[s]), int(got[s])
        sizes = g_len[first_fail[s] + 1:first[s + 1]].tolist()
        for j, size in enumerate(sizes, int(first_fail[s]) + 1):
            if have + size <= budget:
                take[j] = True
                have += size
                if have >= budget:
                    break
    return take


class Masker(object):
    """Masks batches of token ranges into padded example arrays."""

    def __init__(self, tokenizer, seq_len, max_predictions, masked_lm_prob=0.15,
                 whole_word_mask=True, mask_token_prob=0.8, random_token_prob=0.1):
        self.seq_len, self.max_predictions = seq_len, max_predictions
        self.prob = masked_lm_prob
        self.whole_word = whole_word_mask
        self.mask_token_prob, self.random_token_prob = mask_token_prob, random_token_prob
        self.cls_id, self.sep_id = tokenizer.cls_id, tokenizer.sep_id
        self.mask_id, self.pad_id = tokenizer.mask_id, tokenizer.pad_id
        self.random_ids = tokenizer.random_ids()

    def mask(self, ranges, ids, words, rng):
        """Examples for `ranges` [(start, end)) of the flat arrays `ids`/`words`.

        Returns (input_ids [n, L], lengths [n], positions [n, P],
        labels [n, P], counts [n]) as NumPy arrays; rows are padded.
        """
        L, P = self.seq_len, self.max_predictions
        n = len(ranges)
        lens, offsets, tok, seq_of, new_group = gather_ranges(
            ranges, ids, words if self.whole_word else None)
        g_start = np.flatnonzero(new_group)
        g_len = np.diff(np.append(g_start, len(tok)))
        g_seq = seq_of[g_start]
        order = _shuffle_within(g_seq, rng.random(len(g_start)), n)  # random word order
        g_start, g_len, g_seq = g_start[order], g_len[order], g_seq[order]
        budgets = np.minimum(P, np.maximum(1, np.round(lens * self.prob))).astype(np.int64)
        take = select_words(g_len, g_seq, budgets)
        c_start, c_len = g_start[take], g_len[take]
        chosen = np.repeat(c_start - (np.cumsum(c_len) - c_len), c_len) + np.arange(c_len.sum())
        chosen = np.sort(chosen)
        labels = tok[chosen]
        replaced = tok.copy()
        r = rng.random(len(chosen))
        to_mask = r < self.mask_token_prob
        to_random = (r >= self.mask_token_prob) & (
            r < self.mask_token_prob + self.random_token_prob)
        replaced[chosen[to_mask]] = self.mask_id
        replaced[chosen[to_random]] = self.random_ids[
            rng.integers(0, len(self.random_ids), int(to_random.sum()))]

        input_ids, _ = self._layout(replaced, lens)
        chosen_seq = seq_of[chosen]
        counts = np.bincount(chosen_seq, minlength=n)
        rank = np.arange(len(chosen)) - np.repeat(np.cumsum(counts) - counts, counts)
        positions = np.zeros((n, P), np.int32)
        label_arr = np.zeros((n, P), np.int32)
        positions[chosen_seq, rank] = chosen - offsets[chosen_seq] + 1  # column after [CLS]
        label_arr[chosen_seq, rank] = labels
        return input_ids, lens + 2, positions, label_arr, counts

    def _layout(self, flat_ids, lens):
        """[n, L] rows `[CLS] ids [SEP] [PAD]...` and the [n, L] mask of the ids' cells."""
        n = len(lens)
        input_ids = np.full((n, self.seq_len), self.pad_id, np.int32)
        input_ids[:, 0] = self.cls_id
        column = np.arange(self.seq_len)
        inside = (column >= 1) & (column <= lens[:, None])  # row-major: the flat order
        input_ids[inside] = flat_ids
        input_ids[np.arange(n), lens + 1] = self.sep_id
        return input_ids, inside

    def unmasked(self, ranges, ids, words):
        """Dynamic-masking rows for `ranges`: (input_ids [n, L], lengths [n],
        word_starts [n, L]); word_starts is 1 at the first token of each word
        (every token without whole-word masking), 0 at [CLS]/[SEP]/[PAD]."""
        lens, offsets, tok, seq_of, new_group = gather_ranges(
            ranges, ids, words if self.whole_word else None)
        input_ids, inside = self._layout(tok, lens)
        starts = np.zeros_like(input_ids)
        starts[inside] = new_group
        return input_ids, lens + 2, starts


def _shuffle_within(seq, keys, n):
    """np.lexsort((keys, seq)) for seq in [0, n): the same order, faster for n < 2**15
    (a stable sort by key, then numpy's radix sort of 16-bit seq, also stable)."""
    if n >= 1 << 15:
        return np.lexsort((keys, seq))
    by_key = np.argsort(keys, kind="stable")
    return by_key[np.argsort(seq[by_key].astype(np.int16), kind="stable")]


def gather_ranges(ranges, ids, words):
    """The tokens of `ranges` [(start, end)) of flat `ids`, back to back.

    Returns (lens [n], offsets [n] where each sequence starts, tokens,
    sequence of each token, new_group: True where a word starts, by `words`,
    or at every token when `words` is None).
    """
    n = len(ranges)
    bounds = np.asarray(ranges, np.int64).reshape(n, 2)
    lens = bounds[:, 1] - bounds[:, 0]
    offsets = np.cumsum(lens) - lens
    flat = np.repeat(bounds[:, 0] - offsets, lens) + np.arange(lens.sum())
    seq_of = np.repeat(np.arange(n), lens)
    new_group = np.ones(len(flat), bool)
    if words is not None:
        w = words[flat]
        new_group[1:] = (seq_of[1:] != seq_of[:-1]) | (w[1:] != w[:-1])
    return lens, offsets, ids[flat], seq_of, new_group
