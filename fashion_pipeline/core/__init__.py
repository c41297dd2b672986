"""Pure pipeline logic. Nothing in this package imports Dagster."""
