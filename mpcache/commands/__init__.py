"""Subcommands of the ``mpcache`` CLI, one module each (``add_parser`` + ``run``)."""
