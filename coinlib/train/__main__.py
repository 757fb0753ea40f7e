"""``python -m coinlib.train params/X.yaml`` (also under torchrun / accelerate launch)."""

from coinlib.train.trainer import main

raise SystemExit(main())
