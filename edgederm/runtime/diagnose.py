"""`edgederm diagnose`: one case as text or JSON, or a day's cases from a CSV.

A case is what the bundle takes (manifest "inputs"): the clinical and the
dermoscopy photo, the clinical photo alone for a clinical-only bundle, and
for a jif-mmfa bundle also the patient's sex, the lesion's body location and
its elevation (labels.METADATA_FIELDS; an unknown value is an error that
lists the allowed ones). A CSV of cases has a column per photo, `clinical`
and `derm` (paths, relative to the CSV's folder unless absolute), a column per
metadata field when the bundle takes them (`sex`, `location`, `elevation`),
and optionally `id`. Each row is predicted on its own:
an unreadable image fails its row, with the reason, and the batch goes on.
While one pair is inferred, the next pair's photos are already being decoded
(decoding a phone photo takes longer than the model). The results file is
written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Mapping

from edgederm import labels as L
from edgederm.errors import EdgeDermError
from edgederm.runtime.prediction import DISCLAIMER, Prediction
from edgederm.runtime.predictor import Predictor

# model input -> its command-line option (--clinical, --derm) and CSV column
PHOTO_FIELDS = {"clinical": "clinical", "dermoscopy": "derm"}


def input_fields(input_names: tuple[str, ...]) -> list[str]:
    """Every option / CSV column a bundle with these inputs needs, in input order: a photo's, or the three
    metadata fields for the metadata input."""
    return [field for name in input_names
            for field in (L.METADATA_FIELDS if name == L.METADATA_INPUT else (PHOTO_FIELDS[name],))]


def case_items(input_names: tuple[str, ...], values: Mapping[str, object]) -> tuple:
    """One case as the predictor takes it (a photo per photo input, the metadata mapping for the metadata
    input), from its fields (input_fields)."""
    return tuple({f: values[f] for f in L.METADATA_FIELDS} if name == L.METADATA_INPUT else values[PHOTO_FIELDS[name]]
                 for name in input_names)


def format_text(prediction: Prediction, clinical: str, derm: str | None, bundle: str,
                metadata: Mapping[str, str] | None = None) -> str:
    d = prediction.to_dict()
    patient = [f"patient: {', '.join(f'{k} {v}' for k, v in metadata.items())}"] if metadata else []
    lines = ([DISCLAIMER, f"clinical: {clinical}"] + ([f"dermoscopy: {derm}"] if derm else []) + patient
             + [f"bundle: {bundle}", ""])
    top, p = prediction.top("DIAG")
    others = ", ".join(f"{c} {v:.2f}" for c, v in d["diagnosis"].items())
    lines.append(f"Diagnosis (model): {top} {p:.2f}   [{others}]")
    lines.append("Seven-point checklist criteria:")
    points = {(t, c): pts for t, c, pts in L.SEVEN_POINT_CRITERIA}
    for task in L.TASKS[1:]:
        cls, prob = prediction.top(task.key)
        spread = ", ".join(f"{c} {v:.2f}" for c, v in d["tasks"][task.key]["probabilities"].items())
        add = points.get((task.key, cls))
        lines.append(f"  {task.title:<22} {cls:<4} {prob:.2f}   [{spread}]" + (f"   +{add}" if add else ""))
    sp = d["seven_point"]
    named = ", ".join(f"{c['task']} {c['class']} +{c['points']}" for c in sp["contributions"]) or "no criterion"
    lines.append(f"Seven-point checklist score: {sp['score']} ({named}); expected score {sp['expected_score']:.2f}.")
    lines.append(f"Reading ({'calibrated, ' if d['calibrated'] else ''}{sp['rule']}): {sp['advice']}.")
    if d["melanoma"]:
        m = d["melanoma"]
        lines.append(f"P(MEL) {m['probability']:.2f} against {m['threshold']:.2f}, the threshold for "
                     f"{100 * m['target_sensitivity']:.0f} % melanoma sensitivity on validation: "
                     f"{'refer' if m['refer'] else 'below it'}.")
    return "\n".join(lines)


RESULT_COLUMNS = (["id", "clinical", "derm", "status", "error", "diagnosis", "diagnosis_probability"]
                  + [f"p_DIAG_{c}" for c in L.TASKS[0].classes]
                  + [t.key for t in L.TASKS[1:]] + ["seven_point_score", "expected_score", "reading", "suspicious"])


def result_fields(prediction: dict) -> dict:
    """The prediction columns of RESULT_COLUMNS, from `Prediction.to_dict()` (also what the clinic app stores)."""
    tasks, sp = prediction["tasks"], prediction["seven_point"]
    return {"diagnosis": tasks["DIAG"]["top"], "diagnosis_probability": f"{tasks['DIAG']['probability']:.4f}",
            **{f"p_DIAG_{c}": f"{v:.4f}" for c, v in tasks["DIAG"]["probabilities"].items()},
            **{t: tasks[t]["top"] for t in L.TASK_KEYS[1:]},
            "seven_point_score": sp["score"], "expected_score": f"{sp['expected_score']:.3f}",
            "reading": sp["reading"], "suspicious": "yes" if sp["suspicious"] else "no"}


def _resolve(base: Path, value: str) -> Path:
    path = Path(value.strip())
    return path if path.is_absolute() else base / path


def _prepared_ahead(predictor: Predictor, pairs: list) -> Iterator:
    """For each case (or None), its model inputs or the EdgeDermError that preparing it raised; the next
    case is prepared on a background thread while the caller runs the model on this one."""
    def prepare(pair):
        if pair is None:
            return None
        try:
            return predictor.prepare_cases([pair])
        except EdgeDermError as e:
            return e
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgederm-ahead") as ahead:
        future = ahead.submit(prepare, pairs[0]) if pairs else None
        for i in range(len(pairs)):
            current = future.result()
            future = ahead.submit(prepare, pairs[i + 1]) if i + 1 < len(pairs) else None
            yield current


def diagnose_pairs(predictor: Predictor, pairs_csv: Path, out_csv: Path, progress=None) -> tuple[int, list[str]]:
    """Predict every row; returns (rows written, failure messages)."""
    try:
        with open(pairs_csv, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except FileNotFoundError:
        raise EdgeDermError(f"{pairs_csv}: file not found") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise EdgeDermError(f"{pairs_csv}: not a readable CSV file ({e})") from None
    needed = input_fields(predictor.input_names)
    missing = [c for c in needed if c not in header]
    if missing:
        raise EdgeDermError(f"{pairs_csv}: missing column(s) {', '.join(missing)} "
                            f"(this bundle needs {', '.join(needed)}; optional id)")
    metadata = [f for f in L.METADATA_FIELDS if f in needed]
    base = pairs_csv.parent
    jobs = []
    for line, row in enumerate(rows, start=2):
        row = {k.strip(): (v or "") for k, v in row.items() if k}
        case_id = row.get("id", "").strip() or f"line{line}"
        empty = [c for c in needed if not row[c].strip()]
        values = {c: row[c] if c in metadata else _resolve(base, row[c]) for c in needed}
        pair = None if empty else case_items(predictor.input_names, values)
        jobs.append({"line": line, "id": case_id, "clinical": row["clinical"], "derm": row.get("derm", ""), "pair": pair,
                     **{f: row[f] for f in metadata},
                     "error": f"empty {' and '.join(empty)} cell" if empty else None})
    results, failures = [], []
    inputs = _prepared_ahead(predictor, [job["pair"] for job in jobs])
    for job in (progress(jobs) if progress else jobs):
        prepared = next(inputs)
        result = {"id": job["id"], "clinical": job["clinical"], "derm": job["derm"], **{f: job[f] for f in metadata}}
        try:
            if job["error"]:
                raise EdgeDermError(job["error"])
            if isinstance(prepared, EdgeDermError):
                raise prepared
            prediction = Prediction.from_row(predictor.run(*prepared)[0], predictor.calibration)
        except EdgeDermError as e:
            failures.append(f"{pairs_csv}: line {job['line']} ({job['id']}): {e}")
            results.append({**result, "status": "error", "error": str(e)})
            continue
        results.append({**result, "status": "ok", "error": "", **result_fields(prediction.to_dict())})
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_csv.with_name(out_csv.name + ".partial")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        # a metadata bundle's results repeat the patient's fields after the photos
        columns = RESULT_COLUMNS[:3] + metadata + RESULT_COLUMNS[3:]
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(results)
    os.replace(tmp, out_csv)
    return len(results), failures
