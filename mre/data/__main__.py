"""`python -m mre.data dataset=<name> direction=<wli|tli> with_anchor=<bool>`: the data view."""

from __future__ import annotations

import sys

from hydra.errors import ConfigCompositionException, OverrideParseException
from rich.console import Console

from mre.config import compose
from mre.data.hub_data import source_note
from mre.data.view import context_for_view, show
from mre.errors import UserError

USAGE = (
    "usage: python -m mre.data dataset=<name> [dataset.path=<folder>] [direction=wli|tli] "
    "[with_anchor=true|false] [model=<name>]\n"
    "Shows the data set's size, label and entity-type counts and a few prompts as the model sees them, "
    "with any Hydra override of train.py."
)


def main(argv: list[str]) -> int:
    """Show the data (and, for a hub set, where it came from and its licence); a problem with the data or
    the settings is one line naming it (exit code 2)."""
    console = Console()
    if {"-h", "--help"} & set(argv):
        console.print(USAGE, markup=False, highlight=False, soft_wrap=True)
        return 0
    try:
        cfg = compose(argv)
        ctx = context_for_view(cfg, console)
        note = source_note(cfg.dataset)
        if note:
            console.print(note, markup=False, highlight=False, soft_wrap=True)
        show(ctx, console)
    except ConfigCompositionException as e:  # a bad override: the cause lists the valid choices
        cause = str(e.__cause__ or "").split("\n")[0]
        console.print(f"error: {e}: {cause}", style="red", markup=False, highlight=False, soft_wrap=True)
        return 2
    except OverrideParseException as e:  # not `key=value`: Hydra's message points at the character
        console.print(f"error: {e}\n{USAGE}", style="red", markup=False, highlight=False, soft_wrap=True)
        return 2
    except (UserError, FileNotFoundError, ValueError) as e:
        console.print(f"error: {e}", style="red", markup=False, highlight=False, soft_wrap=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
