"""Our Keras networks against a PyTorch reference with the official module structure.

Same weights (moved by `convert_state_dict`, so these tests also prove the converter) and same inputs
must give the same outputs to 1e-4 in float32: the generators, every intermediate output of every
discriminator scale, and the encoder's instance-pooled features. Odd sizes for D make padding and
count_include_pad differences show. The gradients (input and every weight) must match too: our layers
compute them their own way, to keep fewer tensors for the backward pass.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tensorflow as tf  # noqa: E402

from pix2pixhd_tf.convert import convert_state_dict  # noqa: E402
from pix2pixhd_tf.networks import Encoder, GlobalGenerator, LocalEnhancer, MultiscaleDiscriminator  # noqa: E402
from pix2pixhd_tf.testing import torch_reference as ref  # noqa: E402

ATOL = 1e-4


def _inputs(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _max_abs(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


@pytest.mark.parametrize(
    "n_local_enhancers, n_downsample, size",
    [(0, 3, (32, 64)), (1, 2, (32, 64)), (2, 2, (32, 48))],
    ids=["global", "local1", "local2"],
)
def test_generator_matches_reference(n_local_enhancers, n_downsample, size):
    torch.manual_seed(0)
    input_nc, output_nc, ngf = 5, 3, 8
    if n_local_enhancers:
        torch_net = ref.LocalEnhancer(input_nc, output_nc, ngf, n_downsample, 2, n_local_enhancers, 1)
        net = LocalEnhancer(input_nc, output_nc, ngf, n_downsample, 2, n_local_enhancers, 1)
    else:
        torch_net = ref.GlobalGenerator(input_nc, output_nc, ngf, n_downsample, 2)
        net = GlobalGenerator(input_nc, output_nc, ngf, n_downsample, 2)
    convert_state_dict(ref.state_dict_numpy(torch_net), net, "G")

    x = _inputs((2, *size, input_nc))
    with torch.no_grad():
        expected = ref.to_nhwc(torch_net(ref.to_nchw(x)))
    diff = _max_abs(np.asarray(net(x)), expected)
    print(f"G n_local_enhancers={n_local_enhancers}: max abs diff {diff:.2e}")
    assert diff < ATOL
    assert np.std(expected) > 0.1  # a non-trivial output, not a saturated or constant one


@pytest.mark.parametrize(
    "num_D, n_layers_D, get_interm_feat, size",
    [(3, 3, True, (36, 52)), (2, 2, False, (37, 53))],
    ids=["interm_feat", "flat"],
)
def test_discriminator_matches_reference(num_D, n_layers_D, get_interm_feat, size):
    torch.manual_seed(1)
    input_nc, ndf = 7, 8
    torch_net = ref.MultiscaleDiscriminator(input_nc, ndf, n_layers_D, num_D, get_interm_feat)
    net = MultiscaleDiscriminator(input_nc, ndf, n_layers_D, num_D)
    convert_state_dict(ref.state_dict_numpy(torch_net), net, "D")

    x = _inputs((2, *size, input_nc), seed=1)
    with torch.no_grad():
        expected = torch_net(ref.to_nchw(x))
    outputs = net([x[..., :-3], x[..., -3:]])
    assert len(outputs) == len(expected) == num_D
    worst = 0.0
    for i, (ours, theirs) in enumerate(zip(outputs, expected, strict=True)):
        assert len(ours) == n_layers_D + 2
        # Without intermediate features the official D returns only its final map.
        pairs = zip(ours, theirs, strict=True) if get_interm_feat else [(ours[-1], theirs[-1])]
        for j, (a, b) in enumerate(pairs):
            diff = _max_abs(np.asarray(a), ref.to_nhwc(b))
            worst = max(worst, diff)
            assert diff < ATOL, f"result {i} (scale{num_D - 1 - i}), output {j}: {diff}"
    print(f"D num_D={num_D} interm={get_interm_feat}: max abs diff {worst:.2e}")


def test_encoder_matches_reference():
    torch.manual_seed(2)
    output_nc, feat_num, nef, n_down = 3, 3, 8, 2
    torch_net = ref.Encoder(output_nc, feat_num, nef, n_down)
    net = Encoder(output_nc, feat_num, nef, n_down)
    convert_state_dict(ref.state_dict_numpy(torch_net), net, "E")

    image = _inputs((2, 32, 48, output_nc), seed=2)
    instance = np.zeros((2, 32, 48), np.int32)
    instance[0, 4:20, 8:30] = 26001
    instance[0, 18:, 25:] = 7
    instance[1, :10] = 26002
    instance[1, 10:, 40:] = 33
    with torch.no_grad():
        expected = ref.to_nhwc(torch_net(ref.to_nchw(image), torch.from_numpy(instance[:, None])))
    diff = _max_abs(np.asarray(net([image, instance])), expected)
    print(f"E: max abs diff {diff:.2e}")
    assert diff < ATOL
    assert len(np.unique(expected[0, ..., 0])) == 3  # pooled: one value per instance


def _assert_gradients_match(
    net, torch_net, kind: str, inputs: list[np.ndarray], make_net, torch_inputs: list, watched: int = 0
):
    """Our gradients of sum(output · u) for a random u per output, against torch's: the gradient of input
    `watched` (the last channels of torch's first input) and every weight's, the latter moved into a second
    network by the converter (so layouts need no mapping)."""
    tensors = [tf.constant(x) for x in inputs]
    with tf.GradientTape() as tape:
        tape.watch(tensors[watched])
        outputs = tf.nest.flatten(net(tensors if len(tensors) > 1 else tensors[0]))
        upstream = [_inputs(o.shape, seed=10 + i) for i, o in enumerate(outputs)]
        loss = tf.add_n([tf.reduce_sum(o * u) for o, u in zip(outputs, upstream, strict=True)])
    grads = tape.gradient(loss, [tensors[watched], *net.trainable_weights])

    torch_inputs[0].requires_grad_(True)
    theirs = tf.nest.flatten(torch_net(*torch_inputs))
    torch_loss = sum((t * ref.to_nchw(u)).sum() for t, u in zip(theirs, upstream, strict=True))
    torch_loss.backward()
    grad_net = make_net()
    convert_state_dict({k: p.grad.numpy() for k, p in torch_net.named_parameters()}, grad_net, kind)

    input_grad = ref.to_nhwc(torch_inputs[0].grad)[..., -inputs[watched].shape[-1] :]
    expected = [input_grad, *(np.asarray(w) for w in grad_net.trainable_weights)]
    names = ["input", *(w.path for w in net.trainable_weights)]
    assert len(grads) == len(expected) > 2
    largest = max(float(np.max(np.abs(g))) for g in expected)
    worst = 0.0
    for name, ours, want in zip(names, grads, expected, strict=True):
        scale = float(np.max(np.abs(want)))
        error = _max_abs(np.asarray(ours), want)
        if scale < 1e-5 * largest:
            # A bias right before an IN: zero in exact arithmetic (IN removes it), rounding noise on both sides.
            assert float(np.max(np.abs(ours))) < 1e-5 * largest, f"{kind} {name} should be ~0"
            continue
        worst = max(worst, error / scale)
        assert error < 1e-4 * scale, f"{kind} {name}: max abs error {error:.1e}, largest value {scale:.2e}"
    print(f"{kind}: worst gradient error {worst:.1e} of the gradient's largest value")


@pytest.mark.parametrize("n_local_enhancers", [0, 2], ids=["global", "local2"])
def test_generator_gradients_match_reference(n_local_enhancers):
    torch.manual_seed(3)
    input_nc, output_nc, ngf, n_down = 4, 3, 8, 2
    if n_local_enhancers:
        make_torch = lambda: ref.LocalEnhancer(input_nc, output_nc, ngf, n_down, 2, n_local_enhancers, 1)  # noqa: E731
        make = lambda: LocalEnhancer(input_nc, output_nc, ngf, n_down, 2, n_local_enhancers, 1)  # noqa: E731
    else:
        make_torch = lambda: ref.GlobalGenerator(input_nc, output_nc, ngf, n_down, 2)  # noqa: E731
        make = lambda: GlobalGenerator(input_nc, output_nc, ngf, n_down, 2)  # noqa: E731
    torch_net, net = make_torch(), make()
    convert_state_dict(ref.state_dict_numpy(torch_net), net, "G")
    x = _inputs((2, 32, 48, input_nc), seed=3)
    _assert_gradients_match(net, torch_net, "G", [x], make, [ref.to_nchw(x)])


def test_discriminator_gradients_match_reference():
    torch.manual_seed(4)
    input_nc, ndf, n_layers_D, num_D = 5, 8, 3, 2
    torch_net = ref.MultiscaleDiscriminator(input_nc, ndf, n_layers_D, num_D, True)
    make = lambda: MultiscaleDiscriminator(input_nc, ndf, n_layers_D, num_D)  # noqa: E731
    net = make()
    convert_state_dict(ref.state_dict_numpy(torch_net), net, "D")
    x = _inputs((2, 37, 45, input_nc), seed=4)
    condition, image = x[..., :2], x[..., 2:]
    # Our D takes the label map and the image apart and gives the label map no gradient.
    _assert_gradients_match(net, torch_net, "D", [condition, image], make, [ref.to_nchw(x)], watched=1)
    condition = tf.constant(condition)
    with tf.GradientTape() as tape:
        tape.watch(condition)
        loss = tf.add_n([tf.reduce_sum(t) for t in tf.nest.flatten(net([condition, tf.constant(image)]))])
    assert tape.gradient(loss, condition) is None


def test_encoder_gradients_match_reference():
    torch.manual_seed(5)
    make = lambda: Encoder(3, 3, 8, 2)  # noqa: E731
    torch_net, net = ref.Encoder(3, 3, 8, 2), make()
    convert_state_dict(ref.state_dict_numpy(torch_net), net, "E")
    image = _inputs((2, 16, 24, 3), seed=5)
    instance = np.zeros((2, 16, 24), np.int32)
    instance[0, 4:12, 8:20] = 26001
    instance[1, 10:] = 7
    torch_instance = torch.from_numpy(instance[:, None])
    _assert_gradients_match(net, torch_net, "E", [image, instance], make, [ref.to_nchw(image), torch_instance])
