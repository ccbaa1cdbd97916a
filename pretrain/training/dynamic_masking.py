"""Dynamic whole-word masking: the reader masks unmasked records anew each epoch.

Records written with `data.masking: "dynamic"` hold each packed sequence
unmasked: `input_ids` ([CLS] ... [SEP], padded), `segment_ids`, `word_starts`
(1 at the first token of each jieba word, 0 elsewhere) and an `example_id`
unique in the data set. `mask_batch` turns a parsed batch of them into the
features static records give the trainer, with masking.Masker's rules: words
in random order until round(masked_lm_prob x tokens) are chosen (at most P),
a word that would overshoot skipped; then 80% [MASK], 10% a random token,
10% unchanged; [CLS]/[SEP]/[PAD] never.

It is plain TensorFlow graph code for tf.data on the host CPU, with static
output shapes. Its random numbers are a counter-based hash of (seed, epoch,
example_id, position): an example's mask depends on nothing else, so it is
the same in any batch, order or input pipeline, differs per epoch, and a
resumed run replays it bit for bit.
"""
import math

import numpy as np
import tensorflow as tf

_M16 = 0xFFFF


def _u32(x):
    return tf.cast(x, tf.uint32)


def _mix(x):
    """A 32-bit integer hash (lowbias32: xor-shift-multiply rounds), uint32 -> uint32."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(16)))
    x = x * _u32(0x7FEB352D)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(15)))
    x = x * _u32(0x846CA68B)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(16)))


def _hash(*parts):
    """One uint32 per broadcast element of the uint32 `parts`."""
    x = _u32(0x9E3779B9)
    for part in parts:
        x = _mix(tf.bitwise.bitwise_xor(x, part))
    return x


def _split64(x):
    """int64 -> (low, high) uint32 halves."""
    x = tf.cast(x, tf.int64)
    return _u32(tf.bitwise.bitwise_and(x, 0xFFFFFFFF)), _u32(tf.bitwise.right_shift(x, 32))


class DynamicMasker(object):
    """`mask_batch(batch, epoch)` for records of length L with budget P."""

    def __init__(self, tokenizer, seq_len, max_predictions, seed, masked_lm_prob=0.15,
                 mask_token_prob=0.8, random_token_prob=0.1):
        self.seq_len, self.max_predictions = seq_len, max_predictions
        self.seed = int(seed)
        self.prob = float(masked_lm_prob)
        self.mask_token_prob, self.random_token_prob = mask_token_prob, random_token_prob
        self.mask_id, self.pad_id = tokenizer.mask_id, tokenizer.pad_id
        self.random_ids = np.asarray(tokenizer.random_ids(), np.int32)

    def _uniform(self, key, stream):
        """[B, L] uint32 of (example key, stream, position): one mix per element."""
        position_hash = _mix(_u32(np.arange(self.seq_len) * 0x632BE5AB + 1))  # a constant
        return _mix(tf.bitwise.bitwise_xor(_hash(key, _u32(stream))[:, None], position_hash[None]))

    def _choose_words(self, ids, starts, key):
        """[B, L] bool: the tokens of the whole words chosen for masking."""
        L, P = self.seq_len, self.max_predictions
        n_batch = tf.shape(ids)[0]
        pos = tf.range(L, dtype=tf.int32)
        length = tf.reduce_sum(tf.cast(tf.not_equal(ids, self.pad_id), tf.int32), 1)  # with [CLS], [SEP]
        is_tok = (pos[None] >= 1) & (pos[None] < length[:, None] - 1)
        word = tf.cumsum(starts, axis=1) * tf.cast(is_tok, tf.int32)  # 1..W; 0: not a token
        rows = tf.range(n_batch)[:, None]
        word_len = tf.reshape(tf.math.unsorted_segment_sum(
            tf.cast(is_tok, tf.int32), word + rows * L, n_batch * L), [n_batch, L])

        # words in random order (absent words last), then Google BERT's greedy choice
        rank_key = tf.where(word_len > 0, tf.cast(self._uniform(key, 0), tf.int64),
                            tf.constant(1 << 33, tf.int64))
        order = tf.argsort(rank_key, axis=1, stable=True)
        sorted_len = tf.gather(word_len, order, batch_dims=1)
        n_tok = tf.cast(length - 2, tf.float64)
        budget = tf.cast(tf.minimum(tf.constant(P, tf.float64), tf.maximum(
            tf.constant(1.0, tf.float64), tf.round(n_tok * self.prob))), tf.int32)
        n_words = tf.reduce_max(word)
        # the shortest word from the k-th on: once none fits, a sequence is done
        shortest = tf.where(sorted_len > 0, sorted_len, L)
        shift = 1
        while shift < L:  # suffix minimum in log2(L) steps
            shortest = tf.minimum(shortest, tf.pad(shortest[:, shift:], [[0, 0], [0, shift]],
                                                   constant_values=L))
            shift *= 2
        # Columns are sliced in the loop, and `taken` is float32 when transposed:
        # TF's oneDNN transpose of int32 or bool logs an error line on CPUs
        # without AVX-512 (then runs Eigen's).

        def more(k, have, taken):
            return (k < n_words) & tf.reduce_any(have + shortest[:, tf.minimum(k, L - 1)]
                                                 <= budget)

        def take(k, have, taken):
            size = sorted_len[:, k]
            ok = (size > 0) & (have + size <= budget)  # a word that overshoots is skipped
            return k + 1, have + tf.where(ok, size, 0), taken.write(k, tf.cast(ok, tf.float32))

        _, _, taken = tf.while_loop(
            more, take, (0, tf.zeros_like(budget), tf.TensorArray(tf.float32, size=0,
                                                                  dynamic_size=True,
                                                                  element_shape=[None])))
        taken = tf.transpose(taken.stack())  # [B, K]: 1 where the k-th word (random order) is taken
        k = tf.shape(taken)[1]
        where_word = tf.stack([tf.broadcast_to(rows, [n_batch, k]), order[:, :k]], -1)
        word_taken = tf.scatter_nd(where_word, tf.cast(taken, tf.int32), [n_batch, L])
        chosen = (tf.gather(word_taken, word, batch_dims=1) > 0) & is_tok
        return chosen

    def mask_batch(self, batch, epoch):
        """{input_ids, segment_ids, word_starts, example_id} -> the trainer's features."""
        L, P = self.seq_len, self.max_predictions
        ids = tf.cast(batch["input_ids"], tf.int32)
        starts = tf.cast(batch["word_starts"], tf.int32)
        seed_lo, seed_hi = _split64(self.seed)
        ex_lo, ex_hi = _split64(tf.reshape(batch["example_id"], [-1]))
        epoch_lo, _ = _split64(epoch)
        key = _hash(seed_lo, seed_hi, epoch_lo, ex_lo, ex_hi)  # [B]

        chosen = self._choose_words(ids, starts, key)
        pos = tf.range(L, dtype=tf.int32)

        # 80% [MASK], 10% a random non-special token, 10% unchanged
        # u < p for u = h / 2**32 uniform in [0, 1), as integers: h < ceil(p * 2**32)
        h = tf.cast(self._uniform(key, 1), tf.int64)
        to_mask = chosen & (h < math.ceil(self.mask_token_prob * 2 ** 32))
        to_random = chosen & ~to_mask & (
            h < math.ceil((self.mask_token_prob + self.random_token_prob) * 2 ** 32))
        pick = tf.math.floormod(tf.cast(self._uniform(key, 2), tf.int64), len(self.random_ids))
        random_tok = tf.gather(tf.constant(self.random_ids), pick)
        masked = tf.where(to_mask, self.mask_id, tf.where(to_random, random_tok, ids))

        # chosen positions, ascending, padded to P
        first = tf.math.top_k(-tf.where(chosen, pos[None], L + pos[None]), P).values
        count = tf.reduce_sum(tf.cast(chosen, tf.int32), 1)
        valid = tf.range(P)[None] < count[:, None]
        positions = tf.where(valid, -first, 0)
        labels = tf.where(valid, tf.gather(ids, positions, batch_dims=1), 0)
        return {
            "input_ids": masked,
            "input_mask": tf.cast(tf.not_equal(ids, self.pad_id), tf.int32),
            "segment_ids": tf.cast(batch["segment_ids"], tf.int32),
            "masked_lm_positions": positions,
            "masked_lm_ids": labels,
            "masked_lm_weights": tf.cast(valid, tf.float32),
        }
