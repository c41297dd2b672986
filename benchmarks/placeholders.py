"""The command line a benchmark report shows: arguments that name this machine's files become
placeholders, so a committed report names nothing outside the repository."""

from __future__ import annotations


def shown_command(args: list[str], placeholders: dict[str, str]) -> str:
    """``args`` with the value after each flag in ``placeholders`` replaced by its placeholder (an
    argument with a space is quoted; a placeholder is shown as it is)."""
    shown = [placeholders[args[i - 1]] if i and args[i - 1] in placeholders else f'"{a}"' if " " in a else a
             for i, a in enumerate(args)]
    return " ".join(shown)
