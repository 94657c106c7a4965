"""Command-line entry points: `taskstream dev`, `processor`, `executor`, `api`, `bench`."""
