"""`python -m server`: the `hearth` command line (see `server/cli/main.py`); no command means `serve`."""

from __future__ import annotations

from server.cli.main import main, parse_args

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    main()
