from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.common.projects.slugs import (
    MAX_SLUG_LENGTH,
    RESERVED_PROJECT_SLUGS,
    SlugUnavailableError,
    base_slug,
    candidate_slugs,
    choose_slug,
    is_valid_slug,
    slugify,
)


class ScriptedRandom:
    """Returns 'a' * length for suffixes and a fixed hex string for random slugs."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, alphabet: str, length: int) -> str:
        self.calls.append((alphabet, length))
        return ("f" if alphabet == "0123456789abcdef" else "a") * length


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("My Project", "my-project"),
        ("Café Ünïcode  déjà-vu", "cafe-unicode-deja-vu"),
        ("  --Hello__World!!--  ", "hello__world"),
        ("trailing dashes---", "trailing-dashes"),
        ("a/b\\c.d", "abcd"),
        ("日本語", ""),
    ],
)
def test_slugify_is_djangos(name: str, slug: str) -> None:
    assert slugify(name) == slug


def test_sixty_character_name_is_cut_to_fifty_without_a_trailing_dash() -> None:
    name = "a" * 49 + " " + "b" * 10
    assert len(name) == 60
    assert base_slug(name) == "a" * 49


@pytest.mark.parametrize("word", sorted(RESERVED_PROJECT_SLUGS - {"$all"}))
def test_reserved_words_become_random_hex(word: str) -> None:
    assert base_slug(word.upper(), random_text=ScriptedRandom()) == "f" * 12


def test_empty_result_becomes_random_hex() -> None:
    assert base_slug("日本語", random_text=ScriptedRandom()) == "f" * 12


def test_all_digits_always_gets_a_suffix() -> None:
    assert next(candidate_slugs("12345", random_text=ScriptedRandom())) == "12345-aa"


def test_suffix_policy_is_2_of_2_then_5_of_3_then_20_of_5_then_1_of_12() -> None:
    random_text = ScriptedRandom()
    candidates = list(candidate_slugs("x" * 50, random_text=random_text))
    assert candidates[0] == "x" * 50
    lengths = [len(candidate.rsplit("-", 1)[1]) for candidate in candidates[1:]]
    assert lengths == [2] * 2 + [3] * 5 + [5] * 20 + [12]
    assert all(len(candidate) <= MAX_SLUG_LENGTH for candidate in candidates)


def test_choose_slug_takes_the_first_free_candidate_and_fails_when_none_is() -> None:
    taken = {"backend", "backend-aa"}
    calls = iter([*["aa"] * 2, "bbb"])

    def scripted(alphabet: str, length: int) -> str:
        return next(calls)

    assert choose_slug("Backend", taken.__contains__, random_text=scripted) == "backend-bbb"
    with pytest.raises(SlugUnavailableError, match="no free slug for 'Backend'"):
        choose_slug("Backend", lambda slug: True)


@given(st.text(max_size=120))
def test_every_candidate_is_a_valid_slug(name: str) -> None:
    candidates: Iterator[str] = candidate_slugs(name)
    for candidate in candidates:
        assert is_valid_slug(candidate), candidate
        assert re.fullmatch(r"[a-z0-9_-]+", candidate)
