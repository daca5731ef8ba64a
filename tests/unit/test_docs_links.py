"""README.md and docs/ stay small, linked and true to the CLI; code cites docs/, not outside
documents."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Final

import click
import pytest

from workers.cli import make_cli
from workers.fleet import FLEET_REGISTRY_LOADER, build_registry

ROOT: Final = Path(__file__).resolve().parents[2]
README: Final = ROOT / "README.md"
DOCS: Final = ROOT / "docs"
MAX_README_BYTES: Final = 8192

#: Applied migrations are checksummed (`workers migrate` refuses a changed one), so their
#: comments stay as they were applied.
CHECKSUMMED_MIGRATIONS: Final = frozenset(
    {
        "workers/common/migrations/0001_registry_and_blobs.sql",
        "workers/common/migrations/0003_analytics_events.sql",
    }
)
CITATION_SCAN_DIRS: Final = ("workers", "tests", "bench", "docs")
OUTSIDE_CITATION: Final = "SPEC" + " §"  # split so this file does not cite it itself

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_COMMAND_START = re.compile(r"(?:^|&&|;|\s--\s|\bexec\s+)\s*(?:\S*/)?workers\s+(.*)$")
_CITATION = re.compile(r"docs/([\w-]+\.md)(, .{0,120})?", re.DOTALL)
_COMMENT_BREAK = re.compile(r"\s*\n\s*(?:#+|--)?\s*")


def documentation_pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces → dashes."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _without_code_blocks(text: str) -> str:
    return _FENCE.sub("", text)


def headings(page: Path) -> list[str]:
    return [
        line.lstrip("#").strip()
        for line in _without_code_blocks(page.read_text()).splitlines()
        if re.match(r"^#{1,6} ", line)
    ]


def relative_links(page: Path) -> list[str]:
    text = _INLINE_CODE.sub("", _without_code_blocks(page.read_text()))
    return [
        target for target in _LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", target)
    ]


# ---- size and links ----------------------------------------------------------------------


def test_readme_is_at_most_8_kib() -> None:
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move detail into docs/"


def test_every_docs_page_is_linked_from_the_readme_or_the_docs_index() -> None:
    linked = {
        (page.parent / target.split("#", 1)[0]).resolve()
        for page in (README, DOCS / "README.md")
        for target in relative_links(page)
    }
    for page in DOCS.glob("*.md"):
        if page.name != "README.md":
            assert page.resolve() in linked, f"{_page_id(page)} is linked from nowhere"


@pytest.mark.parametrize("page", documentation_pages(), ids=_page_id)
def test_every_relative_link_resolves(page: Path) -> None:
    for target in relative_links(page):
        path_text, _, fragment = target.partition("#")
        path = (page.parent / path_text).resolve() if path_text else page
        assert path.exists(), f"{_page_id(page)}: broken link {target}"
        if fragment:
            assert path.suffix == ".md", f"{_page_id(page)}: anchor into a non-page {target}"
            anchors = {anchor(heading) for heading in headings(path)}
            assert fragment in anchors, f"{_page_id(page)}: no heading for {target}"


# ---- the `workers` commands shown --------------------------------------------------------


def _code_texts(page: Path) -> Iterator[str]:
    """Lines of code blocks (comments cut) and inline code spans of `page`."""
    text = page.read_text()
    for block in _FENCE.findall(text):
        for line in block.splitlines():
            yield line.split(" #", 1)[0]
    for span in _INLINE_CODE.findall(_without_code_blocks(text)):
        yield span.replace("\\|", "|")


def shown_commands(page: Path) -> list[str]:
    """Every `workers ...` command line `page` shows, as the words after `workers`."""
    commands = []
    for text in _code_texts(page):
        for segment in re.split(r"&&|;", text):
            match = _COMMAND_START.search(segment)
            if match and match.group(1).strip():
                commands.append(match.group(1).strip())
    return commands


@cache
def _cli() -> click.Group:
    return make_cli(FLEET_REGISTRY_LOADER)


def _option_names(command: click.Command) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def _worker_option_names() -> dict[str, set[str]]:
    return {
        definition.name: {
            name
            for param in definition.click_options
            for name in (*param.opts, *getattr(param, "secondary_opts", []))
        }
        for definition in build_registry()
    }


def check_command(words: str) -> None:
    """Raise AssertionError unless `workers <words>` names real (sub)commands and options."""
    tokens = shlex.split(words.replace("[", " ").replace("]", " "))
    command: click.Command = _cli()
    path = ["workers"]
    while isinstance(command, click.Group) and tokens:
        name = tokens.pop(0)
        alternatives = name.split("/")
        while len(tokens) >= 2 and tokens[0] == "|":  # `stack up | status | down`
            alternatives.append(tokens[1])
            del tokens[:2]
        for alternative in alternatives:
            assert command.get_command(click.Context(command), alternative) is not None, (
                f"`{' '.join(path)} {alternative}` is not a command"
            )
        subcommand = command.get_command(click.Context(command), alternatives[0])
        assert subcommand is not None
        command, path = subcommand, [*path, alternatives[0]]
    options = _option_names(command)
    if path == ["workers", "run"] and tokens and not tokens[0].startswith("-"):
        options |= _worker_option_names().get(tokens[0], set())
    for token in tokens:
        for option in token.split("/"):
            if option.startswith("--"):
                name = option.split("=", 1)[0]
                assert name in options, f"`{' '.join(path)}` has no option {name}"


@pytest.mark.parametrize("page", documentation_pages(), ids=_page_id)
def test_every_workers_command_shown_exists_with_its_options(page: Path) -> None:
    for words in shown_commands(page):
        check_command(words)


def test_the_command_check_finds_commands_and_refuses_unknown_ones() -> None:
    commands = shown_commands(DOCS / "operations.md")
    assert "stack up | status | down" in commands
    assert "migrate" in commands
    assert any(command.startswith("run billing --metrics-port") for command in commands)
    check_command("run billing --outcomes-topic X --aggregate-window-ms 5")
    check_command("stack up/status/down")
    with pytest.raises(AssertionError, match="is not a command"):
        check_command("stack restart")
    with pytest.raises(AssertionError, match="has no option --nope"):
        check_command("run billing --nope 1")
    with pytest.raises(AssertionError, match="has no option --outcomes-topic"):
        check_command("run blob-ingest --outcomes-topic X")


# ---- citations ---------------------------------------------------------------------------


def _scanned_files() -> Iterator[Path]:
    for directory in CITATION_SCAN_DIRS:
        for path in sorted((ROOT / directory).rglob("*")):
            if path.is_file() and path.suffix in {".py", ".md", ".sql"}:
                yield path


def test_nothing_cites_the_outside_document() -> None:
    citing = {
        str(path.relative_to(ROOT))
        for path in _scanned_files()
        if OUTSIDE_CITATION in path.read_text()
    }
    allowed = CHECKSUMMED_MIGRATIONS
    assert citing <= allowed, f"cite docs/ instead: {sorted(citing - allowed)}"


def test_every_docs_citation_in_code_names_a_page_and_one_of_its_headings() -> None:
    """`docs/reference.md, Billing outcomes` in a comment: the page has that heading."""
    for path in _scanned_files():
        if path.suffix == ".md":
            continue
        for page_name, comma_and_after in _CITATION.findall(path.read_text()):
            page = DOCS / page_name
            assert page.exists(), f"{path.relative_to(ROOT)} cites missing docs/{page_name}"
            after = _COMMENT_BREAK.sub(" ", comma_and_after[2:])
            if after[:1].isupper():
                assert any(after.startswith(heading) for heading in headings(page)), (
                    f"{path.relative_to(ROOT)}: docs/{page_name} has no heading starting "
                    f"{after[:40]!r}"
                )
