"""The ONNX twin of the style draw: `styles.cluster_draw` built from ops that tf2onnx converts at opset 17.

`cluster_draw` keys TensorFlow's `RandomIndexShuffle` op, which has no ONNX equivalent (tf2onnx 1.17 has no
handler for it). That op is a cycle-walking Simon block cipher (TensorFlow's
`core/kernels/random_index_shuffle.cc`): for `max_index` it picks a block of B bits (B = ceil(log2
max_index) rounded up to even, at least 16; 32 for our 2^31 - 1), splits the block into two words of W = B/2
bits, runs `rounds` Feistel rounds keyed by the low W bits of the three key words, and re-encrypts until the
result is <= max_index. `index_shuffle` below computes the same function with words held as W boolean bit
planes (so XOR, AND and rotations are ONNX Xor, And and Gather, all at opset 17 and in TensorRT, instead of
the Bitwise* ops of opset 18) and the cycle walk as a `tf.while_loop` (an ONNX Loop).
Integer modulo of possibly negative values goes through `styles.sampling._floor_mod`: tf2onnx lowers an
integer FloorMod to a truncated remainder. `tests/test_onnx.py` checks that `index_shuffle` equals
`RandomIndexShuffle` bit for bit on random keys and indices, that the draw run by ONNX Runtime equals
`cluster_draw`, and that the sampled ONNX model gives the SavedModel's `generate_with_seed` image.
"""

from __future__ import annotations

import math

import tensorflow as tf

from pix2pixhd_tf.styles.sampling import _MAX_SHUFFLE_INDEX, SEED_SALT, _floor_mod

__all__ = ["cluster_draw_portable", "index_shuffle"]

# The Simon key schedule's constants (TensorFlow's random_index_shuffle.cc): c = 0xfffffffc and the
# z sequence 0x7369f885192c0ef5, each cut to the word's W bits.
_SIMON_C = 0xFFFFFFFC
_SIMON_Z = 0x7369F885192C0EF5
_MIN_BLOCK_BITS = 16


def _word_bits(max_index: int) -> int:
    """W, half of RandomIndexShuffle's block size for `max_index` (the kernel's own formula, float log2 included)."""
    block = math.ceil(math.log2(max_index))
    return max(block + block % 2, _MIN_BLOCK_BITS) // 2


def _to_bits(x: tf.Tensor, width: int) -> tf.Tensor:
    """int64 [M] (non-negative: tf2onnx turns integer floor division and modulo into truncating ones, equal
    only there) -> bool [M, width], bit j of x in column j (low `width` bits)."""
    powers = tf.constant([2**j for j in range(width)], tf.int64)
    return tf.equal(tf.math.floormod(tf.math.floordiv(x[:, None], powers), 2), 1)


def _from_bits(bits: tf.Tensor) -> tf.Tensor:
    powers = tf.constant([2**j for j in range(bits.shape[-1])], tf.int64)
    return tf.reduce_sum(tf.where(bits, powers, tf.zeros_like(powers)), axis=-1)


def _rotl(bits: tf.Tensor, r: int) -> tf.Tensor:
    """Rotate a [M, W] bit-plane word left by r (bit j of the result is bit j - r mod W)."""
    width = bits.shape[-1]
    return tf.gather(bits, [(j - r) % width for j in range(width)], axis=1)


def _xor(*terms: tf.Tensor) -> tf.Tensor:
    out = terms[0]
    for t in terms[1:]:
        out = tf.not_equal(out, t)
    return out


def _simon_f(x: tf.Tensor) -> tf.Tensor:
    return _xor(tf.logical_and(_rotl(x, 1), _rotl(x, 8)), _rotl(x, 2))


def _const_bits(value: int, width: int) -> tf.Tensor:
    return tf.constant([[bool((value >> j) & 1) for j in range(width)]])


def _round_keys(key: tf.Tensor, width: int, rounds: int) -> list[tf.Tensor]:
    """Simon's key schedule: `rounds` bool [M, W] round keys from int [M, 3] key words (low W bits each)."""
    words = _floor_mod(tf.cast(key, tf.int64), 2**width)  # = the uint32 cast, then the low W bits
    keys = [_to_bits(words[:, i], width) for i in range(3)]
    z = _SIMON_Z % 2**width
    for i in range(3, rounds):
        constant = (_SIMON_C % 2**width) ^ ((z >> (i - 3)) & 1)
        rotr3, rotr4 = _rotl(keys[i - 1], -3), _rotl(keys[i - 1], -4)
        keys.append(_xor(_const_bits(constant, width), keys[i - 3], rotr3, rotr4))
    return keys


def _encrypt(value: tf.Tensor, keys: list[tf.Tensor], width: int) -> tf.Tensor:
    """One Simon encryption of int64 [M] block values (left word = high W bits)."""
    left = _to_bits(tf.math.floordiv(value, 2**width), width)
    right = _to_bits(value, width)
    for i in range(0, len(keys), 2):
        left = _xor(left, _simon_f(right), keys[i])
        right = _xor(right, _simon_f(left), keys[i + 1])
    return _from_bits(left) * 2**width + _from_bits(right)


def index_shuffle(index: tf.Tensor, key: tf.Tensor, max_index: int, rounds: int = 4) -> tf.Tensor:
    """`tf.raw_ops.RandomIndexShuffle(index, key, max_index, rounds)` from ONNX-convertible ops.

    Args:
        index: int [M] in [0, max_index].
        key: int [M, 3] the permutation's key words (only their low W bits count, as in the kernel).
        max_index: the permutation's largest index (a Python int: it fixes the block size).
        rounds: even, >= 4.

    Returns:
        int64 [M], equal to the op's output.
    """
    if rounds < 4 or rounds % 2:
        raise ValueError(f"rounds must be even and >= 4, got {rounds}")
    if not 0 <= max_index < 2**62:
        raise ValueError(f"max_index must be in [0, 2^62) (blocks are held in int64), got {max_index}")
    index = tf.cast(index, tf.int64)
    if max_index == 0:
        return tf.zeros_like(index)
    width = _word_bits(max_index)
    keys = _round_keys(key, width, rounds)
    first = _encrypt(index, keys, width)

    def outside(value):
        return tf.reduce_any(value > max_index)

    def walk(value):  # cycle walking: re-encrypt what fell outside [0, max_index] until nothing does
        return (tf.where(value > max_index, _encrypt(value, keys, width), value),)

    (value,) = tf.while_loop(lambda v: outside(v), walk, (first,))
    return value


def cluster_draw_portable(region_ids: tf.Tensor, seeds: tf.Tensor, counts: tf.Tensor) -> tf.Tensor:
    """`styles.cluster_draw`, ONNX twin: the same key [0, seed, SEED_SALT], index and modulus, with
    `index_shuffle` for `RandomIndexShuffle` and floor-mod for the bitwise AND (equal for int64, negative
    ids included); int32 [M] in [0, counts) (0 where counts is 0)."""
    ids = _floor_mod(tf.cast(region_ids, tf.int64), _MAX_SHUFFLE_INDEX + 1)
    seeds = tf.cast(seeds, tf.int64)
    key = tf.stack([tf.zeros_like(seeds), seeds, tf.fill(tf.shape(seeds), tf.constant(SEED_SALT, tf.int64))], 1)
    draw = index_shuffle(ids, key, _MAX_SHUFFLE_INDEX, rounds=4)
    return tf.cast(draw % tf.cast(tf.maximum(counts, 1), tf.int64), tf.int32)
