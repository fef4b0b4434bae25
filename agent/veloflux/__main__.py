"""``python -m veloflux`` is the same as ``veloflux-agent``."""

from veloflux.cli import main

# Guarded: a training process is started with "spawn", which imports the parent's
# main module again (as ``__mp_main__``); it must not run the CLI a second time.
if __name__ == "__main__":
    main()
