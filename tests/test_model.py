"""Pix2PixHD's training step: what it updates and with which gradients, on one device and mirrored.

The strategy tests use plain SGD: a step moves each weight by lr·gradient, so a gradient scaled by the
wrong batch size (e.g. not divided by the number of replicas) shows as a factor of two. Adam's first
step, lr·g/(|g| + eps), is blind to such factors.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from benchmarks import harness
from pix2pixhd_tf.networks import fast_ops
from pix2pixhd_tf.training import losses
from pix2pixhd_tf.training.model import D_LOSSES, G_LOSSES, ImagePool, Pix2PixHD
from tests.helpers import (
    build_model,
    max_abs_diff,
    mirrored_strategy,
    network_weights,
    random_batch,
    set_network_weights,
    sgd_pair,
    tiny_options,
)

LR = 0.1
# float32: the replicas sum their gradients in another order than one batched backward pass, which moves
# the weights (|w| < 1) by a few float32 ulps of lr·g; 1e-5 is 1e-4 of the smallest per-network update
# (>= 0.005) and a gradient scaled by the wrong batch size would differ by about the update itself.
F32_ATOL = 1e-5


def _mirrored_step(strategy, model: Pix2PixHD, batch: dict) -> dict:
    """One step the way the trainer runs it: strategy.run(train_step) on a distributed batch, in a tf.function."""
    dataset = tf.data.Dataset.from_tensor_slices(batch).batch(len(batch["image"]))
    distributed = next(iter(strategy.experimental_distribute_dataset(dataset)))

    @tf.function
    def step(data):
        return strategy.run(model.train_step, args=(data,))

    logs = step(distributed)
    return {k: float(strategy.reduce("MEAN", v, axis=None)) for k, v in logs.items()}


@pytest.fixture(scope="module")
def f32_reference():
    """The one-device step every float32 strategy test compares with: (opts, batch, before, after)."""
    keras.utils.set_random_seed(0)
    # G, D and E (n_layers_D 1 keeps the traces short); the image pool returns the fakes while it fills.
    opts = tiny_options(instance_feat=True, pool_size=2, n_layers_D=1)
    batch = random_batch(opts, n=2)
    model = build_model(opts, sgd_pair(LR))
    before = network_weights(model)
    model.train_step(batch)
    return opts, batch, before, network_weights(model)


# ------------------------------------------------------------------------------------------ one device


@pytest.fixture(scope="module")
def vgg():
    return losses.build_vgg19_features(None)


def test_train_step_updates_g_d_e_and_reports_every_loss(vgg):
    opts = tiny_options(instance_feat=True, no_vgg_loss=False)
    model = build_model(opts, vgg=vgg)
    before, vgg_before = network_weights(model), [np.array(w) for w in vgg.weights]
    logs = model.train_step(random_batch(opts))
    assert set(logs) == set(G_LOSSES + D_LOSSES)
    assert all(np.isfinite(float(v)) and float(v) > 0 for v in logs.values()), logs
    change = max_abs_diff(before, network_weights(model))
    assert set(change) == {"G", "D", "E"} and min(change.values()) > 1e-4, change
    assert all(np.array_equal(a, b) for a, b in zip(vgg_before, vgg.weights))  # VGG19 stays fixed


def test_train_step_equals_sgd_on_the_official_losses():
    """G moves by its loss alone; D by 0.5·(D_real + D_fake) on the fake of the same forward pass, detached."""
    opts = tiny_options(instance_feat=True)
    model = build_model(opts, sgd_pair(LR))
    batch = random_batch(opts)
    g_vars, d_vars = model.all_generator_variables, model.discriminator.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        g_losses, d_losses, _ = model.compute_losses(batch, training=True)
        g_loss = tf.reduce_mean(g_losses["G_GAN"] + g_losses["G_GAN_Feat"] + g_losses["G_VGG"])
        d_loss = tf.reduce_mean(0.5 * (d_losses["D_real"] + d_losses["D_fake"]))
    # The fake reaches D detached: no D loss has a gradient into G or E.
    assert all(g is None for g in tape.gradient(d_losses["D_fake"], g_vars))
    assert all(g is None for g in tape.gradient(d_losses["D_real"], g_vars))
    expected_g = [np.asarray(v) - LR * np.asarray(g) for v, g in zip(g_vars, tape.gradient(g_loss, g_vars))]
    expected_d = [np.asarray(v) - LR * np.asarray(g) for v, g in zip(d_vars, tape.gradient(d_loss, d_vars))]

    model.train_step(batch)
    for v, e in zip(g_vars + d_vars, expected_g + expected_d):
        np.testing.assert_allclose(v, e, atol=1e-6, err_msg=v.path)


@pytest.mark.parametrize("pool_size, passes", [(0, 2), (2, 3)])
def test_train_step_judges_the_fake_once_unless_an_image_pool_swaps_it(monkeypatch, pool_size, passes):
    """Without a pool, D's loss and G's loss read one D pass on the fake (d_tape does not record G, so the
    fake is detached for D's gradient); a pool can hand D another image, which needs its own pass."""
    opts = tiny_options(pool_size=pool_size)
    model = build_model(opts, sgd_pair(LR))
    batch = random_batch(opts)
    model(batch)  # builds the pool
    seen = []
    discriminate = model.discriminate
    monkeypatch.setattr(model, "discriminate", lambda m, image, t: seen.append(image) or discriminate(m, image, t))
    model.train_step(batch)
    assert len(seen) == passes


def test_switched_off_losses_are_zero():
    opts = tiny_options(no_ganFeat_loss=True, no_vgg_loss=True)
    logs = build_model(opts).train_step(random_batch(opts))
    assert float(logs["G_GAN_Feat"]) == 0.0 and float(logs["G_VGG"]) == 0.0
    assert float(logs["G_GAN"]) > 0


def test_optional_l1_term_is_reported_and_weighted():
    opts = tiny_options(lambda_L1=10.0)
    model = build_model(opts)
    batch = random_batch(opts)
    g_losses, _, fake = model.compute_losses(batch)
    expected = 10.0 * np.abs(np.asarray(fake) - np.asarray(batch["image"])).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(g_losses["G_L1"], expected, rtol=1e-5)
    assert set(model.train_step(batch)) == set(G_LOSSES + ("G_L1",) + D_LOSSES)
    assert "G_L1" not in build_model(tiny_options()).trackers  # off by default: pix2pixHD's objective


def test_test_step_reports_losses_and_changes_nothing():
    opts = tiny_options()
    model = build_model(opts)
    before = network_weights(model)
    logs = model.test_step(random_batch(opts))
    assert set(logs) == set(G_LOSSES + D_LOSSES)
    assert max(max_abs_diff(before, network_weights(model)).values()) == 0.0


@pytest.mark.parametrize(
    "overrides",
    [
        {"label_nc": 0},
        {"no_instance": True},
        {"gan_mode": "hinge"},
        {"no_lsgan": True},
        {"load_features": True, "instance_feat": True},
    ],
    ids=["rgb_input", "no_instance", "hinge", "vanilla", "loaded_features"],
)
def test_other_settings_train_a_step(overrides):
    opts = tiny_options(**overrides)
    model = build_model(opts)
    before = network_weights(model)
    logs = model.train_step(random_batch(opts))
    assert all(np.isfinite(float(v)) for v in logs.values()), logs
    assert min(max_abs_diff(before, network_weights(model)).values()) > 1e-4


def test_train_step_updates_large_kernels_in_place():
    """Adam's update copies a kernel whose buffer a read still shares (copy-on-write). Each large kernel's
    gradient waits for its layer's input gradient, and D's update for G's backward pass through D, so no
    kernel moves (before, most did, every step)."""
    # ngf 32 with 4 downsamples: 512-channel blocks (the im2col path), transposed convs, D's 128+ channels.
    opts = tiny_options(ngf=32, n_downsample_global=4, n_blocks_global=2, instance_feat=True, ndf=64, n_layers_D=3)
    model = build_model(opts)
    large = [
        v
        for v in model.all_generator_variables + model.discriminator.trainable_variables
        if v.shape.num_elements() * 4 >= fast_ops.IN_PLACE_UPDATE_MIN_BYTES
    ]
    assert len(large) >= 8

    def addresses():  # a read of a variable aliases its buffer; dlpack shows where the buffer lives
        return [np.from_dlpack(tf.convert_to_tensor(v.value)).ctypes.data for v in large]

    step, batch = tf.function(model.train_step), random_batch(opts, n=1, h=64, w=64)
    before, values = addresses(), [np.array(v) for v in large]
    for _ in range(3):
        step(batch)
    assert addresses() == before
    assert all(np.abs(np.array(v) - value).max() > 1e-4 for v, value in zip(large, values))  # and updated


# ------------------------------------------------------------------------------- coarse-to-fine training


def test_global_generator_held_fixed_then_fine_tuned():
    opts = tiny_options(netG="local", lr=1e-3)
    model = build_model(opts)
    batch = random_batch(opts)
    global_ids = {id(v) for v in model.generator.global_variables()}

    def snapshot():
        g = model.generator.trainable_variables
        return ([np.array(v) for v in g if id(v) in global_ids], [np.array(v) for v in g if id(v) not in global_ids])

    model.set_update_global(False)
    glob0, local0 = snapshot()
    model.fit(tf.data.Dataset.from_tensors(batch), epochs=3, verbose=0, shuffle=False)  # the traced path
    glob1, local1 = snapshot()
    assert all(np.array_equal(a, b) for a, b in zip(glob0, glob1))
    assert max(np.abs(a - b).max() for a, b in zip(local0, local1)) > 1e-4

    # As after an epoch of frozen training: the shared step count is large.
    model.g_optimizer.iterations.assign(5000)
    model.set_update_global(True)
    model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0, shuffle=False)
    glob2, _ = snapshot()
    step = max(np.abs(a - b).max() for a, b in zip(glob1, glob2))
    # Like the official fresh Adam: a first step of at most lr (Keras' shared bias correction would give
    # the never-updated G1 up to lr/sqrt(1 - 0.999) ≈ 16·lr at step 5001).
    assert 0.5 * opts.lr < step <= 1.001 * opts.lr
    with pytest.raises(ValueError, match="local generator"):
        build_model(tiny_options()).set_update_global(False)


