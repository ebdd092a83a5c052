"""The model family: the attention blocks' contract, shapes at every fusion
stage, gradients into both encoders, presets' sizes, configs. Pretrained
weights: test_pretrained.py."""
import json

import pytest
import torch

from edgederm import labels as L
from edgederm.errors import ConfigError
from edgederm.models import ModelConfig, create_model
from edgederm.presets import get_preset
from edgederm.models.attention import AsymmetricAttentionBlock, AsymmetricFusion, BidirectionalFusion
from edgederm.models.fusion import ConcatFusion
from edgederm.models.heads import split_tasks

# Small, fast encoders for behaviour tests (random init); 64 px keeps them quick.
SMALL = ModelConfig(clinical_encoder="mobilenetv3_small_050", derm_encoder="resnet10t", img_size=64,
                    fusion_stages=(1, 2, 3, 4))


def test_aab_refines_dermoscopy_and_never_touches_clinical():
    torch.manual_seed(0)
    block = AsymmetricFusion(channels=16, key_channels=4)
    clinical, derm = torch.randn(2, 16, 5, 6), torch.randn(2, 16, 5, 6)
    clinical_before = clinical.clone()
    out = block(clinical, derm)
    assert out.shape == derm.shape
    assert torch.equal(clinical, clinical_before)            # clinical features are not modified
    assert not torch.allclose(out, derm)                      # dermoscopy features are
    # Clinical features steer: other clinical maps give another refinement of the same dermoscopy map.
    assert not torch.allclose(block(torch.randn_like(clinical), derm), out)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)[0]                    # 1 x C x H x W -> N x C


@pytest.mark.parametrize("scale", [False, True])
def test_aab_is_the_formula_of_the_design(scale):
    torch.manual_seed(1)
    block = AsymmetricAttentionBlock(channels=8, key_channels=4, scale=scale)
    c, d = torch.randn(1, 8, 3, 4), torch.randn(1, 8, 3, 4)
    ck, cq, dv = _tokens(block.key(c)), _tokens(block.query(c)), _tokens(block.value(d))
    # the paper's softmax(C_k C_q^T), or EdgeDerm's scaled one
    m_c = torch.softmax(ck @ cq.T / (4 ** 0.5 if scale else 1.0), dim=-1)     # N x N
    expected = (m_c @ dv).T.reshape(8, 3, 4) + d[0]
    torch.testing.assert_close(block(c, d)[0], expected, atol=1e-5, rtol=1e-5)


def test_bab_is_co_attention_one_affinity_read_both_ways():
    torch.manual_seed(2)
    block = BidirectionalFusion(channels=8, key_channels=8, scale=False)
    c, d = torch.randn(1, 8, 3, 4), torch.randn(1, 8, 3, 4)
    affinity = _tokens(block.clinical_key(c)) @ _tokens(block.derm_query(d)).T      # N_clinical x N_derm
    derm = (torch.softmax(affinity.T, -1) @ _tokens(block.clinical_value(c))).T.reshape(8, 3, 4) + d[0]
    clinical = (torch.softmax(affinity, -1) @ _tokens(block.derm_value(d))).T.reshape(8, 3, 4) + c[0]
    torch.testing.assert_close(block(c, d)[0], torch.cat([clinical, derm]), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in block.parameters()) == 4 * (8 * 8 + 8)      # four 1x1 convs


@pytest.mark.parametrize("block_cls, out_factor", [(BidirectionalFusion, 2), (ConcatFusion, 1)])
def test_baseline_blocks_shapes(block_cls, out_factor):
    block = block_cls(16, 4)
    out = block(torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4))
    assert out.shape == (2, 16 * out_factor, 4, 4) and block.out_channels == 16 * out_factor


@pytest.mark.parametrize("fusion", ["aab", "bab", "cat"])
def test_shapes_hold_at_every_configured_stage_and_gradients_reach_both_encoders(fusion):
    torch.manual_seed(0)
    model = create_model(ModelConfig(**{**SMALL.to_dict(), "fusion": fusion}))
    clinical, derm = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    (c_feats, _), (d_feats, _) = model.clinical_encoder(clinical), model.derm_encoder(derm)
    for fusion_block, s, c in zip(model.fusions, model.fusion_stages, model.clinical_stages):
        fused = fusion_block(c_feats[c], d_feats[s])
        assert fused.shape[0] == 2 and fused.shape[-2:] == d_feats[s].shape[-2:]
        assert fused.shape[1] == fusion_block.out_channels
    assert model.fusion_stages == [1, 2, 3, 4]
    logits = model(clinical, derm)
    assert set(logits) == {"clinical", "derm", "fusion"}
    assert all(v.shape == (2, L.TOTAL_CLASSES) for v in logits.values())
    # Only the fusion head's loss: gradients must still reach both encoders through the fusion blocks.
    logits["fusion"].sum().backward()
    for encoder in (model.clinical_encoder, model.derm_encoder):
        grads = [p.grad for p in encoder.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "resnet10t", "tf_efficientnet_lite0"])
