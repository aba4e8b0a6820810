"""Training entry points (`accelerate launch training/train.py` or `python -m training.train`)."""
