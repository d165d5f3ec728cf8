"""shotstream: state."""