def test_pre_logits_heads_read_the_whole_pretrained_representation(name):
    import timm

    from edgederm.models.encoders import FeatureEncoder
    torch.manual_seed(0)
    encoder = FeatureEncoder(name, 64).eval()
    whole = timm.create_model(name, num_classes=0).eval()     # timm's own model, classifier removed
    whole.load_state_dict(encoder.body.state_dict(), strict=True)   # the encoder holds every tensor of it
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stages, pooled = encoder(x)
        torch.testing.assert_close(pooled, whole(x), rtol=0, atol=0)
    assert pooled.shape == (2, encoder.pooled_channels) == (2, whole.head_hidden_size)
    assert [s.shape[1] for s in stages] == encoder.channels


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "tf_efficientnet_lite0"])
def test_last_stage_heads_pool_the_last_map_as_features_only_did(name):
    import timm

    from edgederm.models.encoders import FeatureEncoder
    torch.manual_seed(0)
    encoder = FeatureEncoder(name, 64, branch_features="last_stage").eval()
    features_only = timm.create_model(name, features_only=True).eval()
    features_only.load_state_dict(encoder.body.state_dict(), strict=True)   # same tensors: the head is pruned
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stages, pooled = encoder(x)
        for a, b in zip(stages, features_only(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(pooled, stages[-1].mean((2, 3)))
    assert encoder.pooled_channels == encoder.channels[-1]


def test_pre_logits_adds_the_conv_heads_to_the_count():
    from edgederm.models.summary import summarize
    whole = summarize(create_model(SMALL))
    pruned = summarize(create_model(ModelConfig(**{**SMALL.to_dict(), "branch_features": "last_stage"})))
    assert whole["branch_features"] == {"features": "pre_logits", "clinical_channels": 1024, "derm_channels": 512}
    assert pruned["branch_features"]["clinical_channels"] == 288
    # mobilenetv3_small_050's conv head is 288 -> 1024 (+ bias); the clinical head reads 1024 instead of 288
    extra = 288 * 1024 + 1024 + (1024 - 288) * (L.TOTAL_CLASSES)
    assert round((whole["total"]["params_m"] - pruned["total"]["params_m"]) * 1e6) == extra
    with pytest.raises(ConfigError, match="branch_features 'pooled' is not one of pre_logits, last_stage"):
        ModelConfig(branch_features="pooled")


def test_weights_saved_with_features_only_names_still_load(tmp_path):
    """Runs and bundles written before the encoders kept their whole timm model (features_only names,
    heads on the last stage map, no branch_features in the config) load as they were."""
    import timm
    from safetensors.torch import save_file

    from edgederm.models.io import load_model
    torch.manual_seed(0)
    cfg = ModelConfig(**{**SMALL.to_dict(), "clinical_encoder": "swin_tiny_patch4_window7_224", "img_size": 224,
                         "fusion_stages": (-1,), "branch_features": "last_stage"})
    model = create_model(cfg).eval()
    old_names = {}
    for prefix, name in (("clinical_encoder.body.", cfg.clinical_encoder), ("derm_encoder.body.", cfg.derm_encoder)):
        kwargs = {"img_size": 224} if "swin" in name else {}
        old = timm.create_model(name, features_only=True, **kwargs).state_dict()
        now = {k.removeprefix(prefix): k for k in model.state_dict() if k.startswith(prefix)}
        for old_key in old:          # the old wrapper's names: "model.layers_0..." for Swin, flattened for CNNs
            new_key = now[old_key.removeprefix("model.").replace("layers_", "layers.")]
            old_names[new_key] = prefix + old_key
    assert any(k != v for k, v in old_names.items())            # the names really differ
    state = {old_names.get(k, k): v for k, v in model.state_dict().items()}
    config = cfg.to_dict()
    del config["branch_features"]
    save_file(state, tmp_path / "old.safetensors", metadata={"model_config": json.dumps(config)})
    loaded = load_model(tmp_path / "old.safetensors").eval()
    assert loaded.cfg.branch_features == "last_stage"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded.fused_probabilities(x, x), model.fused_probabilities(x, x), rtol=0, atol=0)


def test_fused_probabilities_are_per_task_distributions_weighted_by_branch():
    torch.manual_seed(0)
    model = create_model(SMALL).eval()
    x = torch.randn(3, 3, 64, 64)
    probs = model.fused_probabilities(x, x)
    for part in split_tasks(probs).values():
        torch.testing.assert_close(part.sum(dim=1), torch.ones(3))
    model.set_branch_weights(0.0, 1.0, 0.0)      # all weight on the dermoscopy branch = P_D
    with torch.no_grad():
        derm_only = torch.cat([p.softmax(1) for p in split_tasks(model(x, x)["derm"]).values()], 1)
        torch.testing.assert_close(model.fused_probabilities(x, x), derm_only)
    with pytest.raises(ConfigError, match="sum to 1"):
        model.set_branch_weights(0.5, 0.5, 0.5)


def test_paper_presets_have_the_papers_parameter_counts():
    """Table 9 of the paper (AFF rows): within 1 %, and CAT < AAB < BAB as there."""
    counts = {name: sum(p.numel() for p in create_model(get_preset(name).model).parameters()) / 1e6
              for name in ("aff-cat", "aff-aab", "aff-bab", "sff-cat")}
    print(counts)
    for name, paper in {"aff-cat": 32.48, "aff-aab": 33.06, "aff-bab": 33.88}.items():
        assert abs(counts[name] - paper) / paper <= 0.01, name
    assert counts["aff-cat"] < counts["aff-aab"] < counts["aff-bab"]
    assert abs(counts["sff-cat"] - 58.49) / 58.49 <= 0.03      # docs/model.md: the paper's Swin-T counts 1.3 M more
    assert get_preset("paper").model == get_preset("aff-aab").model
    assert get_preset("sff-cat").model.framework == "sff" and get_preset("paper").model.framework == "aff"
    assert not get_preset("paper").model.attention_scale and get_preset("paper").model.key_ratio == 1


def test_config_json_round_trip_and_errors(tmp_path):
    cfg = get_preset("aff-bab").model
    cfg.save(tmp_path / "model.json")
    assert ModelConfig.load(tmp_path / "model.json") == cfg
    (tmp_path / "bad.json").write_text(json.dumps({**cfg.to_dict(), "heads": 4}))
    with pytest.raises(ConfigError, match="unknown key.*heads"):
        ModelConfig.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="fusion 'sum'"):
        ModelConfig(fusion="sum")
    with pytest.raises(ConfigError, match="fusion stage 7 does not exist"):
        create_model(ModelConfig(**{**SMALL.to_dict(), "fusion_stages": (7,)}))
    with pytest.raises(ConfigError, match="not a timm model"):
        create_model(ModelConfig(**{**SMALL.to_dict(), "derm_encoder": "resnet_9000"}))
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        get_preset("huge").model


