"""The label schema: grouping of every raw string of the real release, the
17 AUC categories, and the seven-point score."""
import pytest

from edgederm import labels as L
from edgederm.data.release import read_release
from edgederm.errors import LabelError
from tests.helpers import write_indexes, write_jpeg, write_meta

# The real release's label schema, verbatim: task -> class -> raw strings of its meta.csv.
REAL_RAW_STRINGS = {
    "diagnosis": {
        "BCC": ["basal cell carcinoma"],
        "NEV": ["blue nevus", "clark nevus", "combined nevus", "congenital nevus", "dermal nevus",
                "recurrent nevus", "reed or spitz nevus"],
        "MEL": ["melanoma", "melanoma (in situ)", "melanoma (less than 0.76 mm)", "melanoma (0.76 to 1.5 mm)",
                "melanoma (more than 1.5 mm)", "melanoma metastasis"],
        "MISC": ["dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion"],
        "SK": ["seborrheic keratosis"],
    },
    "pigment_network": {"ABS": ["absent"], "TYP": ["typical"], "ATP": ["atypical"]},
    "streaks": {"ABS": ["absent"], "REG": ["regular"], "IR": ["irregular"]},
    "pigmentation": {"ABS": ["absent"], "REG": ["diffuse regular", "localized regular"],
                     "IR": ["diffuse irregular", "localized irregular"]},
    "regression_structures": {"ABS": ["absent"], "PRS": ["blue areas", "white areas", "combinations"]},
    "dots_and_globules": {"ABS": ["absent"], "REG": ["regular"], "IR": ["irregular"]},
    "blue_whitish_veil": {"ABS": ["absent"], "PRS": ["present"]},
    "vascular_structures": {"ABS": ["absent"],
                            "REG": ["arborizing", "comma", "hairpin", "within regression", "wreath"],
                            "IR": ["dotted", "linear irregular"]},
}


def test_meta_csv_with_every_raw_string_is_grouped_as_the_reference_code_does(tmp_path):
    # One row per (column, raw string); the other label columns hold "absent" / a valid diagnosis.
    rows, expected = [], []
    for column, groups in REAL_RAW_STRINGS.items():
        for cls, raws in groups.items():
            for raw in raws:
                row = {t.column: "absent" for t in L.TASKS}
                row["diagnosis"] = "clark nevus"
                row[column] = raw
                n = len(rows)
                row.update(case_num=str(n + 1), clinic=f"A/c{n}.jpg", derm=f"A/d{n}.JPG", seven_point_score="0")
                write_jpeg(tmp_path / "images" / "A" / f"c{n}.jpg")
                write_jpeg(tmp_path / "images" / "A" / f"d{n}.JPG")
                rows.append(row)
                expected.append((column, cls))
    write_meta(tmp_path, rows)
    write_indexes(tmp_path, {"train": list(range(len(rows))), "valid": [], "test": []})
    release = read_release(tmp_path)
    by_column = {t.column: t for t in L.TASKS}
    for case, (column, cls) in zip(release.split("train"), expected):
        task = by_column[column]
        assert task.classes[case.labels[L.TASK_KEYS.index(task.key)]] == cls, (column, cls)
    # Beyond the real spellings, the schema accepts only the reference code's group names.
    reference_aliases = {"nevus", "DF/LT/MLS/MISC", "regular", "irregular", "present", "dotted/irregular"}
    for task in L.TASKS:
        real = {raw for raws in REAL_RAW_STRINGS[task.column].values() for raw in raws}
        assert real <= set(task.raw_strings)
        assert set(task.raw_strings) - real <= reference_aliases


def test_schema_has_eight_tasks_seventeen_auc_categories_and_eight_melanoma_categories():
    assert L.TASK_KEYS == ("DIAG", "PN", "STR", "PIG", "RS", "DaG", "BWV", "VS")
    assert L.NUM_CLASSES == (5, 3, 3, 3, 2, 3, 2, 3)
    assert L.TOTAL_CLASSES == 24
    assert len(L.AUC_CATEGORIES) == 17
    assert L.AUC_CATEGORIES[:5] == (("DIAG", "BCC"), ("DIAG", "NEV"), ("DIAG", "MEL"), ("DIAG", "MISC"), ("DIAG", "SK"))
    assert ("PN", "ABS") not in L.AUC_CATEGORIES
    assert len(L.MELANOMA_CATEGORIES) == 8
    slices = list(L.TASK_SLICES.values())
    assert slices[0] == slice(0, 5) and slices[-1] == slice(21, 24)


