"""The MPC layer, in floors that import only downwards (and the model core in ``mpcache.core``):

- ``ring``: shares, the dealer's correlated randomness, exact truncation, keyed randomness;
- ``net``: the parties' processes, links (TLS), launch, the TTP dealer's service;
- ``numerics``: comparisons, lookup tables and the nonlinear functions on shares;
- ``mpc``: the MPC backend and the session that runs the model under 2PC.

Importing the package makes ``import crypten`` work on torch 2.x (``ring.compat``), so every module
below imports CrypTen at its top.
"""

from protocols.ring.compat import install_standin

install_standin()
