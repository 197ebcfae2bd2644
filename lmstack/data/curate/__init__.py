"""Data curation: read raw documents, filter, deduplicate, and account for every document removed."""
