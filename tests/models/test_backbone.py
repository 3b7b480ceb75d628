"""ResNet backbone: torchvision key names, weight loading (.pth / .safetensors), errors, warnings."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

from occ_core.errors import FormatError, MissingError, OccError
from occ_core.models.backbone import ResNet, build_backbone, load_weights

# A few keys of torchvision's resnet18 / resnet50 state dicts (torchvision.models.resnet.*).
TV_RESNET18_KEYS = [
    "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
    "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.1.conv2.weight", "layer1.1.bn2.running_var",
    "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight", "layer2.0.downsample.1.running_mean",
    "layer3.1.bn2.bias", "layer4.0.downsample.0.weight", "layer4.1.conv2.weight", "layer4.1.bn2.running_var",
]
TV_RESNET50_KEYS = [
    "conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer1.0.conv3.weight", "layer1.0.bn3.weight",
    "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias", "layer1.2.bn3.running_mean",
    "layer2.0.downsample.0.weight", "layer2.3.conv2.weight", "layer3.5.bn3.bias", "layer4.0.downsample.1.running_var",
    "layer4.2.conv3.weight", "layer4.2.bn3.running_var",
]
# Parameter counts of torchvision's models without the fc layer (resnet18: 11,689,512 total,
# fc 513,000; resnet50: 25,557,032 total, fc 2,049,000).
TV_PARAMS_NO_FC = {"resnet18": 11_689_512 - 513_000, "resnet50": 25_557_032 - 2_049_000}


def _quiet(**kw) -> ResNet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_backbone(**kw)


@pytest.mark.parametrize("name,keys", [("resnet18", TV_RESNET18_KEYS), ("resnet50", TV_RESNET50_KEYS)])
def test_torchvision_key_names_and_param_counts(name, keys):
    m = _quiet(name=name, out_indices=(0, 1, 2, 3))
    sd = m.state_dict()
    for k in keys:
        assert k in sd, k
    assert not any(k.startswith("fc.") for k in sd)
    assert sum(p.numel() for p in m.parameters()) == TV_PARAMS_NO_FC[name]
    # torchvision's shapes for a few keys
    if name == "resnet50":
        assert sd["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
        assert sd["layer2.0.downsample.0.weight"].shape == (512, 256, 1, 1)
    else:
        assert sd["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)


@pytest.mark.parametrize("name,channels", [("resnet18", [64, 128, 256, 512]), ("resnet50", [256, 512, 1024, 2048])])
def test_output_strides_and_channels(name, channels):
    m = _quiet(name=name, out_indices=(0, 1, 2, 3)).eval()
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        outs = m(x)
    assert m.out_channels == channels and m.strides == [4, 8, 16, 32]
    for o, c, s in zip(outs, channels, m.strides):
        assert o.shape == (1, c, 32 // s, 64 // s)


def test_out_indices_subset_builds_only_needed_stages():
    m = _quiet(name="resnet18", out_indices=(1, 2))
    assert not hasattr(m, "layer4")
    outs = m(torch.randn(2, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [128, 256] and m.strides == [8, 16]


@functools.lru_cache(maxsize=None)
def _perturbed_torchvision_style_state_cached(name: str) -> dict[str, torch.Tensor]:
    """A full torchvision-style state dict (incl. fc.*) built from our module with random values."""
    src = _quiet(name=name, out_indices=(0, 1, 2, 3))
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in src.state_dict().items():
        if v.is_floating_point():
            v = v + 0.1 * torch.randn(v.shape, generator=g)
            if "running_var" in k:
                v = v.abs() + 0.5
        sd[k] = v.clone()
    sd["fc.weight"] = torch.randn(1000, src.stage_channels[-1], generator=g)
    sd["fc.bias"] = torch.randn(1000, generator=g)
    return sd


def _perturbed_torchvision_style_state(name: str) -> dict[str, torch.Tensor]:
    return dict(_perturbed_torchvision_style_state_cached(name))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_save_and_load_gives_identical_outputs(tmp_path, suffix):
    sd = _perturbed_torchvision_style_state("resnet18")
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    ref = _quiet(name="resnet18", out_indices=(0, 1, 2, 3))
    ref.load_state_dict({k: v for k, v in sd.items() if not k.startswith("fc.")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean torchvision file loads without any warning
        fresh = build_backbone("resnet18", weights=str(path), out_indices=(0, 1, 2, 3))
    x = torch.randn(1, 3, 32, 32)
    ref.eval(), fresh.eval()
    with torch.no_grad():
        for a, b in zip(ref(x), fresh(x)):
            assert torch.equal(a, b)


def test_load_partial_stages_ignores_unbuilt_and_fc(tmp_path):
    sd = _perturbed_torchvision_style_state("resnet18")
    torch.save(sd, tmp_path / "r18.pth")
    m = _quiet(name="resnet18", out_indices=(1,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = load_weights(m, tmp_path / "r18.pth")
    assert not rep.missing and not rep.unexpected
    assert "fc.weight" in rep.ignored and any(k.startswith("layer4.") for k in rep.ignored)
    assert torch.equal(m.layer2[0].conv1.weight, sd["layer2.0.conv1.weight"])


def test_wrapped_and_prefixed_checkpoint(tmp_path):
    sd = _perturbed_torchvision_style_state("resnet18")
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "w.pt")
    m = _quiet(name="resnet18")
    rep = load_weights(m, tmp_path / "w.pt")
    assert torch.equal(m.conv1.weight, sd["conv1.weight"]) and not rep.missing


def test_missing_keys_are_reported(tmp_path):
    sd = _perturbed_torchvision_style_state("resnet18")
    del sd["layer3.0.conv1.weight"]
    sd["extra.thing"] = torch.zeros(3)
    torch.save(sd, tmp_path / "partial.pth")
    m = _quiet(name="resnet18")
    with pytest.warns(UserWarning, match="missing"):
        rep = load_weights(m, tmp_path / "partial.pth")
    assert rep.missing == ["layer3.0.conv1.weight"] and rep.unexpected == ["extra.thing"]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(MissingError, match="nope.pth"):
        build_backbone("resnet18", weights=str(tmp_path / "nope.pth"))


def test_wrong_file_contents_are_format_errors(tmp_path):
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(FormatError, match="garbage.pth"):
        build_backbone("resnet18", weights=str(tmp_path / "garbage.pth"))
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(FormatError, match="no parameter name matches"):
        build_backbone("resnet18", weights=str(tmp_path / "other.pth"))
    # a resnet50 checkpoint into a resnet18: shapes mismatch
    r50 = _quiet(name="resnet50", out_indices=(0,))
    torch.save(r50.state_dict(), tmp_path / "r50.pth")
    with pytest.raises(FormatError, match="shape mismatch.*r50.pth|r50.pth.*shape mismatch"):
        build_backbone("resnet18", weights=str(tmp_path / "r50.pth"))
    assert issubclass(FormatError, OccError)


def test_random_init_warns_with_how_to_pass_weights():
    with pytest.warns(UserWarning, match=r"--set model\.backbone\.weights=PATH"):
        build_backbone("resnet18")


def test_frozen_stages_and_norm_eval():
    m = _quiet(name="resnet18", frozen_stages=1, norm_eval=True)
    m.train()
    assert not m.conv1.weight.requires_grad and not m.layer1[0].conv1.weight.requires_grad
    assert m.layer2[0].conv1.weight.requires_grad
    assert all(not mod.training for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    out = m(torch.randn(1, 3, 32, 32))
    out[0].sum().backward()
    assert m.layer2[0].conv1.weight.grad is not None and m.conv1.weight.grad is None


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown backbone"):
        ResNet("resnet7")
