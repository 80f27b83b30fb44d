"""Backbones and the embedding model: shapes, frozen BatchNorm, pooling, local weights only."""

import pytest
import torch

from dmltune.models import BACKBONES, EmbeddingModel, build_model, global_pool
from dmltune.models.bn_inception import BNInception
from dmltune.registry import ConfigError


def tiny_input(model, batch=2):
    return torch.randn(batch, model.in_channels, model.input_size, model.input_size)


@pytest.mark.parametrize("name", ["resnet18", "googlenet", "bn_inception", "small_cnn"])
def test_backbones_give_unit_norm_embeddings(name):
    torch.manual_seed(0)
    model = build_model(backbone=name, dim=32).eval()
    with torch.no_grad():
        emb = model(tiny_input(model))
    assert emb.shape == (2, 32)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))


def test_resnet50_builds_and_embeds():
    model = build_model(backbone="resnet50", dim=16).eval()
    assert model.feature_dim == 2048
    with torch.no_grad():
        assert model(tiny_input(model, 1)).shape == (1, 16)


def test_features_then_embed_is_forward():
    model = build_model(backbone="small_cnn", dim=8).eval()
    x = tiny_input(model, 4)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(model.features(x)), model(x))
    assert model.features(x).shape == (4, model.feature_dim)


def test_small_cnn_takes_8px_and_rgb():
    model = build_model(backbone="small_cnn", dim=8, in_channels=3).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 3, 8, 8)).shape == (3, 8)
    assert model.input_spec["mean"] == (0.485, 0.456, 0.406)


def bn_layers(model):
    return [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_frozen_batchnorm_survives_train_mode_and_steps():
    torch.manual_seed(0)
    model = build_model(backbone="small_cnn", dim=8, freeze_bn=True)
    model.train()
    assert all(not m.training for m in bn_layers(model))
    assert all(not p.requires_grad for m in bn_layers(model) for p in m.parameters())
    before = [m.running_mean.clone() for m in bn_layers(model)]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(tiny_input(model, 8) * 3 + 1).sum().backward()
    opt.step()
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, bn_layers(model)))


def test_unfrozen_batchnorm_updates_statistics():
    model = build_model(backbone="small_cnn", dim=8, freeze_bn=False).train()
    before = bn_layers(model)[0].running_mean.clone()
    model(tiny_input(model, 8) * 3 + 1)
    assert not torch.equal(before, bn_layers(model)[0].running_mean)


def test_pooling_modes():
    x = torch.arange(8.0).reshape(1, 2, 2, 2)
    assert global_pool(x, "avg").tolist() == [[1.5, 5.5]]
    assert global_pool(x, "max").tolist() == [[3.0, 7.0]]
    assert global_pool(x, "avg+max").tolist() == [[4.5, 12.5]]
    for mode in ("avg", "max", "avg+max"):
        model = build_model(backbone="small_cnn", dim=4, pooling=mode).eval()
        with torch.no_grad():
            assert model(tiny_input(model)).shape == (2, 4)


def test_missing_pretrained_weights_name_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConfigError) as info:
        build_model(backbone="resnet18", pretrained=True)
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message and "\n" not in message
    with pytest.raises(ConfigError, match="bn_inception-52deb4733.pth"):
        build_model(backbone="bn_inception", pretrained=True)
    with pytest.raises(ConfigError, match="does not exist"):
        build_model(backbone="resnet18", weights=str(tmp_path / "nope.pth"))