def test_unknown_raw_string_names_column_and_value():
    with pytest.raises(LabelError, match=r"'wavy'.*'streaks'"):
        L.TASK_BY_KEY["STR"].encode("wavy")


def test_seven_point_score_matches_real_rows():
    # Rows of the real meta.csv: (criteria) -> seven_point_score column.
    assert L.seven_point_score({"PN": "ABS", "STR": "ABS", "PIG": "ABS", "RS": "PRS", "DaG": "IR",
                                "BWV": "PRS", "VS": "REG"}) == 4
    assert L.seven_point_score({"PN": "ATP", "STR": "IR", "PIG": "IR", "RS": "ABS", "DaG": "IR",
                                "BWV": "PRS", "VS": "IR"}) == 9
    assert L.seven_point_score({"PN": 0, "STR": 0, "PIG": 0, "RS": 0, "DaG": 0, "BWV": 0, "VS": 0}) == 0
    named = L.seven_point_contributions({"PN": "ATP", "STR": "ABS", "PIG": "REG", "RS": "ABS", "DaG": "ABS",
                                         "BWV": "ABS", "VS": "ABS"})
    assert named == [("PN", "ATP", 2)]


def test_metadata_is_one_hot_and_unknown_or_missing_values_list_the_allowed_ones():
    vector = L.encode_metadata({"sex": " Male ", "location": "head neck", "elevation": "nodular"})
    assert len(vector) == L.METADATA_SIZE == 14 and sum(vector) == 3
    assert vector[1] == 1.0                                                   # sex: female, male
    assert vector[2 + L.METADATA_FIELDS["location"].index("head neck")] == 1.0
    assert vector[-1] == 1.0                                                  # elevation: ..., nodular
    with pytest.raises(LabelError, match=r"^location: unknown value 'elbow' \(allowed: abdomen, acral, back, "):
        L.encode_metadata({"sex": "female", "location": "elbow", "elevation": "flat"})
    with pytest.raises(LabelError, match=r"^elevation: missing \(allowed: flat, palpable, nodular\)$"):
        L.encode_metadata({"sex": "female", "location": "back", "elevation": " "})


def test_the_reader_keeps_the_metadata_and_never_refuses_a_release_for_it(tmp_path):
    root = tmp_path / "release"
    rows = []
    for i, (sex, location) in enumerate((("female", "back"), ("", "elbow"))):
        write_jpeg(root / "images" / "a" / f"c{i}.jpg")
        write_jpeg(root / "images" / "a" / f"d{i}.jpg")
        rows.append({"case_num": str(i + 1), "diagnosis": "melanoma", "seven_point_score": "0",
                     "pigment_network": "absent", "streaks": "absent", "pigmentation": "absent",
                     "regression_structures": "absent", "dots_and_globules": "absent",
                     "blue_whitish_veil": "absent", "vascular_structures": "absent",
                     "level_of_diagnostic_difficulty": "low", "elevation": "flat", "location": location, "sex": sex,
                     "management": "excision", "clinic": f"a/c{i}.jpg", "derm": f"a/d{i}.jpg", "case_id": "",
                     "notes": ""})
    write_meta(root, rows)
    write_indexes(root, {"train": [0], "valid": [1], "test": []})
    cases = list(read_release(root).cases.values())
    assert [c.metadata for c in cases] == [{"sex": "female", "location": "back", "elevation": "flat"},
                                           {"sex": "", "location": "elbow", "elevation": "flat"}]
    assert L.encode_metadata(cases[0].metadata)
    with pytest.raises(LabelError, match="sex: missing"):
        L.encode_metadata(cases[1].metadata)
