"""Conversion to and from other formats (Hugging Face `transformers`)."""
