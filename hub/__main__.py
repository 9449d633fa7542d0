"""``python -m hub`` is the ``hub`` command."""

from hub.cli import main

if __name__ == "__main__":  # not when a helper process started with spawn imports this module
    main()
