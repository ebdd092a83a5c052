"""The synthetic release: exact layout, determinism, atomic writing, and
criteria that show in the dermoscopy view more than in the clinical view."""
import hashlib

import cv2
import numpy as np
import pytest

from edgederm import labels as L
from edgederm.data.release import META_COLUMNS, read_release
from edgederm.data.render import render_case
from edgederm.data.synth import write_synthetic_release
from edgederm.errors import DataError
from tests.helpers import read_meta


def test_layout_matches_the_real_release(synthetic_release):
    header = (synthetic_release / "meta" / "meta.csv").read_text().splitlines()[0]
    assert tuple(header.split(",")) == META_COLUMNS
    for split in ("train", "valid", "test"):
        assert (synthetic_release / "meta" / f"{split}_indexes.csv").read_text().startswith("indexes\n")
    rows = read_meta(synthetic_release)
    names = [r[c] for r in rows for c in ("clinic", "derm")]
    assert all(n.count("/") == 1 for n in names)                      # images/<folder>/<file>
    assert any(n.endswith(".JPG") for n in names) and any(n.endswith(".jpg") for n in names)
    img = cv2.imread(str(synthetic_release / "images" / names[0]))
    assert img.shape == (512, 768, 3)
    assert (synthetic_release / "images" / names[0]).read_bytes()[:2] == b"\xff\xd8"
    for r in rows:   # the score column agrees with the criteria, as in the real file
        grouped = {t.key: t.classes[t.encode(r[t.column])] for t in L.TASKS}
        assert int(r["seven_point_score"]) == L.seven_point_score(grouped)


def test_split_proportions_follow_the_real_release(tmp_path):
    root = write_synthetic_release(tmp_path / "r", cases=200, seed=1, workers=2)
    release = read_release(root)
    sizes = {s: len(release.split(s)) for s in ("train", "valid", "test")}
    assert sum(sizes.values()) == 200
    assert abs(sizes["train"] / 200 - 413 / 1011) < 0.05
    assert abs(sizes["valid"] / 200 - 203 / 1011) < 0.05


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path, synthetic_release):
    again = write_synthetic_release(tmp_path / "again", cases=40, seed=3, workers=2)
    assert _digest(again) == _digest(synthetic_release)
    other = write_synthetic_release(tmp_path / "other", cases=40, seed=4, workers=1)
    assert _digest(other) != _digest(synthetic_release)


def test_existing_release_is_not_overwritten_without_force(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists"):
        write_synthetic_release(out, cases=10, seed=0)
    assert (out / "keep.txt").read_text() == "mine"
    write_synthetic_release(out, cases=10, seed=0, force=True)
    assert not (out / "keep.txt").exists() and (out / "meta" / "meta.csv").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["r"]   # no temporary folders left


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    import edgederm.data.synth as synth

    def fail(job):
        raise KeyboardInterrupt
    monkeypatch.setattr(synth, "_render_and_write", fail)
    with pytest.raises(KeyboardInterrupt):
        synth.write_synthetic_release(tmp_path / "r", cases=10, seed=0)
    assert list(tmp_path.iterdir()) == []


BASE = {"DIAG": "NEV", "PN": "ABS", "STR": "ABS", "PIG": "ABS", "RS": "ABS", "DaG": "ABS", "BWV": "ABS", "VS": "ABS"}
BASE_RAW = {"DIAG": "clark nevus", "PN": "absent", "STR": "absent", "PIG": "absent", "RS": "absent",
            "DaG": "absent", "BWV": "absent", "VS": "absent"}
PRESENT = [("PN", "ATP", "atypical"), ("PN", "TYP", "typical"), ("STR", "IR", "irregular"),
           ("STR", "REG", "regular"), ("PIG", "IR", "diffuse irregular"), ("PIG", "REG", "diffuse regular"),
           ("RS", "PRS", "combinations"), ("DaG", "IR", "irregular"), ("DaG", "REG", "regular"),
           ("BWV", "PRS", "present"), ("VS", "IR", "dotted"), ("VS", "REG", "arborizing")]


@pytest.mark.parametrize("task, cls, raw", PRESENT)
def test_each_criterion_shows_more_in_dermoscopy_than_in_clinical(task, cls, raw):
    # Same generator state, criterion absent vs present: how much does each view change?
    absent = render_case(BASE, BASE_RAW, np.random.default_rng(11))
    present = render_case(dict(BASE, **{task: cls}), dict(BASE_RAW, **{task: raw}), np.random.default_rng(11))
    clinical_diff, derm_diff = (np.abs(p.astype(float) - a.astype(float)) for p, a in zip(present, absent))
    assert derm_diff.max() >= 40                              # plainly visible in dermoscopy
    assert 0 < clinical_diff.mean() < derm_diff.mean() / 4    # present but much weaker in the clinical photo


def test_metadata_follows_the_documented_p_value_given_diagnosis(synthetic_release):
    from edgederm.data.synth import METADATA_GIVEN_DIAGNOSIS, _meta_row
    for case in read_release(synthetic_release).cases.values():   # every written value is one the schema takes
        assert len(L.encode_metadata(case.metadata)) == L.METADATA_SIZE
    rng = np.random.default_rng(0)
    shares = {}
    for diagnosis in ("BCC", "MEL"):
        classes = {t.key: t.classes[0] for t in L.TASKS} | {"DIAG": diagnosis}
        locations = [_meta_row(i, classes, _raw(classes), "a.jpg", "b.jpg", rng)["location"] for i in range(3000)]
        shares[diagnosis] = locations.count("head neck") / len(locations)
        expected = METADATA_GIVEN_DIAGNOSIS["location"][diagnosis][L.METADATA_FIELDS["location"].index("head neck")]
        assert abs(shares[diagnosis] - expected) < 0.03, (diagnosis, shares[diagnosis], expected)
    assert shares["BCC"] > 3 * shares["MEL"]


def _raw(classes):
    return {t.key: next(r for r, c in t.raw_strings.items() if c == classes[t.key]) for t in L.TASKS}
