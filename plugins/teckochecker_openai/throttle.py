"""The OpenAI account's back-off is the generic one every batch source shares: teckochecker.account_throttle."""

from __future__ import annotations

from teckochecker.account_throttle import MAX_IN_FLIGHT, AccountThrottle

__all__ = ["MAX_IN_FLIGHT", "AccountThrottle"]
