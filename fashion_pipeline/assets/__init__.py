"""Thin asset functions, one module per stage. definitions.py loads every module here."""
