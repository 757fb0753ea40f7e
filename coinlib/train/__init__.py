"""Stage 2, training: batching, the COIN loss, LoRA, the HF Trainer subclass and its command line
(``python -m coinlib.train params/X.yaml``)."""