def test_local_weights_load_from_hub_folder_and_explicit_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from torchvision.models import resnet18

    torch.manual_seed(1)
    reference = resnet18(weights=None).eval()
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(reference.state_dict(), folder / "resnet18-f37072fd.pth")
    model = build_model(backbone="resnet18", dim=8, pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = torch.nn.Sequential(*list(reference.children())[:-2])(x).mean(dim=(2, 3))
        torch.testing.assert_close(model.features(x), expected)
    explicit = tmp_path / "mine.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in reference.state_dict().items()}}, explicit)
    other = build_model(backbone="resnet18", dim=8, weights=str(explicit)).eval()
    with torch.no_grad():
        torch.testing.assert_close(other.features(x), expected)


def test_wrong_weights_file_is_a_config_error(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, path)
    with pytest.raises(ConfigError, match="does not fit"):
        build_model(backbone="resnet18", weights=str(path))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        build_model(backbone="resnet18", weights=str(path))


# Facts of the public bn_inception-52deb4733.pth checkpoint (Caffe port): 11,295,240 parameters in
# all (1024 → 1000 classifier included), layer names as below, BatchNorm vectors per conv.
BN_INCEPTION_SHAPES = {
    "conv1_7x7_s2.weight": (64, 3, 7, 7),
    "conv1_7x7_s2_bn.running_var": (64,),
    "conv2_3x3.weight": (192, 64, 3, 3),
    "inception_3a_1x1.weight": (64, 192, 1, 1),
    "inception_3a_pool_proj.weight": (32, 192, 1, 1),
    "inception_3c_3x3.weight": (160, 128, 3, 3),
    "inception_3c_double_3x3_2.bias": (96,),
    "inception_4d_double_3x3_reduce.weight": (160, 608, 1, 1),
    "inception_4e_double_3x3_2_bn.weight": (256,),
    "inception_5a_1x1.weight": (352, 1056, 1, 1),
    "inception_5b_pool_proj.weight": (128, 1024, 1, 1),
    "inception_5b_double_3x3_2_bn.running_mean": (224,),
}


def reference_like_checkpoint():
    """A state dict with the checkpoint's key set and shapes: BN vectors stored as 1×C, a classifier."""
    state = {}
    for key, value in BNInception().state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # the Caffe port predates this buffer
        value = torch.randn_like(value.float())
        state[key] = value.reshape(1, -1) if value.dim() == 1 and "_bn." in key else value
    state["last_linear.weight"] = torch.randn(1000, 1024)
    state["last_linear.bias"] = torch.randn(1000)
    return state


def test_bn_inception_matches_the_reference_layout():
    body = BNInception()
    shapes = {k: tuple(v.shape) for k, v in body.state_dict().items()}
    for key, shape in BN_INCEPTION_SHAPES.items():
        assert shapes[key] == shape, key
    assert "inception_3c_1x1.weight" not in shapes and "inception_3c_pool_proj.weight" not in shapes
    assert sum(p.numel() for p in body.parameters()) + 1024 * 1000 + 1000 == 11_295_240


def test_bn_inception_checkpoint_loads_strictly(tmp_path):
    state = reference_like_checkpoint()
    path = tmp_path / "bn_inception-52deb4733.pth"
    torch.save(state, path)
    model = build_model(backbone="bn_inception", dim=8, weights=str(path))
    loaded = model.backbone.state_dict()
    assert torch.equal(loaded["inception_4a_1x1.weight"], state["inception_4a_1x1.weight"])
    assert torch.equal(loaded["conv1_7x7_s2_bn.running_mean"], state["conv1_7x7_s2_bn.running_mean"].flatten())
    assert model.input_spec == {"mean": (104.0, 117.0, 128.0), "std": (1.0, 1.0, 1.0),
                                "channel_order": "BGR", "value_range": 255.0}
    state.pop("inception_5b_1x1.bias")
    torch.save(state, path)
    with pytest.raises(ConfigError, match="1 missing keys"):
        build_model(backbone="bn_inception", weights=str(path))


@pytest.mark.parametrize("params, fragment", [
    ({"backbone": "resnet51"}, "did you mean 'resnet50'"),
    ({"backbone": "resnet18", "pooling": "mean"}, "one of 'avg', 'max', 'avg+max'"),
    ({"backbone": "resnet18", "dim": 0}, "outside its valid range"),
    ({"backbone": "resnet18", "in_channels": 1}, "takes 3-channel images"),
    ({"backbone": "small_cnn", "pretrained": True}, "no pretrained weights"),
    ({"backbone": "resnet18", "embedding": 5}, "has no parameter 'embedding'"),
])
def test_bad_model_parameters(params, fragment):
    with pytest.raises(ConfigError) as info:
        build_model(**params)
    assert fragment in str(info.value)


def test_registry_lists_the_issue_backbones():
    assert set(BACKBONES) == {"resnet50", "resnet18", "googlenet", "bn_inception", "small_cnn"}
    assert isinstance(build_model(backbone="small_cnn"), EmbeddingModel)
