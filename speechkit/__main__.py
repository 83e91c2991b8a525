"""``python -m speechkit`` = the ``speechkit`` command (where no console script is installed)."""

from .cli import main

if __name__ == "__main__":
    main()
