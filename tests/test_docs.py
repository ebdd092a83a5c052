"""README.md and docs/*.md link only to what exists: every relative Markdown link (and <img src>)
names an existing file, and every #anchor, in-page or `page.md#anchor`, names a heading of the
target page under GitHub's rule (lowercase; punctuation but hyphens, underscores and spaces
removed; spaces to hyphens; a repeated heading gets -1, -2, ...)."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMG_SRC = re.compile(r"<img\b[^>]*\bsrc=\"([^\"]+)\"", re.I)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def _prose(text: str) -> str:
    """The text without fenced code blocks (a `# comment` in a bash block is no heading)."""
    return FENCE.sub("", text)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lowercase, punctuation but - and _ removed."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)      # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for match in HEADING.finditer(_prose(page.read_text())):
        slug = github_anchor(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(page: Path) -> list[str]:
    prose = _prose(page.read_text())
    return [*LINK.findall(CODE_SPAN.sub("", prose)), *IMG_SRC.findall(prose)]


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):      # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(root)}: ({target})"
        if not path.exists():
            broken.append(f"{where}: no file {path_part}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{where}: no heading #{anchor} in {path.relative_to(root)}")
        elif anchor and path.suffix != ".md":
            broken.append(f"{where}: #{anchor} on a file that has no headings")
    return broken


def test_the_anchor_rule():
    assert github_anchor("The model (`edgederm/models/`)") == "the-model-edgedermmodels"
    assert github_anchor("Quantization-aware fine-tuning (QAT)") == "quantization-aware-fine-tuning-qat"
    assert github_anchor("Pretrained encoders, offline (`edgederm/models/pretrained.py`)") == \
        "pretrained-encoders-offline-edgedermmodelspretrainedpy"
    assert github_anchor("The dataset: derm7pt `release_v0`") == "the-dataset-derm7pt-release_v0"


def test_the_pages_exist():
    assert (REPO / "docs" / "architecture.md").is_file()
    assert len(PAGES) > 2


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


def test_a_broken_link_or_anchor_is_caught(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## A section (`x.py`)\n")
    page.write_text("# Page\n\n[ok](other.md#a-section-xpy) [in page](#page) [gone](missing.md) "
                    "[bad anchor](other.md#no-such-section) [bad here](#nowhere)\n"
                    "```bash\n# not a heading\n[in code](ignored.md)\n```\n")
    found = broken_links(page, root=tmp_path)
    assert [line.split(": ", 2)[1] for line in found] == ["(missing.md)", "(other.md#no-such-section)", "(#nowhere)"]


def test_the_readme_maps_every_page_architecture_first():
    docs_map = (REPO / "README.md").read_text().split("\n## Documentation\n", 1)[1].split("\n## ", 1)[0]
    mapped = [t for t in LINK.findall(docs_map) if t.startswith("docs/") and t.endswith(".md")]
    assert mapped[0] == "docs/architecture.md", mapped
    assert {f"docs/{p.name}" for p in PAGES[1:]} <= set(mapped)
