"""`python -m winnow.pipeline.cli …`: the same as the `winnow` command (used where PATH may lack it)."""

from winnow.pipeline.cli import main

main()
