"""``python -m coinlib.evaluate params/X.yaml [--merge]`` (also under torchrun, one shard per process)."""

from coinlib.evaluate.runner import main

raise SystemExit(main())
