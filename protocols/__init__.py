"""The MPC layer of MPCache, built on CrypTen."""
