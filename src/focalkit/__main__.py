"""``python -m focalkit`` runs the command line."""

from focalkit.cli import main

raise SystemExit(main())