def test_unfreezing_restarts_g_optimizer_like_a_new_adam_also_mirrored():
    opts = tiny_options(netG="local")
    with mirrored_strategy().scope():
        model = build_model(opts)
    model.set_update_global(False)
    for v in model.g_optimizer.variables:  # as after some training
        v.assign(tf.ones(v.shape, v.dtype))
    model.set_update_global(True)
    lr = model.g_optimizer.learning_rate
    assert float(np.asarray(lr)) == 1.0  # the trainer's schedule sets the LR; the reset keeps it
    assert all(not np.any(np.asarray(v)) for v in model.g_optimizer.variables if v is not lr)
    assert model.update_global


# ------------------------------------------------------------------------------------------- image pool


def _run_pool(steps: int) -> tuple[list[float], list[list[float]]]:
    pool = ImagePool(2)
    returned, contents = [], []
    for step in range(steps):
        out = pool(tf.fill((1, 2, 2, 1), float(step)), tf.constant(step))
        returned.append(float(out[0, 0, 0, 0]))
        contents.append(sorted(float(v) for v in pool.images[:, 0, 0, 0]))
    return returned, contents


def test_image_pool_fills_then_swaps_reproducibly():
    returned, contents = _run_pool(12)
    assert returned[:2] == [0.0, 1.0] and contents[1] == [0.0, 1.0]  # filling: the fakes themselves
    stored = {0.0, 1.0}
    swaps = 0
    for step in range(2, 12):
        if returned[step] == step:  # kept the new fake, pool unchanged
            assert set(contents[step]) == set(contents[step - 1])
        else:  # returned a stored image, which the new fake replaced
            swaps += 1
            assert returned[step] in contents[step - 1] and returned[step] < step
            assert set(contents[step]) == set(contents[step - 1]) - {returned[step]} | {float(step)}
        stored |= set(contents[step])
    assert 0 < swaps < 10
    assert _run_pool(12) == (returned, contents)


