"""Model backends, one module per runtime; each heavy runtime is imported only when used."""
