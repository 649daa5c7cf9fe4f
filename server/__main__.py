"""`python -m server`: the `hearth` command line (see `server/cli.py`); no command means `serve`."""

from __future__ import annotations

from server.cli import main, parse_args

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    main()
