"""docs/runbooks: one page per alert, each alert's `runbook_url` points at its page, and every
page's commands and queries are real (docs/runbooks/README.md)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Final

import pytest
import yaml

from tests.deploy.promql import (
    EXTERNAL_METRICS,
    exported_names_used,
    load_rules,
    metric_names,
    recorded_names,
)
from tests.support.deploy_tools import DeployTools
from tests.unit.test_docs_links import (
    anchor,
    check_command,
    headings,
    relative_links,
    shown_commands,
)

ROOT: Final = Path(__file__).resolve().parents[2]
DOCS: Final = ROOT / "docs"
RUNBOOKS: Final = DOCS / "runbooks"
INDEX: Final = RUNBOOKS / "README.md"
RUNBOOK_URL: Final = "https://github.com/workers-fleet/workers/blob/main/docs/runbooks/{alert}.md"
SECTIONS: Final = ["What it means", "How to confirm", "What to do"]

_PROMQL_BLOCK = re.compile(r"^```promql\n(.*?)^```", re.MULTILINE | re.DOTALL)
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|count|sum)$")


def alerts() -> dict[str, dict[str, str]]:
    """Alert name → its annotations."""
    return {rule["alert"]: rule["annotations"] for rule in load_rules() if "alert" in rule}


def runbook_pages() -> list[Path]:
    return sorted(page for page in RUNBOOKS.glob("*.md") if page != INDEX)


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _sections(page: Path) -> dict[str, str]:
    """The text under each `## ` heading of `page`."""
    parts = re.split(r"^## (.+)$", page.read_text(), flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_every_alert_links_the_runbook_named_after_it() -> None:
    assert alerts(), "no alerts"
    for alert, notes in alerts().items():
        assert notes.get("runbook_url") == RUNBOOK_URL.format(alert=alert), alert
        assert (RUNBOOKS / f"{alert}.md").is_file(), f"no docs/runbooks/{alert}.md"


def test_every_runbook_belongs_to_an_alert() -> None:
    pages = {page.stem for page in runbook_pages()}
    assert pages, "no runbooks"
    assert pages - alerts().keys() == set(), "runbooks of alerts that do not exist"


@pytest.mark.parametrize("page", runbook_pages(), ids=_page_id)
def test_a_runbook_has_the_alert_as_title_and_the_three_sections_in_order(page: Path) -> None:
    text = page.read_text()
    assert text.startswith(f"# {page.stem}\n"), "the title is the alert's name"
    assert [h for h in headings(page) if h != page.stem] == SECTIONS
    sections = _sections(page)
    assert "```" in sections["How to confirm"], "no command or query to confirm with"
    for title in SECTIONS:
        assert len(sections[title].split()) >= 20, f"{title} says next to nothing"


def test_the_runbooks_are_indexed() -> None:
    index_links = {target.split("#", 1)[0] for target in relative_links(INDEX)}
    assert {page.name for page in runbook_pages()} <= index_links
    docs_index = {target.split("#", 1)[0] for target in relative_links(DOCS / "README.md")}
    assert "runbooks/README.md" in docs_index


@pytest.mark.parametrize("page", [INDEX, *runbook_pages()], ids=_page_id)
def test_every_relative_link_of_a_runbook_resolves(page: Path) -> None:
    for target in relative_links(page):
        path_text, _, fragment = target.partition("#")
        path = (page.parent / path_text).resolve() if path_text else page
        assert path.is_file(), f"{_page_id(page)}: broken link {target}"
        if fragment:
            assert fragment in {anchor(heading) for heading in headings(path)}, target


@pytest.mark.parametrize("page", [INDEX, *runbook_pages()], ids=_page_id)
def test_every_workers_command_shown_exists_with_its_options(page: Path) -> None:
    commands = shown_commands(page)
    for words in commands:
        check_command(words)


def test_the_runbooks_confirm_with_the_operator_commands() -> None:
    shown = {words for page in [INDEX, *runbook_pages()] for words in shown_commands(page)}
    for prefix in ("stack status", "groups describe", "dlq list", "dlq show", "dlq replay"):
        assert any(words.startswith(prefix) for words in shown), prefix


def _queries() -> list[tuple[str, str]]:
    return [
        (_page_id(page), line.strip())
        for page in runbook_pages()
        for block in _PROMQL_BLOCK.findall(page.read_text())
        for line in block.splitlines()
        if line.strip()
    ]


def _documented_metric(name: str) -> bool:
    base = _HISTOGRAM_SUFFIX.sub("", name)
    return any(f"`{base}" in page.read_text() for page in DOCS.glob("*.md"))


def test_runbook_queries_read_only_series_that_exist() -> None:
    known = recorded_names() | exported_names_used() | EXTERNAL_METRICS.keys()
    queries = _queries()
    assert queries
    for page, query in queries:
        for name in metric_names(query):
            assert name in known or _documented_metric(name), f"{page}: unknown {name}"


def test_promtool_parses_every_runbook_query(deploy_tools: DeployTools, tmp_path: Path) -> None:
    rules = [
        {"record": f"runbook:query_{index}:check", "expr": query}
        for index, (_, query) in enumerate(_queries())
    ]
    path = tmp_path / "runbooks.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "runbooks", "rules": rules}]}))
    result = subprocess.run(
        [str(deploy_tools.promtool), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
