"""Pretrain a language model from the checkout: `python train.py [overrides]`, the same as
`python -m lmstack.train` (see lmstack/train/__main__.py); `-m [sweep overrides]` runs a sweep."""

from lmstack.train.__main__ import main

if __name__ == "__main__":
    main()
