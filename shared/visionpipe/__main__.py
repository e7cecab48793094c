"""``python -m visionpipe``: the CLI without its console script (the lent GPU machine runs the tree uninstalled)."""

from visionpipe.cli import main

main()
