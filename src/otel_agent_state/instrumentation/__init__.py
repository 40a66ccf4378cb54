"""One instrumentor module per client library (opentelemetry-python-contrib shape)."""
