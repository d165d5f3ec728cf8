"""shotstream: models."""
