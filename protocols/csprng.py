"""Cryptographic randomness for every mask and share (DESIGN §5, issue #19).

CrypTen draws all its randomness with ``torch.randint`` on ``torch.Generator`` (MT19937): linear,
so 312 observed 64-bit ring elements give the generator's whole past and future. In this protocol
the client sees thousands of raw dealer outputs (the embedding's d = x - A with x known), so MT19937
masks hide nothing (tests/test_attack_randomness.py shows it on a real run).

Here every draw comes from an AES-256-CTR keystream (``cryptography``/OpenSSL, AES-NI: ~1e9 ring
elements/s, several times faster than torch's MT19937). A :class:`Stream` is keyed by a 256-bit key
and a purpose: the AES key is HKDF-SHA256(key, info=purpose), so one agreed key yields independent
streams per purpose (domain separation), and the CTR nonce can be fixed at zero (each derived key
is used by one Stream per process; see ``_streams``).

Keys: ``local()`` (each process's own, os.urandom), the pair key of parties 0 and 1 (party 0 makes
it and sends it over the direct link: ``bind_pair``), the key each party shares with the TTP dealer
(``bind_dealer`` / ``dealer_bind``). ``install_party`` routes CrypTen's generators to these streams;
a generator bound to no stream raises (fail closed: never a silent MT19937 draw).

``MPCACHE_INSECURE_RNG=mt19937`` (tests and benchmarks only; no CLI flag sets it) keeps CrypTen's
MT19937 generators, the insecure reference the attack test breaks.
"""

from __future__ import annotations

import math
import os
import sys
import threading

import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocols.compat import import_crypten

KEY_BYTES = 32
INSECURE_ENV = "MPCACHE_INSECURE_RNG"
_CHUNK = 1 << 20  # bytes of keystream per OpenSSL call (large calls are no faster; this buffer is reused)
_ZEROS = bytes(_CHUNK)
_PATCHED = "_mpcache_csprng"


def fresh_key() -> bytes:
    return os.urandom(KEY_BYTES)


def insecure_rng() -> bool:
    """True only when MPCACHE_INSECURE_RNG=mt19937 (the attack test's reference, benchmarks)."""
    return os.environ.get(INSECURE_ENV, "") == "mt19937"


def rng_name() -> str:
    """What bench records report as ``rng``."""
    return "insecure-mt19937" if insecure_rng() else "aes-ctr"


class Stream:
    """AES-256-CTR keystream under HKDF(key, purpose), read as ring elements. Not thread-safe:
    each stream is drawn from by one thread (the party's main thread)."""

    def __init__(self, key: bytes, purpose: str):
        if len(key) < 16:
            raise ValueError("a stream key needs at least 128 bits")
        aes_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                       info=b"mpcache-csprng/" + purpose.encode()).derive(key)
        self.purpose = purpose
        self._enc = Cipher(algorithms.AES(aes_key), modes.CTR(bytes(16))).encryptor()
        self.drawn = 0  # ring elements drawn (cost accounting)

    def ring(self, shape) -> torch.Tensor:
        """Uniform int64 ring elements (all of Z_2^64, two's complement)."""
        shape = _as_shape(shape)
        n = math.prod(shape)
        self.drawn += n
        out = torch.empty(n + 2, dtype=torch.int64)  # +15 bytes: update_into's block slack
        view = memoryview(out.numpy()).cast("B")
        total, done = 8 * n, 0
        while done < total:  # keystream = AES-CTR of zeros, written straight into the tensor
            step = min(_CHUNK, total - done)
            self._enc.update_into(_ZEROS[:step] if step < _CHUNK else _ZEROS, view[done:])
            done += step
        return out[:n].view(shape)

    def bits(self, shape, bitlength: int) -> torch.Tensor:
        """Uniform in [0, 2^bitlength) (bitlength 64: the whole ring, as ``ring``)."""
        if not 1 <= bitlength <= 64:
            raise ValueError(f"bitlength {bitlength} outside 1..64")
        r = self.ring(shape)
        return r if bitlength == 64 else r & ((1 << bitlength) - 1)


def _as_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, int):
        return (shape,)
    return tuple(int(s) for s in shape)


# --- keys and streams of this process ---------------------------------------------------------------
class _Keys:
    def __init__(self):
        self.local: Stream | None = None
        self.pair: bytes | None = None
        self.dealer: bytes | None = None  # party side: the key shared with the TTP dealer
        self.dealer_of: dict[int, bytes] = {}  # dealer side: party rank -> key
        self.streams: dict[tuple, Stream] = {}  # (key kind, purpose) -> the one Stream of it
        self.lock = threading.Lock()


_keys = _Keys()


def _stream(kind: str, key: bytes | None, purpose: str) -> Stream:
    """The one Stream of (kind, purpose) in this process (a second one would repeat its keystream)."""
    if key is None:
        raise RuntimeError(f"randomness: the {kind} key is not agreed yet (a draw from the "
                           f"'{purpose}' stream came first); refusing an unkeyed generator")
    with _keys.lock:
        s = _keys.streams.get((kind, purpose))
        if s is None:
            s = _keys.streams[(kind, purpose)] = Stream(key, purpose)
        return s


