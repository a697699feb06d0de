"""Entry point for ``python -m detgan``."""

from detgan.cli import main

raise SystemExit(main())
