"""One dynamic partition per video; its key is the video's relative path, made safe.

Dagster forbids control characters and "..." in keys, and the UI's partition selection
reads commas, brackets and `*` as syntax. Those characters (and `%` itself) are
percent-encoded, reversibly, so any file name still works end to end while ordinary
names (unicode and spaces included) stay readable.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from dagster import DynamicPartitionsDefinition

videos_partitions = DynamicPartitionsDefinition(name="videos")

_UNSAFE = re.compile(r"[%,\[\]*\x00-\x1f\x7f]|(?<=\.)\.|^\s|\s$")


def partition_key(relpath: str) -> str:
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), relpath)


def relpath_of(key: str) -> str:
    return unquote(key)
