"""lmstack: an open language-model pipeline (data preparation, pretraining, adaptation)."""

import os

# litdata may ask PyPI for a newer release; training must work offline.
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")

__version__ = "0.1.0"
