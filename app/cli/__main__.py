"""`python -m app.cli` is `swarmctl`."""

from app.cli.main import main

main()
