"""The export acceptance table, read from bundle manifests (verified first):
size, ONNX parity, averaged AUC on the evaluation split and the drop from the
PyTorch FP32 reference, and whether every INT8 variant is within the gate.

    python benchmarks/dev/export_table.py exports/ [--max-drop 1.0]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from edgederm.runtime.bundle import read_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--max-drop", type=float, default=1.0, help="INT8 gate, AUC points")
    args = parser.parse_args()
    rows, ok = [], True
    for bundle in sorted(p for p in args.folder.iterdir() if (p / "manifest.json").is_file()):
        m = read_manifest(bundle)
        size = sum(f["bytes"] for f in m["files"].values()) / 1e6
        metrics = m.get("metrics") or {}
        auc = metrics.get("avg_auc")
        drop = metrics.get("auc_drop_points")
        if m["precision"] == "int8" and drop is not None and drop > args.max_drop:
            ok = False
        rows.append((bundle.name, size, m["source"]["onnx_parity_max_abs_diff"], auc, drop,
                     metrics.get("split", "-"), metrics.get("reference_avg_auc")))
    print(f"{'bundle':<28} {'MB':>7} {'parity':>9} {'AUC':>6} {'drop':>6}  split")
    for name, size, parity, auc, drop, split, ref in rows:
        auc_s = f"{100 * auc:6.2f}" if auc is not None else "     -"
        drop_s = f"{drop:6.2f}" if drop is not None else "     -"
        print(f"{name:<28} {size:7.2f} {parity:9.1e} {auc_s} {drop_s}  {split}")
    if rows and rows[0][6] is not None:
        print(f"PyTorch FP32 reference averaged AUC: {100 * rows[0][6]:.2f}")
    print(f"every INT8 variant within {args.max_drop} AUC points of FP32: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
