"""Network: heads, grayscale input, and the three initialisations through their real file paths."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from uslearn.errors import UserError
from uslearn.models import (
    Network,
    build_network,
    imagenet_weights_file,
    load_backbone,
)


def fake_imagenet_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Return a full torchvision ResNet18 state dict (with fc) standing in for ImageNet weights."""
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).state_dict()


def images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(0))


def test_network_returns_logits_per_named_head():
    net = Network({"combo": 5, "multilabel": 7}).eval()
    with torch.no_grad():
        feats = net.features(images(3))
        logits = net(images(3))
    assert feats.shape == (3, 512)
    assert set(logits) == {"combo", "multilabel"}
    assert logits["combo"].shape == (3, 5) and logits["multilabel"].shape == (3, 7)
    assert net.head_sizes == {"combo": 5, "multilabel": 7}
    torch.testing.assert_close(net.head(feats)["combo"], logits["combo"])


def test_network_rejects_color_input_and_bad_heads():
    net = Network({"cluster": 3})
    with pytest.raises(ValueError, match="grayscale"):
        net(torch.rand(2, 3, 32, 32))
    for heads in ({}, {"a.b": 3}, {"cluster": 0}):
        with pytest.raises(ValueError):
            Network(heads)
    with pytest.raises(ValueError):
        Network({"cluster": 3}, stem="rgb")


def test_backbone_state_dict_has_torchvision_keys_without_fc():
    keys = set(Network({"cluster": 3}).backbone_state_dict())
    expected = {k for k in fake_imagenet_state() if not k.startswith("fc.")}
    assert keys == expected


def test_imagenet_init_loads_from_torch_hub_cache_in_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = fake_imagenet_state(seed=1)
    file = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_weights_file() == file
    file.parent.mkdir(parents=True)
    torch.save(state, file)
    net = build_network({"multilabel": 7}, init="imagenet")
    for key, value in net.backbone_state_dict().items():
        torch.testing.assert_close(value, state[key])
    assert net.init_report == {"missing": [], "unexpected": [], "mismatched": []}


def test_imagenet_init_without_a_file_says_which_file_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError) as err:
        build_network({"multilabel": 7}, init="imagenet")
    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "--weights" in message


def test_imagenet_init_from_an_explicit_file_into_a_gray_stem_sums_rgb(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    state = fake_imagenet_state(seed=2)
    torch.save(state, tmp_path / "weights.pth")
    net = build_network(
        {"cluster": 4}, init="imagenet", weights=tmp_path / "weights.pth", stem="gray"
    )
    conv1 = net.backbone_state_dict()["conv1.weight"]
    assert conv1.shape == (64, 1, 7, 7)
    torch.testing.assert_close(conv1, state["conv1.weight"].sum(1, keepdim=True))


def test_weights_file_with_another_init_is_refused(tmp_path):
    with pytest.raises(UserError, match="--weights"):
        build_network({"cluster": 4}, init="random", weights=tmp_path / "w.pth")


def test_clustering_checkpoint_backbone_loads_into_a_model_with_different_heads(tmp_path):
    torch.manual_seed(3)
    clustering = Network({"cluster": 10})
    torch.save({"model": clustering.state_dict(), "step": 5}, tmp_path / "best.pt")
    for init in (tmp_path, tmp_path / "best.pt"):
        torch.manual_seed(4)
        net = build_network({"combo": 6, "multilabel": 7}, init=str(init))
        for key, value in net.backbone_state_dict().items():
            torch.testing.assert_close(value, clustering.backbone_state_dict()[key])
        assert set(net.heads) == {"combo", "multilabel"}
        assert net.init_report == {"missing": [], "unexpected": [], "mismatched": []}


def test_checkpoint_with_mismatched_keys_is_reported_and_logged(tmp_path, caplog):
    state = {f"module.{k}": v for k, v in Network({"cluster": 3}).state_dict().items()}
    state["module.backbone.layer4.1.bn2.weight"] = torch.ones(7)  # wrong shape
    del state["module.backbone.layer1.0.conv1.weight"]
    state["module.backbone.extra.weight"] = torch.ones(1)
    torch.save({"model": state}, tmp_path / "checkpoint.pt")
    net = Network({"multilabel": 7})
    with caplog.at_level(logging.WARNING, logger="uslearn"):
        report = load_backbone(net, tmp_path)
    assert report == {
        "missing": ["layer1.0.conv1.weight", "layer4.1.bn2.weight"],
        "unexpected": ["extra.weight"],
        "mismatched": ["layer4.1.bn2.weight"],
    }
    assert "layer4.1.bn2.weight" in caplog.text


@pytest.mark.parametrize(
    "payload",
    [
        {"model": {"conv1.weight": torch.ones(1)}},  # a state dict, but not of a Network
        {"model": {"backbone.nothing": torch.ones(1)}},
        [1, 2, 3],
    ],
)
def test_unusable_checkpoint_is_a_user_error(tmp_path, payload):
    torch.save(payload, tmp_path / "c.pt")
    with pytest.raises(UserError, match="c.pt"):
        build_network({"cluster": 3}, init=str(tmp_path / "c.pt"))


def test_missing_or_unreadable_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="random"):
        build_network({"cluster": 3}, init=str(tmp_path / "nope.pt"))
    with pytest.raises(UserError, match="best.pt"):
        build_network({"cluster": 3}, init=str(tmp_path))
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="bad.pt"):
        build_network({"cluster": 3}, init=str(tmp_path / "bad.pt"))


def test_repeat_stem_normalises_each_channel_with_imagenet_statistics():
    net = Network({"cluster": 3}).eval()
    seen = {}
    net.backbone.conv1.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    x = torch.full((1, 1, 8, 8), 0.5)
    with torch.no_grad():
        net(x)
    expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(seen["x"][0, :, 0, 0], expected)


def test_channels_last_model_gets_channels_last_input_and_the_same_logits():
    net = Network({"cluster": 3}).eval()
    seen = {}
    net.backbone.conv1.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    x = images(2)
    with torch.no_grad():
        plain = net(x)["cluster"]
        net = net.to(memory_format=torch.channels_last)
        fast = net(x)["cluster"]
    assert seen["x"].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-4)
