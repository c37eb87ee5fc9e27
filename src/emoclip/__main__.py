"""``python -m emoclip``: the command line."""

from emoclip.cli.main import main

if __name__ == "__main__":
    main()
