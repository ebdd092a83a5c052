"""The model family: configs and presets, encoders, fusion blocks, heads, the network."""
from edgederm.models.config import PRESETS, ModelConfig, get_preset
from edgederm.models.heads import BRANCHES, fused_probabilities, split_tasks, task_softmax
from edgederm.models.multimodal import MultiModalNet


def create_model(cfg: ModelConfig) -> MultiModalNet:
    """Build the network with random weights (`edgederm.models.pretrained.initialize` loads ImageNet ones)."""
    return MultiModalNet(cfg)


__all__ = ["BRANCHES", "PRESETS", "ModelConfig", "MultiModalNet", "create_model", "fused_probabilities",
           "get_preset", "split_tasks", "task_softmax"]
