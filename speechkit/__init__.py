"""speechkit: speech and translation models built from swappable bricks."""

__version__ = "0.1.0"
