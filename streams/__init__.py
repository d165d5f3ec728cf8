"""shotstream: streams."""
