"""`python -m canary_kit`: the `canary` command line."""

from canary_kit.cli.app import main

if __name__ == "__main__":
    main()
