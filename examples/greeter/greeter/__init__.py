"""greeter: an example of batchd handlers living in their own package (see handlers.py)."""
