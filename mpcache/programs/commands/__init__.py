"""The ``mpcache`` subcommands: argument parsing and launching; the work is done by the floors below."""
