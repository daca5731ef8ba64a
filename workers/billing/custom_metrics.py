"""Is a generic-metrics bucket a custom metric? (docs/reference.md, First-custom-metric flag.)

A bucket is custom when the name `mapping_meta` gives its metric id is an MRI
(`<entity>:<namespace>/<name>@<unit>`) in the `custom` namespace. Stdlib only: the Quix
Streams peer of the benchmark (its own virtualenv, no psycopg or redis) imports it too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

CUSTOM_NAMESPACE: Final = "custom"
MRI_PATTERN: Final = re.compile(
    r"^(?P<entity>[^:]+):(?P<namespace>[^/]+)/(?P<name>[^@]+)@(?P<unit>.+)$"
)


class Mri(NamedTuple):
    entity: str
    namespace: str
    name: str
    unit: str


def parse_mri(text: str) -> Mri | None:
    match = MRI_PATTERN.match(text)
    if match is None:
        return None
    return Mri(match["entity"], match["namespace"], match["name"], match["unit"])


class CustomMetricDetector:
    """Is a bucket a custom metric? The MRI verdict is cached per name (bounded).

    `is_custom` is the one implementation of the metric-name resolution (the first string
    any inner map of `mapping_meta` gives `str(metric_id)`) and of the custom check; it runs
    once per bucket on the consumer thread, so the resolution is written inline, not called.
    """

    __slots__ = ("_id_texts", "_max_names", "_verdicts")

    def __init__(self, max_names: int = 10_000) -> None:
        self._max_names = max_names
        self._verdicts: dict[str, bool] = {}
        self._id_texts: dict[int, str] = {}

    def is_custom(self, mapping_meta: Mapping[str, Any], metric_id: int) -> bool:
        key = self._id_texts.get(metric_id)
        if key is None:
            if len(self._id_texts) >= self._max_names:
                self._id_texts.clear()
            key = self._id_texts[metric_id] = str(metric_id)
        for inner in mapping_meta.values():
            if type(inner) is dict:
                name = inner.get(key)
                if type(name) is str:
                    verdict = self._verdicts.get(name)
                    if verdict is None:
                        verdict = self.__judge(name)
                    return verdict
        return False

    def __judge(self, name: str) -> bool:
        if len(self._verdicts) >= self._max_names:
            self._verdicts.clear()
        mri = parse_mri(name)
        verdict = self._verdicts[name] = mri is not None and mri.namespace == CUSTOM_NAMESPACE
        return verdict
