"""`workers files` ids and text tables (docs/blob-lifecycle.md, Files commands)."""

from __future__ import annotations

import pytest

from workers.files.queries import FileId
from workers.files.render import table


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("42", FileId(task_id=42)), ("file:7", FileId(file_id=7)), (" 9 ", FileId(task_id=9))],
)
def test_file_ids_parse_and_print_as_the_list_shows_them(text: str, parsed: FileId) -> None:
    assert FileId.parse(text) == parsed
    assert FileId.parse(str(parsed)) == parsed


def test_a_file_with_a_task_is_known_by_the_task() -> None:
    assert str(FileId(task_id=3, file_id=8)) == "3"


@pytest.mark.parametrize("text", ["", "x", "file:", "file:0", "-1", "task:3", str(2**63)])
def test_malformed_file_ids_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="N or file:N"):
        FileId.parse(text)


def test_tables_pad_columns_show_missing_values_as_dashes_and_strip_line_ends() -> None:
    lines = table(("ID", "NAME", "IDS"), [(1, "a-long-name", ("x", "y")), (22, None, ())])
    assert lines == [
        "ID  NAME         IDS",
        "1   a-long-name  x,y",
        "22  -            -",
    ]