@pytest.mark.parametrize("fusion, key_ratio, scale", [("aab", 1, False), ("bab", 1, False), ("bab", 8, True),
                                                      ("cat", 8, True)])
def test_every_fusion_block_exports_to_onnx_with_parity(fusion, key_ratio, scale, tmp_path):
    """The paper's unscaled softmax (SDPA with scale=1) and co-attention survive the ONNX export."""
    from edgederm.export.onnx_export import export_onnx, run_torch
    from edgederm.export.onnxruntime_scoring import onnxruntime_session, run_onnx
    torch.manual_seed(0)
    model = create_model(ModelConfig(**{**SMALL.to_dict(), "fusion": fusion, "fusion_stages": (-2, -1),
                                        "key_ratio": key_ratio, "attention_scale": scale})).eval()
    x = torch.randn(3, 3, 64, 64).numpy()
    session = onnxruntime_session(export_onnx(model, tmp_path / "model.onnx"))
    assert abs(run_onnx(session, x, x[::-1].copy()) - run_torch(model, x, x[::-1].copy())).max() < 1e-5


def test_the_alternatives_the_readme_rejects_count_what_it_says():
    """docs/model.md, "Where EdgeDerm differs from the paper": fusion at the last two stages, and BAB as two
    independent AABs, would miss the paper's counts by the figures it quotes."""
    def millions(cfg):
        return sum(p.numel() for p in create_model(cfg).parameters()) / 1e6
    two_stages = {name: millions(ModelConfig(**{**get_preset(name).model.to_dict(), "fusion_stages": (-2, -1)}))
                  for name in ("aff-aab", "aff-cat")}
    assert round(two_stages["aff-aab"], 2) == 33.56 and round(two_stages["aff-cat"], 2) == 32.82
    one_aab = sum(p.numel() for p in AsymmetricAttentionBlock(768, 768).parameters()) / 1e6     # 3 C^2 + 3 C
    two_aabs = millions(get_preset("aff-aab").model) + one_aab + 768 * L.TOTAL_CLASSES / 1e6          # + wider fusion head
    assert round(two_aabs, 2) == 34.85