def test_image_pool_with_a_dynamic_batch_in_a_graph():
    pool = ImagePool(3)
    pool.build((None, 2, 2, 1))
    run = tf.function(pool.call, input_signature=[tf.TensorSpec([None, 2, 2, 1]), tf.TensorSpec([], tf.int64)])
    out = run(tf.reshape(tf.range(2.0), (2, 1, 1, 1)) * tf.ones((2, 2, 2, 1)), tf.constant(0, tf.int64))
    np.testing.assert_array_equal(out[:, 0, 0, 0], [0.0, 1.0])
    assert int(pool.count) == 2


def test_image_pool_built_inside_strategy_run_fails_clearly():
    strategy = mirrored_strategy()
    with strategy.scope():
        pool = ImagePool(2)
    with pytest.raises(RuntimeError, match=r"strategy.scope\(\)"):
        strategy.run(pool, args=(tf.zeros((1, 2, 2, 1)), tf.constant(0)))


# ------------------------------------------------------------------------------------ tf.distribute


def test_mirrored_step_equals_single_device_step(f32_reference):
    opts, batch, before, single_after = f32_reference
    strategy = mirrored_strategy()
    with strategy.scope():
        model = build_model(opts, sgd_pair(LR))
        model.image_pool.build(batch["image"].shape)  # replica-local variables: in the scope, as the trainer does
    set_network_weights(model, before)
    logs = _mirrored_step(strategy, model, batch)
    assert set(logs) == set(G_LOSSES + D_LOSSES)
    after = network_weights(model)
    diff = max_abs_diff(single_after, after)
    print("mirrored vs single, float32:", diff)
    assert max(diff.values()) < F32_ATOL, diff
    assert min(max_abs_diff(before, after).values()) > 1e-3
    counts = strategy.experimental_local_results(model.image_pool.count.value)
    assert [int(c) for c in counts] == [1, 1]  # each replica keeps a pool of its own fakes


