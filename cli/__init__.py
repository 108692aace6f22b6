"""The `alexnet` command: parses options, calls the library, prints results."""
