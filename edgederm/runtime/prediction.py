"""What a prediction means: per-task probabilities, the top class, and the
seven-point checklist read from the predicted criteria. numpy only."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgederm import labels as L

DISCLAIMER = ("EdgeDerm is decision support, not a diagnosis: a clinician must examine the patient "
              "and decide on referral and treatment.")


@dataclass
class Prediction:
    probabilities: dict[str, dict[str, float]]       # task -> class -> probability

    @classmethod
    def from_row(cls, row: np.ndarray) -> "Prediction":
        """One row of the concatenated N x 24 output."""
        return cls({t.key: {c: float(p) for c, p in zip(t.classes, row[L.TASK_SLICES[t.key]])} for t in L.TASKS})

    def top(self, task: str) -> tuple[str, float]:
        probs = self.probabilities[task]
        cls = max(probs, key=probs.get)
        return cls, probs[cls]

    @property
    def top_classes(self) -> dict[str, str]:
        return {task: self.top(task)[0] for task in L.TASK_KEYS}

    @property
    def seven_point(self) -> dict:
        contributions = L.seven_point_contributions(self.top_classes)
        score = sum(points for _, _, points in contributions)
        suspicious = score >= L.SEVEN_POINT_THRESHOLD
        return {
            "score": score,
            "threshold": L.SEVEN_POINT_THRESHOLD,
            "contributions": [{"task": t, "class": c, "points": p, "criterion": L.TASK_BY_KEY[t].title,
                               "probability": self.probabilities[t][c]} for t, c, p in contributions],
            "suspicious": suspicious,
            "reading": ("suspicious for melanoma: refer to a dermatologist" if suspicious
                        else "below the threshold of 3: not suspicious by the seven-point rule"),
        }

    def to_dict(self) -> dict:
        return {
            "tasks": {t: {"top": self.top(t)[0], "probability": self.top(t)[1],
                          "probabilities": self.probabilities[t]} for t in L.TASK_KEYS},
            "diagnosis": self.probabilities["DIAG"],
            "seven_point": self.seven_point,
            "disclaimer": DISCLAIMER,
        }
