"""Backbones and the embedding model: shapes, frozen BatchNorm, pooling, local weights only."""

import math

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


def test_frozen_batchnorm_can_still_train_its_affine_parameters():
    model = build_model(backbone="small_cnn", dim=8, freeze_bn=True, train_bn_affine=True).train()
    layer = bn_layers(model)[0]
    before = layer.running_mean.clone()
    model(tiny_input(model, 8) * 3 + 1).sum().backward()
    assert not layer.training and torch.equal(before, layer.running_mean)
    assert layer.weight.requires_grad and layer.weight.grad is not None


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


def test_googlenet_weights_drop_the_auxiliary_heads(tmp_path):
    from torchvision.models import googlenet

    torch.manual_seed(2)
    reference = googlenet(weights=None, aux_logits=True, transform_input=False, init_weights=True).eval()
    path = tmp_path / "googlenet-1378be20.pth"
    torch.save(reference.state_dict(), path)  # as torchvision's file: aux1.*, aux2.* and fc.* included
    model = build_model(backbone="googlenet", dim=8, weights=str(path)).eval()
    assert model.input_spec["mean"] == (0.5, 0.5, 0.5) and model.input_spec["std"] == (0.5, 0.5, 0.5)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference.fc = torch.nn.Identity()
        reference.dropout = torch.nn.Identity()
        torch.testing.assert_close(model.features(x), reference(x))


def test_hub_folder_accepts_either_torchvision_resnet50_file(tmp_path, monkeypatch):
    from dmltune.models.backbones import WEIGHT_FILES
    from dmltune.models.weights import find_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    names, url = WEIGHT_FILES["resnet50"]
    assert names == ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth")  # V1 (the papers'), then V2
    (folder / "resnet50-11ad3fa6.pth").touch()
    assert find_weights("resnet50", names, url, None) == folder / "resnet50-11ad3fa6.pth"
    (folder / "resnet50-0676ba61.pth").touch()
    assert find_weights("resnet50", names, url, None) == folder / "resnet50-0676ba61.pth"


