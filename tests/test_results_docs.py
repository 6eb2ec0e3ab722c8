"""docs/results/*.md are generated from docs/records/ and say nothing about a developer's machine.

The documents are rendered afresh (``mpcache.eval.results_docs``, nothing is measured) and must
equal the committed ones, so a table cannot drift from its records; `make results` rewrites them.
Every document (README.md and docs/**/*.md) and every file name under docs/ must be free of
commit hashes, machine paths, load figures and issue references.
"""

from __future__ import annotations

import re

import pytest

from mpcache.eval.results_docs import ROOT, write_all

DOCS = ROOT / "docs"
DOCUMENTS = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
FORBIDDEN = {
    # 7-40 hex digits with at least one letter and one digit, not part of a longer word or number
    "commit hash": re.compile(r"(?<![\w.\-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}(?![\w\-])"),
    "machine path": re.compile(r"/work/|/home/|/tmp/"),
    "load figure": re.compile(r"load average|\bload (?:of |at |~|≈|\d)", re.IGNORECASE),
    "issue reference": re.compile(r"\bissues? *#?\d+|(?<![\w&])#\d+", re.IGNORECASE),
}


def test_results_documents_equal_a_fresh_rendering(tmp_path):
    written = {p.name: p.read_text() for p in write_all(DOCS / "records", tmp_path)}
    committed = {p.name: p.read_text() for p in (DOCS / "results").glob("*.md")}
    assert sorted(committed) == sorted(written), "docs/results/ and the generator's documents differ"
    stale = [name for name, text in written.items() if committed[name] != text]
    assert not stale, f"regenerate with `make results`: {stale} differ from docs/records"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documents_name_no_commit_machine_load_or_issue(path):
    text = path.read_text()
    found = {what: sorted(set(rx.findall(text)))[:5] for what, rx in FORBIDDEN.items() if rx.search(text)}
    assert not found, f"{path.relative_to(ROOT)}: {found}"


def test_file_names_under_docs_carry_no_commit_hash():
    bad = [p.name for p in DOCS.rglob("*") if FORBIDDEN["commit hash"].search(p.name)]
    assert not bad


def test_figures_are_referenced_by_a_results_document():
    text = "".join(p.read_text() for p in (DOCS / "results").glob("*.md"))
    missing = [p.name for p in DOCS.glob("*.png") if f"../{p.name}" not in text]
    assert not missing, f"figures no results document shows: {missing}"
