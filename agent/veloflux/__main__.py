"""``python -m veloflux`` is the same as ``veloflux-agent``."""

from veloflux.cli import main

main()
