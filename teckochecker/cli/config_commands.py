"""`teckochecker config …`: commands about the config file itself (today: its JSON Schema)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from teckochecker.cli.exitcodes import EXIT_OK
from teckochecker.config.schema import COMMITTED_SCHEMA, config_schema, drop_in_schema, render
from teckochecker.plugins import load_builtin_plugins, load_plugins

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


def register_config_commands(subparsers: SubParsers) -> None:
    group = subparsers.add_parser("config", help="tools for the config file (its JSON Schema)")
    commands = group.add_subparsers(title="config commands", dest="config_command", required=True, metavar="COMMAND")
    schema = commands.add_parser(
        "schema",
        help="print the config's JSON Schema (for editors)",
        description="Print a JSON Schema (2020-12) of the config file, made from the validator's own models and "
        "the options of every loaded plugin (entry points and $TECKOCHECKER_PLUGINS). Point your editor at it, "
        "e.g. with a '# yaml-language-server: $schema=PATH' first line. validate-config stays the full check.",
    )
    schema.add_argument(
        "--builtin-only",
        action="store_true",
        help=f"only the plugins shipped with TeckoChecker (what {COMMITTED_SCHEMA} holds)",
    )
    schema.add_argument("--drop-in", action="store_true", help="the schema of a drop-in job file (include:)")
    schema.set_defaults(handler=cmd_config_schema)


def cmd_config_schema(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    registry = load_builtin_plugins(environ) if args.builtin_only else load_plugins(environ)
    schema = drop_in_schema(registry) if args.drop_in else config_schema(registry)
    sys.stdout.write(render(schema))
    return EXIT_OK
