"""The derm7pt release_v0 reader: end to end on a synthetic release, and one
test per error, each checking the one-line message names file, row and value."""
from pathlib import Path

import numpy as np
import pytest

from edgederm import labels as L
from edgederm.data.release import SPLITS, read_release, scan_release
from edgederm.errors import DataError
from tests.helpers import read_meta, write_indexes, write_meta


def test_reads_a_synthetic_release_end_to_end(synthetic_release):
    release = read_release(synthetic_release, verify_images=True)
    meta = read_meta(synthetic_release)
    assert sum(len(release.split(s)) for s in SPLITS) == len(meta) == 40
    clinical, derm, labels, case_id = next(release.iter_split("test"))
    assert clinical.shape == derm.shape == (512, 768, 3) and clinical.dtype == np.uint8
    first = release.split("test")[0]
    assert case_id == first.case_num == meta[first.row]["case_num"]
    # labels are the grouped raw strings of that row
    row = meta[first.row]
    assert labels == tuple(t.encode(row[t.column]) for t in L.TASKS)
    counts = release.class_counts("train")
    assert sum(counts["DIAG"]) == len(release.split("train"))


def test_missing_meta_csv(release_copy):
    (release_copy / "meta" / "meta.csv").unlink()
    with pytest.raises(DataError, match=r"meta\.csv: file not found"):
        read_release(release_copy)


@pytest.mark.parametrize("split", SPLITS)
def test_missing_index_file(release_copy, split):
    (release_copy / "meta" / f"{split}_indexes.csv").unlink()
    with pytest.raises(DataError, match=rf"{split}_indexes\.csv: file not found"):
        read_release(release_copy)


def test_missing_column(release_copy):
    rows = read_meta(release_copy)
    columns = [c for c in rows[0] if c != "streaks"]
    write_meta(release_copy, rows, columns)
    with pytest.raises(DataError, match=r"meta\.csv: missing column 'streaks'"):
        read_release(release_copy)


def test_unknown_raw_label_names_column_row_and_value(release_copy):
    rows = read_meta(release_copy)
    rows[5]["streaks"] = "wavy"
    write_meta(release_copy, rows)
    with pytest.raises(DataError, match=r"meta\.csv: line 7 \(row 5\): unknown value 'wavy' in column 'streaks'"):
        read_release(release_copy)


def test_index_out_of_range(release_copy):
    write_indexes(release_copy, {"valid": [0, 40]})
    (release_copy / "meta" / "train_indexes.csv").write_text("indexes\n")
    with pytest.raises(DataError, match=r"valid_indexes\.csv: line 3: index 40 out of range"):
        read_release(release_copy)


def test_index_in_two_splits(release_copy):
    train = read_release(release_copy).splits["train"]
    valid = read_release(release_copy).splits["valid"]
    write_indexes(release_copy, {"valid": valid + [train[0]]})
    with pytest.raises(DataError, match=rf"valid_indexes\.csv: index {train[0]} is also in .*train_indexes\.csv"):
        read_release(release_copy)


def test_non_integer_index(release_copy):
    (release_copy / "meta" / "test_indexes.csv").write_text("indexes\n3\nseven\n")
    with pytest.raises(DataError, match=r"test_indexes\.csv: line 3: index 'seven' is not an integer"):
        read_release(release_copy)


def test_missing_image(release_copy):
    row = read_meta(release_copy)[3]
    (release_copy / "images" / row["derm"]).unlink()
    with pytest.raises(DataError, match=rf"line 5 \(row 3\): column 'derm': image not found: .*{Path(row['derm']).name}"):
        read_release(release_copy)


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_unreadable_image_is_found_when_images_are_verified(release_copy, damage):
    row = read_meta(release_copy)[2]
    path = release_copy / "images" / row["clinic"]
    data = path.read_bytes()
    path.write_bytes(b"\x00" * 100 if damage == "corrupt" else data[: len(data) // 2])
    read_release(release_copy)   # a cheap read only checks that files exist
    with pytest.raises(DataError, match=rf"{path.name}: (not a readable image|truncated).*\(row 2\)"):
        read_release(release_copy, verify_images=True)


def test_image_names_resolve_case_insensitively(release_copy):
    rows = read_meta(release_copy)
    rows[0]["clinic"] = rows[0]["clinic"].swapcase()
    write_meta(release_copy, rows)
    case = read_release(release_copy).cases[0]
    assert case.clinical.is_file()
    assert case.clinical.name.lower() == Path(rows[0]["clinic"]).name.lower()


def test_index_file_with_a_pandas_index_column_is_read(release_copy):
    # A file re-saved by pandas without index=False gains a leading unnamed column.
    rows = read_release(release_copy).splits["valid"]
    (release_copy / "meta" / "valid_indexes.csv").write_text(
        ",indexes\n" + "".join(f"{i},{r}\n" for i, r in enumerate(rows)))
    assert read_release(release_copy).splits["valid"] == rows


def test_scan_collects_every_problem(release_copy):
    rows = read_meta(release_copy)
    rows[1]["pigment_network"] = "reticular"
    rows[2]["blue_whitish_veil"] = "maybe"
    write_meta(release_copy, rows)
    result = scan_release(release_copy)
    assert len(result.problems) == 2
    assert "'reticular'" in result.problems[0] and "'maybe'" in result.problems[1]
    with pytest.raises(DataError, match="and 1 more problem"):
        read_release(release_copy)


def test_training_dataset_gives_the_runtime_preprocessing(synthetic_release):
    # Without augmentation the torch dataset must feed exactly what the runtimes will.
    from edgederm.data.torch_dataset import PairDataset
    from edgederm.preprocess import PreprocessConfig, load_input
    case = read_release(synthetic_release).split("valid")[0]
    cfg = PreprocessConfig(size=96)
    clinical, derm, labels = PairDataset([case], cfg)[0]
    np.testing.assert_array_equal(clinical.numpy(), load_input(case.clinical, cfg))
    np.testing.assert_array_equal(derm.numpy(), load_input(case.derm, cfg))
    assert labels.tolist() == list(case.labels)


def test_line_numbers_follow_multi_line_notes_and_comma_rows_keep_their_index(release_copy):
    rows = read_meta(release_copy)
    rows[0]["notes"] = "first line\nsecond line, with a comma"      # a quoted field over two lines
    rows[2]["streaks"] = "wavy"
    write_meta(release_copy, rows)
    with pytest.raises(DataError, match=r"meta\.csv: line 5 \(row 2\): unknown value 'wavy'"):
        read_release(release_copy)
    # A line of bare commas is a row for pandas (and so for the index files): it is reported, not skipped.
    rows[2]["streaks"] = "absent"
    write_meta(release_copy, rows)
    text = (release_copy / "meta" / "meta.csv").read_text().splitlines(keepends=True)
    (release_copy / "meta" / "meta.csv").write_text("".join(text[:3] + ["," * 18 + "\n", "\n"] + text[3:]))
    result = scan_release(release_copy)
    assert any("line 4 (row 1): empty row" in p for p in result.problems)
    assert result.release.cases[2].case_num == rows[1]["case_num"]       # the comma row took index 1
