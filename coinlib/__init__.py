"""coinlib: contrastive instruction tuning (COIN), reproduced and extended. See README.md."""

__version__ = "0.1.0"
