"""Stage 5, multi-run studies: spec and expansion, committed stages, the driver with its go/no-go gate, the
report and the command line (``python -m coinlib.study SPEC``, :mod:`coinlib.study.cli`)."""
