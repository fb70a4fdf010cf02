"""`python -m mre.data dataset=<name> direction=<wli|tli> with_anchor=<bool>`: the data view."""

from __future__ import annotations

import sys

from rich.console import Console

from mre.config import compose
from mre.data.view import context_for_view, show
from mre.errors import UserError


def main(argv: list[str]) -> int:
    """Show the data; a problem with the data or the settings is one line naming it (exit code 2)."""
    console = Console()
    try:
        show(context_for_view(compose(argv), console), console)
    except (UserError, FileNotFoundError, ValueError) as e:
        console.print(f"error: {e}", style="red", markup=False, highlight=False, soft_wrap=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
