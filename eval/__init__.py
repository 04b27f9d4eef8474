"""Retrieval metrics, the papers' tables, comparisons and plots."""
