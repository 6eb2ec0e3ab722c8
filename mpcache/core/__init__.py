"""The model core's bottom floor: the Backend interface, approximations, KV cache, policy interface,
attention over selected rows, errors, and the one place for optional heavy imports."""
