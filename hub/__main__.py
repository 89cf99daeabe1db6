"""`python -m hub` is the `gridwatch` command (used where the script is not on PATH)."""

from hub.cli import main

main()