def test_mirrored_fit_equals_single_device_step(f32_reference):
    opts, batch, before, single_after = f32_reference
    strategy = mirrored_strategy()
    with strategy.scope():
        model = build_model(opts, sgd_pair(LR))
    set_network_weights(model, before)
    history = model.fit(tf.data.Dataset.from_tensor_slices(batch).batch(2), epochs=1, verbose=0, shuffle=False)
    assert set(history.history) == set(G_LOSSES + D_LOSSES)
    diff = max_abs_diff(single_after, network_weights(model))
    print("mirrored fit vs single, float32:", diff)
    assert max(diff.values()) < F32_ATOL, diff
    assert model.optimizer is None  # fit() built no third optimizer over all the weights
    counts = strategy.experimental_local_results(model.image_pool.count.value)
    assert [int(c) for c in counts] == [1, 1]  # fit() built the replica-local pool in the scope


def _relative_update_error(after: dict, reference: dict, before: dict) -> dict[str, float]:
    """Per network: |update - reference update| / |reference update| over all its weights (L2)."""
    error = {}
    for key in reference:
        num = sum(np.sum((a - r) ** 2) for a, r in zip(after[key], reference[key]))
        den = sum(np.sum((r - b) ** 2) for r, b in zip(reference[key], before[key]))
        error[key] = float(np.sqrt(num / den))
    return error


def _mixed_precision_steps(policy: str, f32_reference, make_optimizers=lambda: sgd_pair(LR)):
    """One-device and mirrored steps under `policy` from the float32 fixture's weights: their relative
    errors to the float32 update, and the two models."""
    opts, batch, before, f32_after = f32_reference
    keras.mixed_precision.set_global_policy(policy)
    strategy = mirrored_strategy()
    single = build_model(opts, make_optimizers())
    with strategy.scope():
        mirrored = build_model(opts, make_optimizers())
        mirrored.image_pool.build(batch["image"].shape)
    for model in (single, mirrored):
        set_network_weights(model, before)
    single.train_step(batch)
    logs = _mirrored_step(strategy, mirrored, batch)
    assert all(np.isfinite(v) for v in logs.values()), logs
    single_error = _relative_update_error(network_weights(single), f32_after, before)
    mirrored_error = _relative_update_error(network_weights(mirrored), f32_after, before)
    print(
        f"{policy}: update error vs float32, single {single_error}, mirrored {mirrored_error}; max abs diff "
        f"mirrored vs single {max_abs_diff(network_weights(single), network_weights(mirrored))}"
    )
    return single_error, mirrored_error, single, mirrored


def test_mirrored_bfloat16_step_is_as_exact_as_the_single_device_one(f32_reference):
    """bfloat16 keeps 8 significant bits: rounded activations and gradients through ~20 layers move G's
    and E's updates by 10-35% (L2) from the float32 update, D's by about 3%, on one device as on two,
    where batch-1 kernels round differently from batch-2 ones, so the two bf16 steps differ from each
    other by as much. The check: the mirrored step is no further from the exact (float32) step than the
    one-device bf16 step (x1.5 for the randomness of rounding), and within 50% of it (the update still
    points the float32 way); a gradient scaled by the wrong batch size would be 100% off."""
    single_error, mirrored_error, _, _ = _mixed_precision_steps("mixed_bfloat16", f32_reference)
    for key in single_error:
        assert mirrored_error[key] < max(1.5 * single_error[key], 0.02) and mirrored_error[key] < 0.5, key


def _loss_scaled_sgd_pair():
    # 2^12: the tiny G's float16 gradients overflow at the default initial scale 2^15, and a skipped
    # step has no update to compare (test_float16_dynamic_loss_scale_recovers covers the default).
    return tuple(keras.optimizers.LossScaleOptimizer(opt, initial_scale=2.0**12) for opt in sgd_pair(LR))


# How far one float16 step may be from the float32 one. Measured (one device and mirrored alike): G 4-7%,
# D 0.3-0.5%, E 10-11%. E's gradient reaches it through all of G's float16 backward pass and an instance-wise
# sum; its error does not shrink with the image size (32-128 px) nor change with the loss scale (2^8-2^15),
# so it is rounding, not underflow, and running G's first conv in float32 only lowers it to 9%.
FLOAT16_UPDATE_ERROR = {"G": 0.1, "D": 0.02, "E": 0.15}


