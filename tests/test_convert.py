"""Official PyTorch checkpoints -> our networks: files, DataParallel prefixes, wrong flags, clusters, CLI."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pix2pixhd_tf.experiment import load_networks  # noqa: E402
from pix2pixhd_tf.training import checkpoint as ckpt  # noqa: E402
from pix2pixhd_tf import networks  # noqa: E402
from pix2pixhd_tf.convert import (  # noqa: E402
    CheckpointMismatchError,
    convert_checkpoint,
    convert_state_dict,
    load_official_clusters,
    load_torch_state_dict,
    save_converted,
)
from pix2pixhd_tf.options import Options  # noqa: E402
from pix2pixhd_tf.styles import ClusterBank, default_cluster_file  # noqa: E402
from pix2pixhd_tf.training.trainer import Trainer  # noqa: E402
from pix2pixhd_tf.testing import torch_reference as ref  # noqa: E402

ATOL = 1e-4
# Tiny official-style models: label_nc 5 + instance edge -> G input 6 (+ feat_num 3), D input 6 + 3.
BASE = dict(label_nc=5, ngf=8, n_downsample_global=2, n_blocks_global=1, num_D=2, n_layers_D=2, ndf=8)


def _torch_G(opts: Options):
    if opts.netG == "local":
        return ref.LocalEnhancer(
            opts.generator_input_nc, opts.output_nc, opts.ngf, opts.n_downsample_global, opts.n_blocks_global,
            opts.n_local_enhancers, opts.n_blocks_local,
        )  # fmt: skip
    return ref.GlobalGenerator(
        opts.generator_input_nc, opts.output_nc, opts.ngf, opts.n_downsample_global, opts.n_blocks_global
    )


def _torch_D(opts: Options, get_interm_feat=True):
    nc = opts.discriminator_input_nc
    return ref.MultiscaleDiscriminator(nc, opts.ndf, opts.n_layers_D, opts.num_D, get_interm_feat)


def _inputs(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _assert_same_output(torch_net, net, x):
    with torch.no_grad():
        expected = ref.to_nhwc(torch_net(ref.to_nchw(x)))
    np.testing.assert_allclose(np.asarray(net(x)), expected, atol=ATOL, rtol=0)


def test_global_G_and_D_round_trip_through_pth_files(tmp_path):
    torch.manual_seed(0)
    opts = Options(**BASE)
    torch_G, torch_D = _torch_G(opts), _torch_D(opts)
    torch.save(torch_G.state_dict(), tmp_path / "latest_net_G.pth")
    torch.save(torch_D.state_dict(), tmp_path / "latest_net_D.pth")

    G, D, E = convert_checkpoint(opts, tmp_path)
    assert E is None
    _assert_same_output(torch_G, G, _inputs((1, 16, 32, opts.generator_input_nc)))
    x = _inputs((1, 20, 28, opts.discriminator_input_nc))
    with torch.no_grad():
        expected = torch_D(ref.to_nchw(x))
    for ours, theirs in zip(D([x[..., :-3], x[..., -3:]]), expected, strict=True):
        np.testing.assert_allclose(np.asarray(ours[-1]), ref.to_nhwc(theirs[-1]), atol=ATOL, rtol=0)


def test_local_G_from_data_parallel_checkpoint(tmp_path):
    torch.manual_seed(1)
    opts = Options(**BASE, netG="local", n_local_enhancers=1, n_blocks_local=1)
    torch_G = _torch_G(opts)
    state = torch.nn.DataParallel(torch_G).state_dict()
    assert all(k.startswith("module.") for k in state)
    torch.save(state, tmp_path / "latest_net_G.pth")

    G, D, E = convert_checkpoint(opts, tmp_path)
    assert isinstance(G, networks.LocalEnhancer) and D is None and E is None
    _assert_same_output(torch_G, G, _inputs((1, 16, 32, opts.generator_input_nc)))


def test_instance_feat_G_and_E_at_an_epoch(tmp_path):
    torch.manual_seed(2)
    opts = Options(**BASE, instance_feat=True, feat_num=3, nef=8, n_downsample_E=2)
    torch_G = _torch_G(opts)
    torch_E = ref.Encoder(opts.output_nc, opts.feat_num, opts.nef, opts.n_downsample_E)
    torch.save(torch_G.state_dict(), tmp_path / "20_net_G.pth")
    torch.save(torch_E.state_dict(), tmp_path / "20_net_E.pth")

    G, D, E = convert_checkpoint(opts, tmp_path, which_epoch="20")
    assert D is None
    _assert_same_output(torch_G, G, _inputs((1, 16, 16, 9)))
    image = _inputs((1, 16, 24, 3))
    instance = np.zeros((1, 16, 24), np.int32)
    instance[0, 4:, 10:] = 26001
    with torch.no_grad():
        expected = ref.to_nhwc(torch_E(ref.to_nchw(image), torch.from_numpy(instance[:, None])))
    np.testing.assert_allclose(np.asarray(E([image, instance])), expected, atol=ATOL, rtol=0)


def test_missing_G_file_lists_what_is_there(tmp_path):
    (tmp_path / "latest_net_D.pth").touch()
    with pytest.raises(FileNotFoundError, match=r"latest_net_G\.pth.*latest_net_D\.pth"):
        convert_checkpoint(Options(**BASE), tmp_path)


def _mismatch(state_dict, network) -> str:
    with pytest.raises(CheckpointMismatchError) as info:
        convert_state_dict(state_dict, network)
    return str(info.value)


def test_wrong_ngf_names_keys_shapes_and_flag():
    torch.manual_seed(0)
    state = ref.state_dict_numpy(_torch_G(Options(**BASE)))
    G = networks.build_generator(Options(**{**BASE, "ngf": 16}))
    before = [w.numpy().copy() for w in G.weights]
    message = _mismatch(state, G)
    assert "model.1.weight: [8, 6, 7, 7] vs [16, 6, 7, 7]" in message
    assert "--ngf: the checkpoint looks like 8, these options give 16" in message
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, G.weights, strict=True))  # nothing assigned


def test_wrong_input_channels_and_local_checkpoint_for_global_G():
    torch.manual_seed(0)
    local = Options(**BASE, netG="local", n_local_enhancers=1, n_blocks_local=1)
    state = ref.state_dict_numpy(_torch_G(local))
    message = _mismatch(state, networks.build_generator(Options(**{**BASE, "label_nc": 35})))
    assert "unexpected in the checkpoint" in message and "model1_1.1.weight [8, 6, 7, 7]" in message
    assert "--netG: the checkpoint looks like local, these options give global" in message
    assert "--label_nc / --input_nc / --no_instance" in message and "looks like 6, these options give 36" in message


def test_wrong_num_D():
    torch.manual_seed(0)
    state = ref.state_dict_numpy(_torch_D(Options(**BASE)))
    message = _mismatch(state, networks.build_discriminator(Options(**{**BASE, "num_D": 3})))
    assert "missing from the checkpoint" in message and "scale2_layer0.0.weight [8, 9, 4, 4]" in message
    assert "--num_D: the checkpoint looks like 2, these options give 3" in message


def test_wrong_n_layers_D_in_flat_checkpoint():
    """A D trained with --no_ganFeat_loss has flat `layer{i}.{k}` keys."""
    torch.manual_seed(0)
    state = ref.state_dict_numpy(_torch_D(Options(**BASE), get_interm_feat=False))
    message = _mismatch(state, networks.build_discriminator(Options(**{**BASE, "n_layers_D": 3})))
    assert "layer0.8.weight: [1, 32, 4, 4] vs [64, 32, 4, 4]" in message
    assert "--n_layers_D: the checkpoint looks like 2, these options give 3" in message


def test_old_instance_norm_buffers_are_ignored_but_batch_norm_is_refused():
    torch.manual_seed(0)
    opts = Options(**BASE)
    state = ref.state_dict_numpy(_torch_G(opts))
    G = networks.build_generator(opts)
    # PyTorch < 0.4 saved running stats for InstanceNorm2d (the official pretrained models have them).
    old = {**state, "model.2.running_mean": np.zeros(8), "model.2.running_var": np.ones(8),
           "model.10.conv_block.6.running_mean": np.zeros(32)}  # fmt: skip
    convert_state_dict(old, G, "G")
    np.testing.assert_array_equal(G.get_layer("model_1").kernel.numpy(), state["model.1.weight"].transpose(2, 3, 1, 0))

    message = _mismatch({**state, "model.2.weight": np.ones(8, np.float32), "model.2.bias": np.zeros(8)}, G)
    assert "model.2.weight [8]" in message and "--norm batch" in message


def test_kind_is_checked():
    with pytest.raises(ValueError, match="kind='D'"):
        convert_state_dict({}, networks.build_generator(Options(**BASE)), "D")


def test_missing_torch_gives_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install -e \.\[convert\]"):
        load_torch_state_dict(tmp_path / "latest_net_G.pth")


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"net": torch.nn.Linear(2, 2)}, tmp_path / "model.pth")
    with pytest.raises(ValueError, match="weights_only"):
        load_torch_state_dict(tmp_path / "model.pth")


def test_official_clusters(tmp_path):
    centres = {0: np.random.rand(10, 3), 26: np.random.rand(4, 3)}  # as encode_features.py saves them
    np.save(tmp_path / "features_clustered_010.npy", centres)
    clusters = load_official_clusters(tmp_path / "features_clustered_010.npy", feat_num=3, allow_pickle=True)
    assert sorted(clusters) == [0, 26] and clusters[26].shape == (4, 3) and clusters[26].dtype == np.float32
    np.testing.assert_allclose(clusters[0], centres[0], rtol=1e-6)
    np.save(tmp_path / "features.npy", {0: np.random.rand(5, 4)})
    with pytest.raises(ValueError, match="unclustered features.npy"):
        load_official_clusters(tmp_path / "features.npy", feat_num=3, allow_pickle=True)


def _load_cli():
    path = pathlib.Path(__file__).parents[1] / "tools" / "convert_checkpoint.py"
    spec = importlib.util.spec_from_file_location("convert_checkpoint_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_writes_a_checkpoint_that_test_and_train_accept(tmp_path):
    torch.manual_seed(0)
    opts = Options(**BASE, checkpoints_dir=str(tmp_path / "ours"), name="converted")
    torch_G = _torch_G(opts)
    torch.save(torch_G.state_dict(), tmp_path / "latest_net_G.pth")
    np.save(tmp_path / "clusters.npy", {1: np.arange(6, dtype=np.float32).reshape(2, 3)})
    flagfile = tmp_path / "official.cfg"
    flagfile.write_text("".join(f"--{k}={v}\n" for k, v in BASE.items()))

    cli = _load_cli()
    argv = ["convert_checkpoint", f"--flagfile={flagfile}", f"--torch_checkpoint_dir={tmp_path}",
            f"--clusters_file={tmp_path / 'clusters.npy'}", "--allow_pickle", f"--checkpoints_dir={opts.checkpoints_dir}",
            "--name=converted"]  # fmt: skip
    try:
        cli.main(cli.FLAGS(argv))
    finally:
        cli.FLAGS.unparse_flags()

    # Inference reads G back and reproduces PyTorch.
    G, _, _ = load_networks(opts)
    x = np.random.default_rng(0).uniform(0, 1, (1, 16, 24, opts.generator_input_nc)).astype("float32")
    with torch.no_grad():
        expected = torch_G(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(G(x), expected, rtol=0, atol=ATOL)
    bank = ClusterBank.load(default_cluster_file(opts))
    np.testing.assert_array_equal(bank.center(1, 1), [3, 4, 5])

    # Training resumes from it (fresh optimizers, epoch 1) with the same flags.
    trainer = Trainer(opts.replace(continue_train=True, no_vgg_loss=True))
    trainer.restore_or_initialise()
    assert int(trainer.position.epoch) == 1
    np.testing.assert_allclose(trainer.model.generator(x), expected, rtol=0, atol=ATOL)

    # Converting again over it is refused, and leaves the first checkpoint intact.
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        save_converted(opts, G, None, None)
    assert ckpt.available_checkpoints(ckpt.experiment_dir(opts)) == ["latest"]


@pytest.mark.slow
def test_converted_local_checkpoint_exports_and_serves_the_pytorch_image(tmp_path):
    """Official .pth -> our checkpoint -> SavedModel: serving_default gives PyTorch's image within one level."""
    import tensorflow as tf

    from pix2pixhd_tf.serving.saved_model import export_saved_model
    from pix2pixhd_tf.inputs import encode_input

    torch.manual_seed(1)
    opts = Options(**BASE, netG="local", n_local_enhancers=1, n_blocks_local=1,
                   checkpoints_dir=str(tmp_path / "ours"), name="local")  # fmt: skip
    torch_G = _torch_G(opts)
    torch.save(torch_G.state_dict(), tmp_path / "latest_net_G.pth")
    G, D, E = convert_checkpoint(opts, tmp_path)
    save_converted(opts, G, D, E)
    version_dir = export_saved_model(opts, str(tmp_path / "export"))

    rng = np.random.default_rng(0)
    label = rng.integers(0, opts.label_nc, (2, 32, 48)).astype(np.int32)
    instance = (label * 1000 + rng.integers(0, 2, label.shape)).astype(np.int32)
    served = (
        tf.saved_model.load(version_dir)
        .signatures["serving_default"](label=tf.constant(label), instance=tf.constant(instance))["image"]
        .numpy()
    )

    x = encode_input(label, instance, label_nc=opts.label_nc).numpy()
    with torch.no_grad():
        expected = torch_G(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    expected_uint8 = np.clip(np.round((expected + 1.0) * 127.5), 0, 255)
    assert served.dtype == np.uint8 and served.shape == (2, 32, 48, 3)
    assert np.abs(served.astype(np.int32) - expected_uint8.astype(np.int32)).max() <= 1
