"""The MPC layer's bottom floor: shares on the 64-bit ring, the dealer's correlated randomness, exact
truncation, keyed randomness (AES-CTR) and the plain table arithmetic of comparisons."""
