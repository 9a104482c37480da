"""App layer: the command line, the demo, and `info`."""
