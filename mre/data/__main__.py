"""`python -m mre.data dataset=<name> direction=<wli|tli> with_anchor=<bool>`: the data view."""

from __future__ import annotations

import sys

from rich.console import Console

from mre.config import compose
from mre.data.view import context_for_view, show


def main(argv: list[str]) -> None:
    cfg = compose(argv)
    console = Console()
    show(context_for_view(cfg, console), console)


if __name__ == "__main__":
    main(sys.argv[1:])