def local() -> Stream:
    """This process's own stream (OS key, never leaves the process)."""
    with _keys.lock:
        if _keys.local is None:
            _keys.local = Stream(fresh_key(), "local")
        return _keys.local


def bind_pair(key: bytes) -> None:
    """Parties 0 and 1: the key they share (party 0 made it and sent it over the direct link)."""
    _bind("pair", key)


def bind_dealer(key: bytes) -> None:
    """Party i: the key it shares with the TTP dealer."""
    _bind("dealer", key)


def dealer_bind(rank_of_party: int, key: bytes) -> None:
    """Dealer process: the key it shares with party ``rank_of_party``."""
    _check_key(key)
    with _keys.lock:
        if _keys.dealer_of.get(rank_of_party, key) != key:
            raise RuntimeError(f"randomness: a second dealer key for party {rank_of_party}")
        _keys.dealer_of[rank_of_party] = key


def dealer_stream(rank_of_party: int) -> Stream:
    """Dealer process: the stream it shares with party ``rank_of_party`` (= that party's ``ttp``)."""
    return _stream(f"dealer{rank_of_party}", _keys.dealer_of.get(rank_of_party), "ttp")


def pair_stream(sender: int) -> Stream:
    """The pair stream party ``sender`` calls "next" (the other calls it "prev"): in 2PC party 0's
    "next" is party 1's "prev" and vice versa, so one pair key gives two sub-streams."""
    return _stream("pair", _keys.pair, f"pair/{sender}->{1 - sender}")


def party_dealer_stream() -> Stream:
    """Party side: the stream shared with the TTP dealer."""
    return _stream("dealer", _keys.dealer, "ttp")


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise ValueError(f"a shared key must be {KEY_BYTES} bytes")


def _bind(kind: str, key: bytes) -> None:
    _check_key(key)
    with _keys.lock:
        if getattr(_keys, kind) not in (None, bytes(key)):
            raise RuntimeError(f"randomness: a second {kind} key in one session")
        setattr(_keys, kind, bytes(key))


def reset() -> None:
    """Forget every key and stream (a new session in the same process, tests)."""
    global _keys
    _keys = _Keys()


# --- CrypTen's generators -> streams ------------------------------------------------------------------
_bound: dict[int, tuple[torch.Generator, object]] = {}  # id(generator) -> (generator, stream factory)


def bind_generator(generator: torch.Generator, stream_of) -> None:
    """Route draws on ``generator`` (a CrypTen torch.Generator, never drawn from) to ``stream_of()``.
    The generator is kept referenced so its id is never reused."""
    _bound[id(generator)] = (generator, stream_of)


def stream_for(generator: torch.Generator | None) -> Stream:
    """The stream a CrypTen generator stands for; None is CrypTen's default, the local stream."""
    if generator is None:
        return local()
    entry = _bound.get(id(generator))
    if entry is None or entry[0] is not generator:
        raise RuntimeError("randomness: a draw on a torch.Generator bound to no keyed stream "
                           "(refusing MT19937)")
    return entry[1]()


def _on_device(t: torch.Tensor, kwargs: dict):
    device = kwargs.get("device")
    if device is None or torch.device(device).type == "cpu":
        return t
    from crypten.cuda import CUDALongTensor

    return CUDALongTensor(t.to(device))


def generate_random_ring_element(size, ring_size=(2**64), generator=None, **kwargs):
    """CrypTen's ``crypten.common.rng`` function, drawing from the keyed stream of ``generator``."""
    if ring_size != 2**64:
        raise ValueError(f"ring size {ring_size}: only 2^64 is supported")
    return _on_device(stream_for(generator).ring(size), kwargs)


def generate_kbit_random_tensor(size, bitlength=None, generator=None, **kwargs):
    """CrypTen's k-bit draw from the keyed stream of ``generator``."""
    stream = stream_for(generator)
    return _on_device(stream.bits(size, 64 if bitlength is None else bitlength), kwargs)


_NAMES = ("generate_random_ring_element", "generate_kbit_random_tensor")


def _patch_modules() -> None:
    """Replace the two draw functions in crypten.common.rng and in every crypten module that
    imported them by name (mpc/primitives/*, mpc/provider/*)."""
    import_crypten()
    import crypten.common.rng as rng
    import crypten.mpc.primitives.arithmetic  # noqa: F401 - make sure the importers are loaded
    import crypten.mpc.primitives.binary  # noqa: F401
    import crypten.mpc.provider.tfp_provider  # noqa: F401
    import crypten.mpc.provider.ttp_provider  # noqa: F401

    originals = {name: getattr(rng, name) for name in _NAMES}
    if getattr(originals[_NAMES[0]], _PATCHED, False):
        return
    mine = {"generate_random_ring_element": generate_random_ring_element,
            "generate_kbit_random_tensor": generate_kbit_random_tensor}
    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith("crypten"):
            continue
        for name in _NAMES:
            if getattr(module, name, None) is originals[name]:
                setattr(module, name, mine[name])
    for fn in mine.values():
        setattr(fn, _PATCHED, True)


