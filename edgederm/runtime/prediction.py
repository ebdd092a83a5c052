"""What a prediction means: per-task probabilities, the top class, and the
seven-point checklist read from the predicted criteria. numpy only."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgederm import labels as L
from edgederm.scoring.calibration import apply_temperatures

DISCLAIMER = ("EdgeDerm is decision support, not a diagnosis: a clinician must examine the patient "
              "and decide on referral and treatment.")


@dataclass
class Prediction:
    probabilities: dict[str, dict[str, float]]       # task -> class -> probability (calibrated when fitted)
    calibration: dict | None = None                     # the bundle's fitted temperatures and thresholds

    @classmethod
    def from_row(cls, row: np.ndarray, calibration: dict | None = None) -> "Prediction":
        """One row of the concatenated N x 24 output; with the bundle's `calibration` fit, each task's
        probabilities are temperature-scaled (edgederm.scoring.calibration) before anything is read."""
        if calibration:
            row = apply_temperatures(np.asarray(row, np.float64)[None], calibration["temperatures"])[0]
        return cls({t.key: {c: float(p) for c, p in zip(t.classes, row[L.TASK_SLICES[t.key]])} for t in L.TASKS},
                   calibration or None)

    def top(self, task: str) -> tuple[str, float]:
        probs = self.probabilities[task]
        cls = max(probs, key=probs.get)
        return cls, probs[cls]

    @property
    def top_classes(self) -> dict[str, str]:
        return {task: self.top(task)[0] for task in L.TASK_KEYS}

    @property
    def expected_score(self) -> float:
        """Sum over the criteria of points x probability of the criterion."""
        return float(sum(points * self.probabilities[task][cls] for task, cls, points in L.SEVEN_POINT_CRITERIA))

    @property
    def seven_point(self) -> dict:
        """The checklist read from each criterion's top class, and the referral the bundle decides with: the
        checklist's score >= 3, or, with a fitted bundle, the expected score at its valid-chosen threshold."""
        contributions = L.seven_point_contributions(self.top_classes)
        score = sum(points for _, _, points in contributions)
        expected = self.calibration is not None and self.calibration.get("seven_point", {}).get("reading") == "expected"
        if expected:
            threshold = self.calibration["seven_point"]["threshold"]
            target = 100 * self.calibration["target_sensitivity"]
            suspicious = self.expected_score >= threshold
            rule = (f"expected score {self.expected_score:.2f} (points x probability) against {threshold:.2f}, "
                    f"the threshold that referred {target:.0f} % of the validation melanomas")
        else:
            threshold = L.SEVEN_POINT_THRESHOLD
            suspicious = score >= threshold
            rule = f"checklist score {score} against {threshold}"
        return {
            "score": score,
            "expected_score": self.expected_score,
            "reading": "expected" if expected else "checklist",
            "threshold": threshold,
            "contributions": [{"task": t, "class": c, "points": p, "criterion": L.TASK_BY_KEY[t].title,
                               "probability": self.probabilities[t][c]} for t, c, p in contributions],
            "suspicious": suspicious,
            "rule": rule,
            "advice": ("suspicious for melanoma: refer to a dermatologist" if suspicious
                       else "not suspicious by the seven-point reading"),
        }

    @property
    def melanoma(self) -> dict | None:
        """P(MEL) at the bundle's valid-chosen operating point, when it has one."""
        if not self.calibration or self.calibration.get("melanoma_probability_threshold") is None:
            return None
        p, threshold = self.probabilities["DIAG"]["MEL"], self.calibration["melanoma_probability_threshold"]
        return {"probability": p, "threshold": threshold, "refer": p >= threshold,
                "target_sensitivity": self.calibration["target_sensitivity"]}

    def to_dict(self) -> dict:
        return {
            "tasks": {t: {"top": self.top(t)[0], "probability": self.top(t)[1],
                          "probabilities": self.probabilities[t]} for t in L.TASK_KEYS},
            "diagnosis": self.probabilities["DIAG"],
            "calibrated": self.calibration is not None,
            "seven_point": self.seven_point,
            "melanoma": self.melanoma,
            "disclaimer": DISCLAIMER,
        }
