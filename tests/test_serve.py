"""The clinic app without a browser: the case store, access codes, and every
route through FastAPI's TestClient on a real bundle and real photo files.
tests/test_serve_browser.py drives the page in Chromium."""
import csv
import io
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from edgederm.cli import app as cli
from edgederm.data.release import read_release
from edgederm.runtime.diagnose import RESULT_COLUMNS
from edgederm.serve.access import ACCESS_FILE, COOKIE, FAILURES_BEFORE_WAIT
from edgederm.serve.app import create_app
from edgederm.serve.server import build_clinic
from edgederm.serve.store import SCHEMA_VERSION, BundleIdentity, CaseStore, Photo, StoreError

BUNDLE = BundleIdentity("tiny-onnx-fp32", "fp32", "0" * 64)
LOCAL = "http://127.0.0.1:8000"          # the Host a browser on this machine sends


@pytest.fixture(scope="module")
def photos(synthetic_release) -> list[tuple[Path, Path]]:
    return [(c.clinical, c.derm) for c in read_release(synthetic_release).split("test")[:3]]


@pytest.fixture
def client(bundles, tmp_path):
    clinic, _ = build_clinic(bundles["onnx-fp32"], tmp_path / "clinic")
    with TestClient(create_app(clinic), base_url=LOCAL) as c:
        c.clinic = clinic
        yield c
    clinic.store.close()


def _files(clinical: Path | bytes, derm: Path | bytes, names=("c.jpg", "d.jpg")) -> dict:
    read = (lambda x: x if isinstance(x, bytes) else x.read_bytes())
    return {"clinical": (names[0], read(clinical), "image/jpeg"), "derm": (names[1], read(derm), "image/jpeg")}


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


# --- the store ------------------------------------------------------------------

def test_store_keeps_cases_and_photos_across_restarts(tmp_path):
    store = CaseStore(tmp_path)
    a, b = Photo("a.jpg", b"\xff\xd8one", ".jpg"), Photo("b.png", b"\x89PNGtwo", ".png")
    first = store.add("V1", a, b, BUNDLE, {"x": 1})
    second = store.add("", a, b, BUNDLE, {"x": 2})          # same photos: stored once, by content
    store.close()
    again = CaseStore(tmp_path)
    cases = again.on_day(first.day)
    assert [c.id for c in cases] == [second.id, first.id]     # newest first
    assert cases[1].visit_id == "V1" and cases[1].prediction == {"x": 1} and cases[1].bundle == BUNDLE
    assert len(list((tmp_path / "photos").rglob("*.*"))) == 2
    path, suffix = again.find_photo(first.id, "derm")
    assert path.read_bytes() == b"\x89PNGtwo" and suffix == ".png" and path.stem == first.derm_sha256
    assert again.find_photo(999, "derm") is None
    assert sqlite3.connect(tmp_path / "cases.sqlite3").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_case_is_committed_only_after_its_photos(tmp_path, monkeypatch):
    store = CaseStore(tmp_path)
    photo = Photo("a.jpg", b"\xff\xd8data", ".jpg")
    real = store._keep_photo

    def disk_full(p):
        if p.name == "d.jpg":
            raise OSError(28, "No space left on device")
        return real(p)
    monkeypatch.setattr(store, "_keep_photo", disk_full)
    with pytest.raises(StoreError, match="cannot store the photos .*No space left"):
        store.add("V1", photo, Photo("d.jpg", b"\xff\xd8other", ".jpg"), BUNDLE, {})
    monkeypatch.undo()
    assert store.on_day(store.add("V2", photo, photo, BUNDLE, {}).day)[0].visit_id == "V2"
    assert len(store.on_day(store.days()[0])) == 1           # the failed case left no row


