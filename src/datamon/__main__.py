"""``python -m datamon``: the same entry point as the ``datamon`` console script."""

from datamon.cli import main

if __name__ == "__main__":
    main()
