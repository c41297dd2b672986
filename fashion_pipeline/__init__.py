"""Fashion Price Informant: a Dagster pipeline for C2C fashion cataloguing and pricing."""

__version__ = "0.1.0"