def test_channels_last_and_bfloat16_autocast():
    torch.manual_seed(0)
    model = build_model(backbone="small_cnn", dim=8, in_channels=3).eval()
    x = tiny_input(model, 4)
    with torch.no_grad():
        expected = model(x)
        fast = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(fast, expected, rtol=1e-4, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.shape == (4, 8) and torch.isfinite(low).all()
    torch.testing.assert_close(low.float().norm(dim=1), torch.ones(4), rtol=0, atol=2e-2)
    assert (low.float() * expected).sum(dim=1).min() > 0.95


def test_wrong_weights_file_is_a_config_error(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, path)
    with pytest.raises(ConfigError, match="does not fit"):
        build_model(backbone="resnet18", weights=str(path))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        build_model(backbone="resnet18", weights=str(path))


# The convolutions of BN-Inception as laid out in Cadene's pretrainedmodels bninception.py (the
# layout of bn_inception-52deb4733.pth), transcribed from that file: name, out, in, kernel. Each
# convolution has a bias and is followed by "<name>_bn" (BatchNorm, 4 vectors of length out).
REFERENCE_CONVS = """
conv1_7x7_s2 64 3 7 | conv2_3x3_reduce 64 64 1 | conv2_3x3 192 64 3
3a: 1x1 64 192 1 | 3x3_reduce 64 192 1 | 3x3 64 64 3 | double_3x3_reduce 64 192 1 | double_3x3_1 96 64 3 | double_3x3_2 96 96 3 | pool_proj 32 192 1
3b: 1x1 64 256 1 | 3x3_reduce 64 256 1 | 3x3 96 64 3 | double_3x3_reduce 64 256 1 | double_3x3_1 96 64 3 | double_3x3_2 96 96 3 | pool_proj 64 256 1
3c: 3x3_reduce 128 320 1 | 3x3 160 128 3 | double_3x3_reduce 64 320 1 | double_3x3_1 96 64 3 | double_3x3_2 96 96 3
4a: 1x1 224 576 1 | 3x3_reduce 64 576 1 | 3x3 96 64 3 | double_3x3_reduce 96 576 1 | double_3x3_1 128 96 3 | double_3x3_2 128 128 3 | pool_proj 128 576 1
4b: 1x1 192 576 1 | 3x3_reduce 96 576 1 | 3x3 128 96 3 | double_3x3_reduce 96 576 1 | double_3x3_1 128 96 3 | double_3x3_2 128 128 3 | pool_proj 128 576 1
4c: 1x1 160 576 1 | 3x3_reduce 128 576 1 | 3x3 160 128 3 | double_3x3_reduce 128 576 1 | double_3x3_1 160 128 3 | double_3x3_2 160 160 3 | pool_proj 128 576 1
4d: 1x1 96 608 1 | 3x3_reduce 128 608 1 | 3x3 192 128 3 | double_3x3_reduce 160 608 1 | double_3x3_1 192 160 3 | double_3x3_2 192 192 3 | pool_proj 128 608 1
4e: 3x3_reduce 128 608 1 | 3x3 192 128 3 | double_3x3_reduce 192 608 1 | double_3x3_1 256 192 3 | double_3x3_2 256 256 3
5a: 1x1 352 1056 1 | 3x3_reduce 192 1056 1 | 3x3 320 192 3 | double_3x3_reduce 160 1056 1 | double_3x3_1 224 160 3 | double_3x3_2 224 224 3 | pool_proj 128 1056 1
5b: 1x1 352 1024 1 | 3x3_reduce 192 1024 1 | 3x3 320 192 3 | double_3x3_reduce 192 1024 1 | double_3x3_1 224 192 3 | double_3x3_2 224 224 3 | pool_proj 128 1024 1
"""


def reference_shapes() -> dict[str, tuple[int, ...]]:
    """Key → shape of the checkpoint (BatchNorm vectors stored 1×C, as in the Caffe port)."""
    shapes = {}
    for line in REFERENCE_CONVS.strip().splitlines():
        prefix, _, units = line.rpartition(": ")
        for unit in units.split(" | "):
            name, cout, cin, k = unit.split()
            name = f"inception_{prefix}_{name}" if prefix else name
            cout, cin, k = int(cout), int(cin), int(k)
            shapes[name + ".weight"] = (cout, cin, k, k)
            shapes[name + ".bias"] = (cout,)
            for field in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{name}_bn.{field}"] = (1, cout)
    shapes["last_linear.weight"] = (1000, 1024)
    shapes["last_linear.bias"] = (1000,)
    return shapes


def reference_like_checkpoint():
    torch.manual_seed(0)
    return {k: torch.randn(shape) for k, shape in reference_shapes().items()}


def test_bn_inception_matches_the_reference_layout():
    expected = reference_shapes()
    assert len(expected) == 69 * 6 + 2
    # 11.3M parameters in all, the figure usually quoted for BN-Inception (running stats excluded)
    assert sum(math.prod(s) for k, s in expected.items() if "running" not in k) == 11_295_240
    body = BNInception()
    own = {k: tuple(v.shape) for k, v in body.state_dict().items() if not k.endswith("num_batches_tracked")}
    flat = {k: (s[1],) if "_bn." in k else s for k, s in expected.items() if not k.startswith("last_linear")}
    assert own == flat
    assert all(m.eps == 1e-5 for m in body.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():  # 7×7 at 224 (the reference ends in a 7×7 average pooling); at 227 only
        for side in (224, 227):  # ceil-mode pooling keeps the branches' sizes equal
            assert body.eval()(torch.zeros(1, 3, side, side)).shape == (1, 1024, 7, 7)


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
    ({"backbone": "small_cnn", "in_channels": 2}, "1- or 3-channel"),
    ({"backbone": "small_cnn", "in_channels": 4}, "outside its valid range"),
    ({"backbone": "small_cnn", "freeze_bn": "yes"}, "must be true or false"),
    ({"backbone": "resnet18", "embedding": 5}, "has no parameter 'embedding'"),
])
def test_bad_model_parameters(params, fragment):
    with pytest.raises(ConfigError) as info:
        build_model(**params)
    assert fragment in str(info.value)


def test_registry_lists_the_issue_backbones():
    assert set(BACKBONES) == {"resnet50", "resnet18", "googlenet", "bn_inception", "small_cnn"}
    for name in BACKBONES:
        assert BACKBONES[name].param_names == ["pretrained", "weights", "in_channels"]
    assert BACKBONES["small_cnn"].defaults["in_channels"] == 1
    assert isinstance(build_model(backbone="small_cnn"), EmbeddingModel)
