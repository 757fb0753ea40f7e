"""coinlib: contrastive instruction tuning (COIN), reproduced and extended. See README.md."""

import logging

__version__ = "0.1.0"

# bitsandbytes warns on import, on CPUs with AVX512-BF16, that an optional hub-downloaded kernel is missing;
# the built-in CPU path is used instead. Silence only that notice (it varies by CPU and clutters notebooks).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
