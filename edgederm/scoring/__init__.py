"""Scoring: the numpy statistics shared by the workstation and the device.

- metrics: the paper's metrics (AUCs, accuracies, melanoma scores);
- calibration: the temperature and melanoma-threshold fit on valid, and the clinic's operating point;
- gate: the FP32-reference gate that decides whether an INT8/FP16 variant keeps the reference's AUC and
  decisions;
- weighted_average: the branches' weighted average, P_FI.

numpy and edgederm.labels only: `edgederm bench` scores bundles with it on a device that has no torch, no
scikit-learn and no model code (the import contract, tests/test_import_contract.py).
"""
