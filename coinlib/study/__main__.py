"""``python -m coinlib.study SPEC [...]``: see :mod:`coinlib.study.cli`."""

from coinlib.study.cli import main

raise SystemExit(main())
