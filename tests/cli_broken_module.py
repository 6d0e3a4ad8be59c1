"""A module that fails while it is imported (tests/test_cli.py: a broken user module is one line)."""

raise RuntimeError("this module is broken\nsecond line of the message")
