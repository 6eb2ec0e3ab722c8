"""Keyed streams per dealer item: what lets the TTP dealer work ahead (``protocols.net.ahead``).

A sequential dealer stream ties every draw to the order of all earlier draws: a dealer that made
material for a request the parties then did not make (a misprediction) would have consumed
keystream the parties never skip, and every later share would be off. Here each dealer item (one
request: a triple, a table, a mask) draws from its own AES-256-CTR stream under the key a party
shares with the dealer, with a nonce naming the item:

- a predicted item: (round, slot) of the schedule party 0 sent; the dealer makes it once, ahead;
- a synchronous item: a counter of synchronous items, in a namespace no prediction uses.

Both parties and the dealer name every item the same way (the decisions are deterministic functions
of public shapes), so material made for a mispredicted item is simply never used: no keystream is
ever used for two different items, and nothing has to be rewound.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocols.ring import csprng

SYNC = 1 << 63  # the namespace of synchronous items (high nonce word)
ROUND_LIMIT = 1 << 31  # predicted rounds and slots fit the high nonce word: round << 32 | slot


def spec_nonce(round_: int, slot: int) -> int:
    if not (0 <= round_ < ROUND_LIMIT and 0 <= slot < 1 << 32):
        raise ValueError(f"item ({round_}, {slot}) outside the nonce space")
    return round_ << 32 | slot


def sync_nonce(counter: int) -> int:
    if not 0 <= counter < ROUND_LIMIT << 32:
        raise ValueError(f"synchronous item {counter} outside the nonce space")
    return SYNC | counter


class ItemStream(csprng.Stream):
    """AES-256-CTR from block (nonce << 64): the low 64 bits count blocks within the item (an item
    draws far fewer than 2^64 blocks), so streams of distinct nonces never overlap."""

    def __init__(self, aes_key: bytes, nonce: int):  # noqa: D107 - no HKDF per item (a Cipher only)
        self.purpose = f"item/{nonce:x}"
        self._enc = Cipher(algorithms.AES(aes_key), modes.CTR((nonce << 64).to_bytes(16, "big"))).encryptor()
        self.drawn = 0


class ItemKeys:
    """The AES key of one party's item streams (HKDF of the key it shares with the dealer, under its
    own purpose: independent of the sequential ``ttp`` stream of the same key)."""

    def __init__(self, key: bytes):
        if len(key) != csprng.KEY_BYTES:
            raise ValueError(f"an item key must be {csprng.KEY_BYTES} bytes")
        self._aes = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                         info=b"mpcache-csprng/ttp-items").derive(key)

    def stream(self, nonce: int) -> ItemStream:
        return ItemStream(self._aes, nonce)
