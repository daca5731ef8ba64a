"""Sentry-style slugs for organizations and projects (docs/reference.md, Projects).

`slugify` is Django's (ASCII): NFKD-normalise, drop what is not ASCII, lowercase, keep word
characters, spaces and dashes, collapse runs of spaces/dashes into one dash, strip dashes and
underscores at the ends. A project's slug is that, cut to 50 characters and stripped of `-`;
a reserved word or an empty result becomes 12 random hex characters; an all-digit slug or one
already taken gets a random suffix `-xx`: 2 tries of 2 characters, 5 of 3, 20 of 5, then 1 of
12 (the slug is shortened so that the suffix fits in 50).
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Callable, Iterator

MAX_SLUG_LENGTH = 50
SUFFIX_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
# (tries, suffix length), in order.
SUFFIX_ATTEMPTS: tuple[tuple[int, int], ...] = ((2, 2), (5, 3), (20, 5), (1, 12))

RESERVED_PROJECT_SLUGS = frozenset(
    {
        "api-keys",
        "audit-log",
        "auth",
        "members",
        "projects",
        "rate-limits",
        "repos",
        "settings",
        "teams",
        "billing",
        "payments",
        "legal",
        "subscription",
        "support",
        "integrations",
        "developer-settings",
        "usage",
        "$all",
    }
)

_NOT_SLUG_CHARACTERS = re.compile(r"[^\w\s-]")
_SEPARATORS = re.compile(r"[-\s]+")
_VALID_SLUG = re.compile(r"[a-z0-9_-]+")

RandomText = Callable[[str, int], str]


def _random_text(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


class SlugUnavailableError(RuntimeError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no free slug for {name!r} after every suffix attempt")


def slugify(value: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")
    cleaned = _NOT_SLUG_CHARACTERS.sub("", ascii_text.lower())
    return _SEPARATORS.sub("-", cleaned).strip("-_")


def is_valid_slug(value: str) -> bool:
    """A slug as stored: slug characters only, not all digits, at most 50 characters."""
    return (
        0 < len(value) <= MAX_SLUG_LENGTH
        and _VALID_SLUG.fullmatch(value) is not None
        and not value.isdecimal()
        and value == value.strip("-")
    )


def base_slug(
    name: str,
    reserved: frozenset[str] = RESERVED_PROJECT_SLUGS,
    random_text: RandomText = _random_text,
) -> str:
    slug = slugify(name)[:MAX_SLUG_LENGTH].strip("-")
    if not slug or slug in reserved:
        return random_text("0123456789abcdef", 12)
    return slug


def candidate_slugs(
    name: str,
    reserved: frozenset[str] = RESERVED_PROJECT_SLUGS,
    random_text: RandomText = _random_text,
) -> Iterator[str]:
    """The slugs to try for `name`, in order (28 at most)."""
    base = base_slug(name, reserved, random_text)
    if not base.isdecimal():
        yield base
    for tries, length in SUFFIX_ATTEMPTS:
        stem = base[: MAX_SLUG_LENGTH - length - 1].strip("-")
        for _ in range(tries):
            yield f"{stem}-{random_text(SUFFIX_ALPHABET, length)}"


def choose_slug(
    name: str,
    is_taken: Callable[[str], bool],
    reserved: frozenset[str] = RESERVED_PROJECT_SLUGS,
    random_text: RandomText = _random_text,
) -> str:
    for candidate in candidate_slugs(name, reserved, random_text):
        if not is_taken(candidate):
            return candidate
    raise SlugUnavailableError(name)
