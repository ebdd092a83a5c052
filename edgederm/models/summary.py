"""Parameters and GFLOPs per component, counted by torch's own FlopCounterMode.

FLOPs are torch's count: 2 per multiply-accumulate of convolutions, matmuls and
attention, at batch 1 and the config's input size (papers that quote "FLOPs"
for Swin-T, 4.5 G, usually mean multiply-accumulates: half of ours).
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from edgederm.data.inputs import input_shape
from edgederm.models.heads import BranchNet
from edgederm.presets import paper_row

COMPONENTS = {   # row name -> attribute of the network (a row whose attribute it lacks is left out)
    "clinical encoder": "clinical_encoder",
    "dermoscopy encoder": "derm_encoder",
    "fusion blocks": "fusions",
    "clinical head": "clinical_head",
    "dermoscopy head": "derm_head",
    "fusion head": "fusion_head",
    # clinical-only (edgederm.models.clinical_only)
    "global token": "global_token",
    "lesion selection": "selection",
    "cross-interaction": "interaction",
    "task classifiers": "classifiers",
    # jif-mmfa (edgederm.models.jif_mmfa)
    "metadata encoder": "metadata_encoder",
    "image head": "image_head",
    "metadata head": "metadata_head",
}


def _module_flops(by_module: dict, name: str) -> int:
    """FLOPs of one module; a ModuleList is never called itself, so sum its children."""
    if name in by_module:
        return sum(by_module[name].values())
    prefix = name + "."
    return sum(sum(counts.values()) for key, counts in by_module.items()
               if key.startswith(prefix) and "." not in key[len(prefix):])


def summarize(model: BranchNet) -> dict:
    """{"rows": [{"component", "params_m", "gflops"}...], "total": {...}, "config": {...}}"""
    inputs = [torch.zeros(1, *input_shape(name, model.cfg.img_size)) for name in model.input_names]
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*inputs)
    model.train(was_training)
    by_module = counter.get_flop_counts()
    root = type(model).__name__
    rows = []
    for name, attr in COMPONENTS.items():
        if not hasattr(model, attr):
            continue
        if attr == "clinical_encoder" and model.cfg.shared_encoder:   # counted once, in the dermoscopy row
            rows.append({"component": "clinical encoder (shared)", "params_m": 0.0, "gflops": 0.0})
            continue
        module = getattr(model, attr)
        flops = _module_flops(by_module, f"{root}.{attr}")
        rows.append({"component": name, "params_m": sum(p.numel() for p in module.parameters()) / 1e6,
                     "gflops": flops / 1e9})
    total = {"component": "total", "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
             "gflops": counter.get_total_flops() / 1e9}
    branches = {"features": model.cfg.branch_features, "clinical_channels": model.clinical_encoder.pooled_channels,
                "derm_channels": model.derm_encoder.pooled_channels if "dermoscopy" in model.input_names else None}
    fusion = ({"features": model.cfg.fusion_features, "channels": model.fusion_head.fc.in_features}
              if hasattr(model, "fusion_head") else None)
    paper = paper_row(model.cfg)
    paper_m = None if paper is None else paper.paper_params_m
    return {"config": model.cfg.to_dict(), "framework": model.cfg.framework, "branch_features": branches,
            "fusion_features": fusion,
            "rows": rows, "total": total,
            "paper": None if paper is None else {"row": paper.name, "params_m": paper_m,
                                                 "difference_percent": 100 * (total["params_m"] / paper_m - 1)}}


def format_summary(summary: dict) -> str:
    b = summary["branch_features"]
    heads = (f"heads P_C / P_D read {b['features']} features: {b['clinical_channels']} / {b['derm_channels']} channels"
             if b["derm_channels"] is not None else
             f"the task classifiers read the clinical encoder's {b['features']} features ({b['clinical_channels']} channels)")
    lines = [heads]
    if summary.get("fusion_features"):
        f = summary["fusion_features"]
        lines.append(f"fusion head P_FU reads {f['features']}: {f['channels']} channels")
    lines += [f"{'component':<20} {'params (M)':>11} {'GFLOPs':>9}", "-" * 42]
    for row in summary["rows"] + [summary["total"]]:
        lines.append(f"{row['component']:<20} {row['params_m']:>11.2f} {row['gflops']:>9.2f}")
    if summary.get("paper"):
        p = summary["paper"]
        lines.append(f"{'the paper (' + p['row'] + ')':<20} {p['params_m']:>11.2f}  ({p['difference_percent']:+.1f} %)")
    return "\n".join(lines)
