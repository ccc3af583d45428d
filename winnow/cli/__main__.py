"""`python -m winnow.cli …`: the same as the `winnow` command (used where PATH may lack it)."""

from winnow.cli import main

main()