def test_a_newer_schema_is_refused_in_one_line(tmp_path, bundles):
    CaseStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "cases.sqlite3") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        CaseStore(tmp_path)
    result = CliRunner().invoke(cli, ["serve", "--bundle", str(bundles["onnx-fp32"]), "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "is newer than this EdgeDerm's" in result.output and len(result.output.strip().splitlines()) == 1


# --- the API ----------------------------------------------------------------------

def test_a_case_gives_the_same_answer_as_diagnose_and_lands_in_the_csv(client, photos, bundles, tmp_path):
    from edgederm.runtime import load_bundle
    from edgederm.runtime.diagnose import diagnose_pairs
    (clinical, derm), (clinical2, derm2) = photos[:2]
    first = client.post("/api/cases", files=_files(clinical, derm), data={"visit_id": "V-17"})
    assert first.status_code == 201, first.text
    case = first.json()
    assert case["visit_id"] == "V-17" and case["bundle"]["name"] == bundles["onnx-fp32"].name
    assert case["bundle"]["precision"] == "fp32" and len(case["bundle"]["sha256"]) == 64
    assert case["prediction"]["disclaimer"].startswith("EdgeDerm is decision support")
    assert client.post("/api/cases", files=_files(clinical2, derm2)).status_code == 201
    listed = client.get("/api/cases").json()
    assert listed["day"] == case["day"] and [c["visit_id"] for c in listed["cases"]] == ["", "V-17"]
    assert client.get(f"/api/cases/{case['id']}").json() == case
    photo = client.get(f"/api/cases/{case['id']}/photo/derm")
    assert photo.status_code == 200 and photo.content == derm.read_bytes() and photo.headers["content-type"] == "image/jpeg"

    exported = client.get("/api/cases.csv")
    assert exported.status_code == 200 and "attachment" in exported.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert list(rows[0]) == RESULT_COLUMNS and [r["id"] for r in rows] == ["V-17", f"case{case['id'] + 1}"]
    # the same photos through `edgederm diagnose --pairs`: the same columns, the same answers
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"id,clinical,derm\nV-17,{clinical},{derm}\nx,{clinical2},{derm2}\n")
    diagnose_pairs(load_bundle(bundles["onnx-fp32"]), pairs, tmp_path / "out.csv")
    with open(tmp_path / "out.csv", newline="") as f:
        expected = list(csv.DictReader(f))
    answer = [c for c in RESULT_COLUMNS if c not in ("id", "clinical", "derm")]
    assert [{k: r[k] for k in answer} for r in rows] == [{k: r[k] for k in answer} for r in expected]


@pytest.mark.parametrize("make, status, message", [
    (lambda c: _png(np.full((200, 200), 128, np.uint8)), 422, "grayscale image"),
    (lambda c: c[: len(c) // 2], 422, "truncated"),
    (lambda c: b"not an image at all" * 50, 422, "clinical photo 'c.jpg'"),
    (lambda c: b"", 422, "empty file"),
    (lambda c: _png(np.zeros((2, 2, 3), np.uint8)), 422, "smaller than"),
    # a PNG header claiming 20000 x 20000: refused from the header, nothing decoded
    (lambda c: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (20000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00",
     422, "megapixels"),
])
def test_bad_photos_are_a_clear_4xx(client, photos, make, status, message):
    clinical, derm = photos[0]
    response = client.post("/api/cases", files=_files(make(clinical.read_bytes()), derm))
    assert response.status_code == status, response.text
    assert message in response.json()["detail"] and "Traceback" not in response.text
    assert client.get("/api/cases").json()["cases"] == []              # nothing stored


def test_16_bit_and_rgba_photos_are_taken(client, photos):
    clinical, derm = photos[0]
    rgb = cv2.imread(str(clinical))
    rgba = cv2.cvtColor(rgb, cv2.COLOR_BGR2BGRA)
    sixteen = cv2.imread(str(derm)).astype(np.uint16) * 257
    response = client.post("/api/cases", files=_files(_png(rgba), _png(sixteen), ("c.png", "d.png")))
    assert response.status_code == 201, response.text
    assert client.get(f"/api/cases/{response.json()['id']}/photo/clinical").headers["content-type"] == "image/png"


def test_requests_that_are_not_a_case(client, photos, bundles, tmp_path):
    clinical, derm = photos[0]
    assert client.post("/api/cases", files={"derm": ("d.jpg", derm.read_bytes(), "image/jpeg")}).status_code == 422
    assert client.post("/api/cases", data={"visit_id": "x"}).status_code == 415
    long_visit = client.post("/api/cases", files=_files(clinical, derm), data={"visit_id": "v" * 65})
    assert long_visit.status_code == 422 and "at most 64" in long_visit.json()["detail"]
    for day in ("../../etc", "2026-01-01\n", "２０２６-01-01", "2026-13-01"):
        assert client.get("/api/cases", params={"day": day}).status_code == 400, day
        assert client.get("/api/cases.csv", params={"day": day}).status_code == 400, day
    assert client.get("/api/cases", params={"day": "2000-01-01"}).json() == {"day": "2000-01-01", "cases": []}
    assert client.post("/api/cases", files=_files(clinical, derm)).status_code == 201
    assert client.get("/api/cases/1/photo/passwd").status_code == 404           # only clinical / derm
    assert client.get("/static/%2e%2e/cases.sqlite3").status_code == 404
    assert client.get("/api/cases/12345").status_code == 404
    broken = client.post("/api/cases", content=b"--x\r\nContent-Disposition: form-data; name=\"clinical\"\r\n",
                         headers={"content-type": "multipart/form-data; boundary=x"})
    assert broken.status_code in (400, 422) and "Traceback" not in broken.text
    small, _ = build_clinic(bundles["onnx-fp32"], tmp_path / "small", max_upload_mb=0.01)
    with TestClient(create_app(small), base_url=LOCAL) as capped:
        response = capped.post("/api/cases", files=_files(clinical, derm))
        assert response.status_code == 413 and "0.01 MB limit" in response.json()["detail"]


def test_every_response_is_locked_down_and_errors_hide_tracebacks(client, photos, monkeypatch):
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js"' in page.text
    for response in (page, client.get("/api/info"), client.get("/static/app.js"), client.get("/api/cases/999")):
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
        assert response.headers["x-content-type-options"] == "nosniff"

    def broken(*args):
        raise RuntimeError("a bug, with a secret path /root/x")
    monkeypatch.setattr(client.clinic, "diagnose", broken)
    clinical, derm = photos[0]
    response = client.post("/api/cases", files=_files(clinical, derm))
    assert response.status_code == 500 and response.json() == {"detail": "internal error: see the server's log"}


def test_the_page_fetches_nothing_from_outside():
    from edgederm.serve.app import STATIC
    for name in ("index.html", "app.js", "app.css"):
        text = (STATIC / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name


# --- access beyond this machine ----------------------------------------------------

def test_lan_access_needs_the_code_printed_once(bundles, tmp_path, photos):
    data = tmp_path / "clinic"
    clinic, code = build_clinic(bundles["onnx-fp32"], data, host="0.0.0.0")
    assert code and len(code.replace("-", "")) == 12
    saved = (data / ACCESS_FILE).read_text()
    assert code not in saved and code.replace("-", "") not in saved          # stored hashed only
    assert (data / ACCESS_FILE).stat().st_mode & 0o077 == 0
    clinic.store.close()
    clinic, again = build_clinic(bundles["onnx-fp32"], data, host="0.0.0.0")
    assert again is None                                                     # printed once
    with TestClient(create_app(clinic), base_url="http://192.168.1.20:8000") as c:
        assert c.get("/api/info").status_code == 401
        page = c.get("/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"
        assert c.get("/login").status_code == 200 and c.get("/static/app.css").status_code == 200
        assert c.post("/login", data={"code": "0000-0000-0000"}).status_code == 401
        for forged in ("1.2.forged", "1.2.\xe4", "x"):    # a non-ASCII cookie once made compare_digest raise
            response = c.get("/api/info", headers={"cookie": f"{COOKIE}={forged}".encode("latin-1")})
            assert response.status_code == 401 and "content-security-policy" in response.headers
        ok = c.post("/login", data={"code": code}, follow_redirects=False)
        assert ok.status_code == 303 and COOKIE in ok.cookies
        assert "httponly" in ok.headers["set-cookie"].lower() and "samesite=strict" in ok.headers["set-cookie"].lower()
        assert c.get("/api/info").status_code == 200
        clinical, derm = photos[0]
        assert c.post("/api/cases", files=_files(clinical, derm)).status_code == 201
        c.cookies.clear()
        for _ in range(FAILURES_BEFORE_WAIT - 1):       # one wrong code was tried above
            assert c.post("/login", data={"code": "1"}).status_code == 401
        assert c.post("/login", data={"code": code}).status_code == 429     # even the right one, for a while
    clinic.store.close()


def test_serve_help_and_bad_starts():
    runner = CliRunner()
    help_text = runner.invoke(cli, ["serve", "--help"]).output
    assert "127.0.0.1" in help_text and "access code" in help_text
    missing = runner.invoke(cli, ["serve", "--bundle", "no/such/bundle"])
    assert missing.exit_code == 1 and "no/such/bundle" in missing.output


def test_the_app_runs_without_torch(bundles, photos, tmp_path):
    """Device-side: serve a bundle and diagnose a case with torch, timm, nncf, scikit-learn and matplotlib
    made unimportable."""
    clinical, derm = photos[0]
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm", "nncf", "sklearn", "matplotlib"):
            raise ImportError("not on a device: " + name)
sys.meta_path.insert(0, Block())
from fastapi.testclient import TestClient
from edgederm.serve.app import create_app
from edgederm.serve.server import build_clinic
clinic, _ = build_clinic({str(bundles['onnx-fp32'])!r}, {str(tmp_path / 'clinic')!r})
c = TestClient(create_app(clinic), base_url="http://127.0.0.1:8000")
files = {{"clinical": ("c.jpg", open({str(clinical)!r}, "rb").read()), "derm": ("d.jpg", open({str(derm)!r}, "rb").read())}}
r = c.post("/api/cases", files=files)
assert r.status_code == 201, r.text
print(r.json()["prediction"]["seven_point"]["score"])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().isdigit()


def test_other_sites_and_other_host_names_are_refused(client, photos):
    """A page on another site may post a form to 127.0.0.1, and a DNS-rebinding page may read from it under
    its own host name: the app answers neither."""
    clinical, derm = photos[0]
    foreign = client.post("/api/cases", files=_files(clinical, derm), headers={"origin": "https://evil.example"})
    assert foreign.status_code == 403
    assert client.post("/api/cases", files=_files(clinical, derm),
                       headers={"sec-fetch-site": "cross-site"}).status_code == 403
    assert client.post("/api/cases", files=_files(clinical, derm), headers={"origin": LOCAL}).status_code == 201
    assert client.get("/api/cases", headers={"host": "rebound.example:8000"}).status_code == 421
    assert client.get("/api/cases", headers={"host": "localhost:8000"}).status_code == 200
    assert len(client.get("/api/cases").json()["cases"]) == 1


def test_only_formats_sized_from_the_header_are_taken(client, photos):
    """A few bytes of BMP can claim 50000 x 50000 pixels; the app takes JPEG and PNG, whose size is read
    from the header before any decoding."""
    clinical, derm = photos[0]
    bmp = b"BM" + b"\x00" * 16 + (50000).to_bytes(4, "little") * 2 + b"\x01\x00\x18\x00" + b"\x00" * 30
    response = client.post("/api/cases", files=_files(bmp, derm))
    assert response.status_code == 422 and "not a JPEG or PNG photo" in response.json()["detail"]


def test_a_store_that_cannot_write_is_503_not_the_photos_fault(client, photos, monkeypatch):
    def full(*args, **kwargs):
        raise StoreError("cases.sqlite3: cannot record the case (database or disk is full)")
    monkeypatch.setattr(client.clinic.store, "add", full)
    clinical, derm = photos[0]
    response = client.post("/api/cases", files=_files(clinical, derm))
    assert response.status_code == 503 and "nothing was stored" in response.json()["detail"]


def test_the_csv_never_hands_a_spreadsheet_a_formula(client, photos):
    clinical, derm = photos[0]
    files = _files(clinical, derm, names=("=HYPERLINK(1).jpg", "d.jpg"))
    assert client.post("/api/cases", files=files, data={"visit_id": "=cmd|' /C calc'!A0"}).status_code == 201
    row = next(csv.DictReader(io.StringIO(client.get("/api/cases.csv").text)))
    assert row["id"].startswith("'=") and row["clinical"].startswith("'=")
