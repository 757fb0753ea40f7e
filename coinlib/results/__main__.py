"""``python -m coinlib.results params/X.yaml``: every table of RESULTS.md for a run."""

from coinlib.results.report import main

raise SystemExit(main())
