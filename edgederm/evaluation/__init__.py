"""Evaluation: the paper's metrics, predictions per branch, and reports."""
