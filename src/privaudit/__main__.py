"""``python -m privaudit`` works like the ``privaudit`` script."""

from privaudit.cli import console_main

if __name__ == "__main__":
    console_main()
