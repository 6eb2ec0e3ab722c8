"""The top of the MPC layer: the MPC backend (the Backend interface on CrypTen shares) and the
session that runs a model under 2PC."""
