"""Deterministic demo data: daily drops of a fictional product's help center."""