def _native_float16_kernels() -> bool:
    """Whether TensorFlow's oneDNN kernels run float16 natively here (AVX512-FP16 CPUs): then a batch-2 step
    and two batch-1 replicas round differently. Elsewhere float16 is computed in float32 and rounded alike."""
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0" and "avx512_fp16" in harness.cpu_flags()


def test_mirrored_float16_step_with_loss_scaling(f32_reference):
    """float16 (11 significant bits) with loss scaling: finite, close to the float32 update (see
    FLOAT16_UPDATE_ERROR), and the mirrored step equal to the one-device float16 step to within rounding."""
    single_error, mirrored_error, single, mirrored = _mixed_precision_steps(
        "mixed_float16", f32_reference, _loss_scaled_sgd_pair
    )
    for model in (single, mirrored):
        iterations = [int(np.asarray(opt.iterations)) for opt in (model.g_optimizer, model.d_optimizer)]
        assert iterations == [1, 1]  # applied, not skipped as non-finite
    assert all(np.isfinite(w).all() for ws in network_weights(mirrored).values() for w in ws)
    _, _, before, _ = f32_reference
    between = _relative_update_error(network_weights(mirrored), network_weights(single), before)
    print("float16 mirrored vs one-device update, relative:", between)
    for key in single_error:
        assert mirrored_error[key] < max(1.5 * single_error[key], 0.02), key
        assert mirrored_error[key] < FLOAT16_UPDATE_ERROR[key], key
        # A wrong loss scale or reduction is >= 50%. Where float16 is emulated in float32 the two steps
        # round alike (within 1% on an AMD EPYC; G 0.25%, D 0.03%, E 0.6% on an AVX512-FP16 Xeon with
        # TF_ENABLE_ONEDNN_OPTS=0). With native float16 kernels each is its own rounding of the float32 step
        # (measured there: G 6.4% and 6.4% from float32, 6.6% from each other; E 8.2%, 6.2%, 8.7%; not
        # underflow, the same at loss scales 2^8-2^14), so they may be as far apart as two roundings.
        if _native_float16_kernels():
            assert between[key] < 1.5 * np.hypot(single_error[key], mirrored_error[key]), key
        else:
            assert between[key] < 0.1 * FLOAT16_UPDATE_ERROR[key], key


def test_float16_dynamic_loss_scale_recovers():
    keras.mixed_precision.set_global_policy("mixed_float16")
    opts = tiny_options()
    batch = random_batch(opts)
    model = build_model(opts)  # Adam from the options, wrapped by compile()
    assert isinstance(model.g_optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.d_optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.generate(batch).dtype == tf.float32
    scores = model.discriminate(model.input_map(batch), batch["image"])
    assert all(scale[-1].dtype == tf.float32 for scale in scores)  # the real/fake maps
    assert scores[0][0].dtype == tf.float16  # the features stay in the compute dtype

    step = tf.function(model.train_step)
    for _ in range(6):  # overflowing steps are skipped while the scale halves from 2^15
        logs = step(batch)
        assert all(np.isfinite(float(v)) for v in logs.values()), logs
        if int(model.g_optimizer.iterations) >= 2:
            break
    assert int(model.g_optimizer.iterations) >= 2 and float(model.g_optimizer.dynamic_scale) < 2.0**15
    assert all(np.isfinite(w).all() for ws in network_weights(model).values() for w in ws)


# -------------------------------------------------------------------------------------------- learning


def test_a_few_hundred_steps_learn_one_scene():
    """GAN + feature matching alone (no VGG) reproduce one fixed scene: the L1 to it falls below half."""
    opts = tiny_options(num_D=1, lr=1e-3)  # num_D 1 also checks the single-scale output structure
    batch = random_batch(opts, n=1, seed=3)
    colours = np.random.default_rng(1).uniform(-0.8, 0.8, (opts.label_nc, 3)).astype(np.float32)
    batch["image"] = tf.gather(colours, batch["label"])  # the image is a function of the labels
    model = build_model(opts)

    def l1() -> float:
        return float(tf.reduce_mean(tf.abs(model.generate(batch) - batch["image"])))

    initial = l1()
    step = tf.function(model.train_step)
    for _ in range(300):
        step(batch)
    final = l1()
    print(f"L1 to the scene: {initial:.3f} -> {final:.3f}")
    assert final < 0.5 * initial
