"""A template's ``discover:`` section: which listed batches make jobs of that template, how they are grouped,
and when a group is complete. Validated here; acted on by teckochecker/discovery.py.

OpenAI's metadata limits (docs/vendors.md, OpenAI batches) bound what can be matched: 16 pairs, keys of at most 64
characters, values of at most 512. A rule that could never match a real batch is refused at load.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from teckochecker.config.durations import Duration
from teckochecker.config.models import CONTROL_CHARACTERS, Model

METADATA_PAIRS = 16
METADATA_KEY_CHARS = 64
METADATA_VALUE_CHARS = 512
# A discovered job's name is PREFIX + the group's value; the prefix alone must be a valid start of a name.
_NAME_PREFIX = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,63})?")
DEFAULT_GROUP_DEADLINE = 6 * 3600.0
DEFAULT_MAX_PAGES = 5
DEFAULT_DISCOVERY_INTERVAL = 60.0

MetadataKey = Annotated[str, Field(min_length=1, max_length=METADATA_KEY_CHARS)]


class DiscoverSpec(Model):
    """``templates.NAME.discover``."""

    # Metadata pairs a batch must carry, all of them, to belong to this template.
    match: Annotated[dict[MetadataKey, Annotated[str, Field(max_length=METADATA_VALUE_CHARS)]], Field(min_length=1)]
    # The metadata key whose value groups batches into one job (the job is named PREFIX + value).
    group_by: MetadataKey
    # A metadata key announcing how many batches the group has: complete when that many were listed.
    count_key: MetadataKey | None = None
    # Without an announced count: complete when no new batch of the group was listed for this long.
    quiet: Annotated[Duration, Field(gt=0)] | None = None
    # A group still incomplete this long after its first batch was listed ends its job failed.
    deadline: Annotated[Duration, Field(gt=0)] = DEFAULT_GROUP_DEADLINE
    name_prefix: str = ""
    # How often a discovery sweep is asked for (the listing itself is shared and reused for list_max_age).
    interval: Annotated[Duration, Field(ge=5.0, le=3600.0)] = DEFAULT_DISCOVERY_INTERVAL
    # Pages (100 batches each) one sweep may read looking for new batches.
    max_pages: int = Field(default=DEFAULT_MAX_PAGES, ge=1, le=100)

    @field_validator("match")
    @classmethod
    def _fits_metadata(cls, pairs: dict[str, str]) -> dict[str, str]:
        if len(pairs) > METADATA_PAIRS - 1:
            # The group key needs a pair of its own.
            raise ValueError(f"at most {METADATA_PAIRS - 1} pairs: a batch carries at most {METADATA_PAIRS}")
        if any(CONTROL_CHARACTERS.search(k + v) for k, v in pairs.items()):
            raise ValueError("metadata may not contain control characters (NUL, newline, ...)")
        return pairs

    @field_validator("name_prefix")
    @classmethod
    def _prefix_shape(cls, prefix: str) -> str:
        if not _NAME_PREFIX.fullmatch(prefix):
            raise ValueError(
                "a job name's start: letters, digits, '-', '_' and '.', starting with a letter or digit (max 64)"
            )
        return prefix

    @model_validator(mode="after")
    def _complete_somehow(self) -> DiscoverSpec:
        if self.count_key is None and self.quiet is None:
            raise ValueError("say how a group is known to be complete: count_key (a metadata key), quiet, or both")
        used = {self.group_by, *([self.count_key] if self.count_key else [])}
        if len(used) < (2 if self.count_key else 1) or used & set(self.match):
            raise ValueError("match, group_by and count_key must name different metadata keys")
        return self
