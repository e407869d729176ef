"""``python -m bench`` is ``python -m bench.load``."""

from bench.load import main

raise SystemExit(main())
