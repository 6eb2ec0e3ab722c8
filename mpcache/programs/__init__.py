"""Everything a user runs, above every other floor: the ``mpcache`` CLI, its subcommands, and the
programs each party runs (private benches, the chat)."""
