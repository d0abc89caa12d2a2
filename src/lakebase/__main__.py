"""``python -m lakebase`` and the ``lakebase`` command: the CLI, or which extra it lacks."""

import sys

from ._extras import MissingExtra


def main() -> None:
    try:
        from .cli import main as cli

        cli()
    except MissingExtra as exc:  # the cli extra, or e.g. the emulator's for `lakebase emulator start`
        sys.stderr.write(f"lakebase: {exc}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
