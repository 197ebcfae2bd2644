"""Evaluation: multiple-choice tasks by ranked classification (OLMES request format)."""
