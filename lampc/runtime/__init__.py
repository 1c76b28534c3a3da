"""The compiled model and its statistics."""
