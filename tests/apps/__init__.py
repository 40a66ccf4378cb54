"""Helper programs and servers the cross-process tests start."""