def _placeholder() -> torch.Generator:
    """A torch.Generator that only names a stream. Seeded from the OS all the same: code that
    bypasses the patched draw functions (CrypTen's dropout, on no secret path) is no worse off."""
    g = torch.Generator()
    g.manual_seed(int.from_bytes(os.urandom(8), "little"))
    return g


def shared_generator(purpose: str) -> torch.Generator:
    """A generator both parties hold for ``purpose`` (pair key; e.g. the TFP dealer's comparison
    material): separate purposes draw from separate streams."""
    with _keys.lock:
        g = _keys.streams.get(("generator", purpose))
    if g is None:
        g = _placeholder()
        bind_generator(g, lambda: _stream("pair", _keys.pair, f"shared/{purpose}"))
        with _keys.lock:
            _keys.streams[("generator", purpose)] = g
    return g


def _bind_crypten_generators(rank: int) -> None:
    """CrypTen's four generators per device -> streams: "local" is ours alone; "next"/"prev" are
    the two pair sub-streams (party 0's "next" is party 1's "prev"); "global" another pair one."""
    import crypten

    factories = {
        "local": local,
        "next": lambda: pair_stream(rank),
        "prev": lambda: pair_stream(1 - rank),
        "global": lambda: _stream("pair", _keys.pair, "global"),
    }
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices += [torch.device("cuda")] + [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    for kind, per_device in crypten.generators.items():
        for device in devices:
            per_device[device] = _placeholder()
            bind_generator(per_device[device], factories[kind])


def _keyed_setup_prng() -> None:
    """Replaces ``crypten._setup_prng`` (run by crypten.init()): no seeds are exchanged; the pair
    key is agreed over the direct link later (``bind_pair``) and draws before it raise."""
    from crypten import communicator

    comm = communicator.get()
    if comm.get_world_size() != 2:
        raise RuntimeError("the keyed randomness is for two parties")
    _bind_crypten_generators(comm.get_rank())


def _ttp_client_setup(self) -> None:
    """Replaces CrypTen's TTPClient seed exchange: the dealer sends each party a 256-bit key."""
    import torch.distributed as dist
    from crypten import communicator

    # links: the links branch moves this key onto the authenticated dealer link (bind_dealer there)
    key = torch.empty(KEY_BYTES, dtype=torch.uint8)
    dist.irecv(tensor=key, src=communicator.get().get_ttp_rank(), group=self.ttp_group).wait()
    dist.barrier(group=self.ttp_group)
    bind_dealer(bytes(key.numpy().tobytes()))
    self.generator = _placeholder()
    bind_generator(self.generator, party_dealer_stream)
    self.generator_cuda = None


def ttp_server_setup(server) -> None:
    """The dealer's side of ``_ttp_client_setup`` (``FixedMaskServer._setup_generators``): one key
    per party; ``server.generators[i]`` draws from ``dealer_stream(i)``."""
    import torch.distributed as dist
    from crypten import communicator

    world = communicator.get().get_world_size()
    keys = [fresh_key() for _ in range(world)]
    # links: the links branch sends these over the authenticated dealer link (dealer_bind there)
    tensors = [torch.frombuffer(bytearray(k), dtype=torch.uint8) for k in keys]
    requests = [dist.isend(tensor=t, dst=i, group=server.ttp_group) for i, t in enumerate(tensors)]
    server.generators, server.generators_cuda = [], [None] * world
    for i, k in enumerate(keys):
        dealer_bind(i, k)
        server.generators.append(_placeholder())
        bind_generator(server.generators[i], lambda i=i: dealer_stream(i))
        requests[i].wait()
    dist.barrier(group=server.ttp_group)


def install_dealer() -> None:
    """Dealer process (before its TTPServer starts): CrypTen's draw functions use the streams."""
    if not insecure_rng():
        _patch_modules()


def install_party(rank: int) -> None:
    """Parties 0 and 1: route all of CrypTen's randomness to keyed streams, fail closed.

    Call it before ``crypten.init()`` (runtime.init does): then CrypTen's seed exchanges are
    replaced (no seeds on the wire; the TTP dealer sends keys). Called after init it rebinds the
    generators that init made (TFP only: a TTP client already took a seed). No-op with
    MPCACHE_INSECURE_RNG=mt19937."""
    if insecure_rng():
        return
    if rank not in (0, 1):
        raise ValueError(f"install_party is for parties 0 and 1, not rank {rank}")
    crypten = import_crypten()
    reset()
    _patch_modules()
    from crypten.mpc.provider.ttp_provider import TTPClient

    crypten._setup_prng = _keyed_setup_prng
    TTPClient._TTPClient__TTPClient._setup_generators = _ttp_client_setup
    if crypten.is_initialized():
        _bind_crypten_generators(rank)
