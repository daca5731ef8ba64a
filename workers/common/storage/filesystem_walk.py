"""Walking a filesystem blob store's tree: every entry below a key, depth first, in name
order, symlinks and dot-names (temporary files) never entered; and the reason of an
`OSError` as storage errors give it, without the file name."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from workers.common.storage.base import StorageError


def describe_os_error(error: OSError) -> str:
    """`No space left on device (ENOSPC)`: the reason without the file name."""
    if error.errno is None:
        return str(error)
    text = os.strerror(error.errno)
    name = errno.errorcode.get(error.errno)
    return f"{text} ({name})" if name else text


def walk_entries(
    root: Path, start_key: str, descend: Callable[[str], bool] = lambda key: True
) -> Iterator[tuple[Path, os.DirEntry[str]]]:
    """Every entry below `<root>/<start_key>`, depth first, symlinks not followed.

    A subdirectory is entered only when `descend(its key + "/")` is true.
    """
    stack = [root / start_key if start_key else root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda entry: entry.name, reverse=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as error:
            raise StorageError(
                "iter_objects", key_of(root, directory), describe_os_error(error)
            ) from error
        for entry in entries:
            yield directory, entry
            try:
                if (
                    not entry.name.startswith(".")
                    and entry.is_dir(follow_symlinks=False)
                    and descend(key_of(root, Path(entry.path)) + "/")
                ):
                    stack.append(Path(entry.path))
            except OSError:
                continue


def walk_files(root: Path, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
    """`(key, stat)` of every regular file below the deepest directory `prefix` names."""
    start_key = prefix.rpartition("/")[0]

    def descend(directory_key: str) -> bool:
        return directory_key.startswith(prefix) or prefix.startswith(directory_key)

    for directory, entry in walk_entries(root, start_key, descend):
        if entry.name.startswith("."):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            status = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError as error:
            key = key_of(root, directory)
            raise StorageError("iter_objects", key, describe_os_error(error)) from error
        yield key_of(root, Path(entry.path)), status


def key_of(root: Path, path: Path) -> str:
    """The key of `path` below `root` ("" for the root itself)."""
    return path.relative_to(root).as_posix() if path != root else ""
