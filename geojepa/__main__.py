"""Allow ``python -m geojepa``."""

from geojepa.cli import main

raise SystemExit(main())
