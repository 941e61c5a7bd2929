"""``proloc``: the one command line. ``main`` dispatches; one module per group of subcommands."""
