"""The single-shared network (`ssn`, arXiv 2403.19203): one encoder for both photos, one cross-attention
for every fused stage, per-modality heads, the biased loss; then the whole pipeline on the CI-sized
release: train, export (OpenVINO INT8 and the Jetson graphs, gated), diagnose from the command line."""
import json

import pytest
import torch
from typer.testing import CliRunner

from edgederm import labels as L
from edgederm.cli import app
from edgederm.data.release import read_release
from edgederm.errors import ConfigError
from edgederm.models import create_model
from edgederm.models.attention import SharedCrossAttention
from edgederm.models.config import ModelConfig
from edgederm.models.io import load_model, save_weights
from edgederm.training.loss import multitask_loss
from edgederm.presets import get_preset, resolve_config

runner = CliRunner()


def _small() -> ModelConfig:
    return resolve_config("ssn-tiny", model_overrides={"img_size": 64})[0]


def test_one_encoder_is_registered_saved_and_run_once(tmp_path):
    model = create_model(_small()).eval()
    assert model.clinical_encoder is model.derm_encoder and model.encoders() == [model.derm_encoder]
    keys = model.state_dict().keys()
    assert not any(k.startswith("clinical_encoder.") for k in keys)
    two = create_model(resolve_config("tiny", model_overrides={"img_size": 64, "clinical_encoder": "resnet10t"})[0])
    encoder = sum(p.numel() for p in model.derm_encoder.parameters())
    # one encoder's parameters fewer than the same net with two (fusion and heads differ a little)
    assert sum(p.numel() for p in two.parameters()) - sum(p.numel() for p in model.parameters()) > 0.8 * encoder
    calls = []
    model.derm_encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    x = torch.randn(3, 3, 64, 64)
    logits = model(x, torch.randn(3, 3, 64, 64))
    assert calls == [6]                                    # both photos, one pass
    assert {k: v.shape for k, v in logits.items()} == {b: (3, L.TOTAL_CLASSES) for b in ("clinical", "derm", "fusion")}
    save_weights(model, tmp_path / "m.safetensors")
    again = load_model(tmp_path / "m.safetensors").eval()
    y = torch.randn(3, 3, 64, 64)
    assert torch.equal(again.fused_probabilities(x, y), model.fused_probabilities(x, y))


def test_the_cross_attention_is_one_module_for_every_stage():
    model = create_model(_small())
    assert isinstance(model.fusions, SharedCrossAttention) and len(model.fusion_stages) == 2
    attention = [m for name, m in model.fusions.named_modules()
                 if isinstance(m, torch.nn.Conv2d) and not name.startswith(("clinical_in", "derm_in"))]
    assert len(attention) == 3            # key, query, value: one set for both stages (and both directions)
    # the same weights serve both directions: swapping the photos swaps the halves of each fused map
    c, d = torch.randn(2, 32, 4, 4), torch.randn(2, 32, 4, 4)
    fusion = SharedCrossAttention([32], [32], 8).eval()
    fusion.clinical_in = fusion.derm_in                  # one input projection, so only the attention decides
    (a,), (b,) = fusion([(c, d)]), fusion([(d, c)])
    assert torch.allclose(a[:, :32], b[:, 32:], atol=1e-6) and torch.allclose(a[:, 32:], b[:, :32], atol=1e-6)


def test_a_shared_encoder_needs_one_encoder_name():
    with pytest.raises(ConfigError, match="shared_encoder needs one encoder for both photos"):
        ModelConfig(clinical_encoder="mobilenetv3_small_050", derm_encoder="resnet10t", shared_encoder=True)
    assert get_preset("ssn").model.shared_encoder and get_preset("ssn").model.fusion == "sca"


def test_the_biased_loss_weights_the_branches():
    torch.manual_seed(0)
    logits = {b: torch.randn(4, L.TOTAL_CLASSES) for b in ("clinical", "derm", "fusion")}
    targets = torch.zeros(4, len(L.TASK_KEYS), dtype=torch.long)
    alone = {b: multitask_loss({b: v}, targets) for b, v in logits.items()}
    weights = {"clinical": 0.5, "derm": 1.0, "fusion": 1.0}
    assert torch.allclose(multitask_loss(logits, targets, branch_weights=weights),
                          0.5 * alone["clinical"] + alone["derm"] + alone["fusion"])
    assert get_preset("ssn").recipe.loss_weight_clinical == 0.5
    assert get_preset("ssn-tiny").recipe.loss_weight_clinical == 0.5
    with pytest.raises(ConfigError, match="loss weights must be >= 0"):
        resolve_config("ssn-tiny", train_overrides={"loss_weight_clinical": -1.0})


def test_ssn_trains_exports_passes_the_gate_and_diagnoses(ssn_run, synthetic_release, tmp_path):
    from edgederm.export.exporter import ExportRequest, export
    from edgederm.export.jetson_check import check_graph
    from edgederm.runtime.bundle import read_manifest
    assert json.loads((ssn_run / "config.json").read_text())["model"]["shared_encoder"] is True
    written = {}
    for target in ("openvino", "jetson"):
        # 8 valid cases cannot prove a 1-point margin (conftest's bundles fixture): wide limits, the gate still runs
        for path in export(ExportRequest(run=ssn_run, target=target, precisions="int8", data=synthetic_release,
                                         out=tmp_path, max_auc_drop=50.0, max_flip_rate=100.0), log=lambda m: None):
            written[target] = path
    for target, path in written.items():
        manifest = read_manifest(path)
        gate = manifest["int8_gate"]
        assert manifest["precision"] == "int8" and gate["attempts"][gate["chosen"]]["verdict"] == "pass", target
    for graph in read_manifest(written["jetson"])["graphs"]:
        assert check_graph(written["jetson"] / graph) == [], graph
    case = read_release(synthetic_release).split("test")[0]
    result = runner.invoke(app, ["diagnose", "--bundle", str(written["openvino"]), "--clinical", str(case.clinical),
                                 "--derm", str(case.derm), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data["tasks"]) == set(L.TASK_KEYS) and "score" in data["seven_point"]
