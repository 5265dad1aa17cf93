"""The exit codes of every command, in one place so `secrets …` and the rest cannot drift apart."""

from __future__ import annotations

EXIT_OK = 0
# The input was refused: an invalid config, a secret check that found problems, a value not encrypted.
EXIT_INVALID = 1
# The command could not do its work (no config file, no state store, a daemon that does not answer).
EXIT_ERROR = 2
# `db current`: the state store's schema is behind this release (or not created yet): run `db upgrade`.
EXIT_SCHEMA_BEHIND = 3
# Ctrl-C, as a shell reports a SIGINT death (128 + 2).
EXIT_INTERRUPTED = 130
