"""Cryptographic randomness for every mask and share (DESIGN §5, issue #19).

CrypTen draws with ``torch.randint`` on ``torch.Generator`` (MT19937): linear, so 312 observed ring
elements give a generator's whole past and future, and the client sees thousands of raw dealer
outputs (the embedding's d = x - A, x its own). tests/test_attack_randomness.py breaks a real run.

Here every draw is AES-256-CTR keystream (``cryptography``/OpenSSL). A :class:`Stream` is a key and
a purpose: the AES key is HKDF-SHA256(key, info=purpose), so one agreed key gives independent
streams per purpose, and the CTR nonce can be zero (one Stream per derived key and process:
``_stream``). Keys: ``local()`` (the process's own, os.urandom), the pair key (party 0 makes it,
sends it over the direct link: ``bind_pair``), each party's key with the TTP dealer (``bind_dealer``
/ ``dealer_bind``). ``install_party`` routes CrypTen's generators to these streams; a generator
bound to none raises (fail closed: never a silent MT19937 draw).

``MPCACHE_INSECURE_RNG=mt19937`` (tests and benchmarks only; no CLI flag sets it) keeps CrypTen's
MT19937 generators: the insecure reference the attack test breaks.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time

import crypten
import crypten.common.rng as rng
import crypten.mpc.primitives.arithmetic  # noqa: F401 - the modules whose bound draws we replace
import crypten.mpc.primitives.binary  # noqa: F401
import crypten.mpc.provider.tfp_provider  # noqa: F401
import crypten.mpc.provider.ttp_provider  # noqa: F401
import torch
import torch.distributed as dist
from crypten import communicator
from crypten.cuda import CUDALongTensor  # CrypTen's own draws return it on CUDA
from crypten.mpc.provider.ttp_provider import TTPClient
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
_NAMES = ("generate_random_ring_element", "generate_kbit_random_tensor")  # crypten.common.rng's draws
INSECURE_ENV = "MPCACHE_INSECURE_RNG"
_CHUNK = 1 << 20  # bytes of keystream per OpenSSL call (large calls are no faster; this buffer is reused)
_ZEROS = memoryview(bytes(_CHUNK))  # sliced without copying
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

    total = 0  # ring elements drawn by all streams of this process (cost accounting, benchmarks)
    calls = 0  # draws (calls of ``ring``) by all streams of this process
    seconds = 0.0  # time spent drawing, all streams of this process

    def __init__(self, key: bytes, purpose: str):
        if len(key) < 16:
            raise ValueError("a stream key needs at least 128 bits")
        aes_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                       info=b"mpcache-csprng/" + purpose.encode()).derive(key)
        self.purpose = purpose
        self._enc = Cipher(algorithms.AES(aes_key), modes.CTR(bytes(16))).encryptor()
        self.drawn = 0  # ring elements drawn by this stream

    def ring(self, shape) -> torch.Tensor:
        """Uniform int64 ring elements (all of Z_2^64, two's complement)."""
        shape = _as_shape(shape)
        n = math.prod(shape)
        self.drawn += n
        Stream.total += n
        Stream.calls += 1
        if n == 0:
            return torch.empty(shape, dtype=torch.int64)
        start = time.perf_counter()
        # AES-CTR of zeros written straight into the tensor's bytes, 1 MiB per OpenSSL call; a
        # bytearray is the cheapest buffer for small draws; +15 bytes: update_into's block slack.
        total = 8 * n
        buf = bytearray(total + 15)
        view = memoryview(buf)
        for done in range(0, total, _CHUNK):
            self._enc.update_into(_ZEROS[: min(_CHUNK, total - done)], view[done:])
        out = torch.frombuffer(buf, dtype=torch.int64, count=n)
        out = out if len(shape) == 1 else out.view(shape)
        Stream.seconds += time.perf_counter() - start
        return out

    def bits(self, shape, bitlength: int) -> torch.Tensor:
        """Uniform in [0, 2^bitlength) (bitlength 64: the whole ring, as ``ring``)."""
        if not 1 <= bitlength <= 64:
            raise ValueError(f"bitlength {bitlength} outside 1..64")
        r = self.ring(shape)
        return r if bitlength == 64 else r & ((1 << bitlength) - 1)


def _as_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, int):
        return (shape,)
    if type(shape) is torch.Size:
        return shape
    return tuple(int(s) for s in shape)


# --- keys and streams of this process ---------------------------------------------------------------
class _Keys:
    def __init__(self):
        self.local: Stream | None = None
        self.pair: bytes | None = None
        self.dealer: bytes | None = None  # party side: the key shared with the TTP dealer
        self.dealer_of: dict[int, bytes] = {}  # dealer side: party rank -> key
        self.streams: dict[tuple, Stream] = {}  # (key kind, purpose) -> the one Stream of it
        self.generators: dict[str, torch.Generator] = {}  # shared_generator's, by purpose
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
        if _keys.dealer_of.setdefault(rank_of_party, bytes(key)) != key:
            raise RuntimeError(f"randomness: a second dealer key for party {rank_of_party}")


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
    return CUDALongTensor(t.to(device))


def generate_random_ring_element(size, ring_size=(2**64), generator=None, **kwargs):
    """CrypTen's ``crypten.common.rng`` function, drawing from the keyed stream of ``generator``."""
    if ring_size != 2**64:
        raise ValueError(f"ring size {ring_size}: only 2^64 is supported")
    return _on_device(stream_for(generator).ring(size), kwargs)


def generate_kbit_random_tensor(size, bitlength=None, generator=None, **kwargs):
    """CrypTen's k-bit draw from the keyed stream of ``generator``."""
    return _on_device(stream_for(generator).bits(size, 64 if bitlength is None else bitlength), kwargs)


def _counted(original):
    """The insecure reference's draw function, counted like the streams (bench comparisons); the
    outermost call only (CrypTen's 64-bit k-bit draw calls its ring draw)."""
    def draw(size, *args, **kwargs):
        start, outer = time.perf_counter(), not _depth
        _depth.append(1)
        try:
            out = original(size, *args, **kwargs)
        finally:
            _depth.pop()
        if outer:
            Stream.total, Stream.calls = Stream.total + out.numel(), Stream.calls + 1
            Stream.seconds += time.perf_counter() - start
        return out

    return draw


_depth: list[int] = []


def _patch_modules() -> None:
    """Replace the two draw functions in crypten.common.rng and in every crypten module that
    imported them by name (mpc/primitives/*, mpc/provider/*): by the keyed ones, or with
    MPCACHE_INSECURE_RNG=mt19937 by CrypTen's own, counted."""
    originals = {name: getattr(rng, name) for name in _NAMES}
    if getattr(originals[_NAMES[0]], _PATCHED, False):
        return
    mine = {"generate_random_ring_element": generate_random_ring_element,
            "generate_kbit_random_tensor": generate_kbit_random_tensor}
    if insecure_rng():
        mine = {name: _counted(fn) for name, fn in originals.items()}
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
    g = _keys.generators.get(purpose)
    if g is None:
        g = _keys.generators[purpose] = _placeholder()
        bind_generator(g, lambda: _stream("pair", _keys.pair, f"shared/{purpose}"))
    return g


def _bind_crypten_generators(rank: int) -> None:
    """CrypTen's four generators per device -> streams: "local" is ours alone; "next"/"prev" are
    the two pair sub-streams (party 0's "next" is party 1's "prev"); "global" another pair one."""
    factories = {
        "local": local,
        "next": lambda: pair_stream(rank),
        "prev": lambda: pair_stream(1 - rank),
        "global": lambda: _stream("pair", _keys.pair, "global"),
    }
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        names = ["cuda", *(f"cuda:{n}" for n in range(torch.cuda.device_count()))]
        devices += [torch.device(name) for name in names]
    for kind, per_device in crypten.generators.items():
        for device in devices:
            per_device[device] = _placeholder()
            bind_generator(per_device[device], factories[kind])


def _keyed_setup_prng() -> None:
    """Replaces ``crypten._setup_prng`` (run by crypten.init()): no seeds are exchanged; the pair
    key is agreed over the direct link later (``bind_pair``) and draws before it raise."""
    comm = communicator.get()
    if comm.get_world_size() != 2:
        raise RuntimeError("the keyed randomness is for two parties")
    _bind_crypten_generators(comm.get_rank())


def _ttp_client_setup(self) -> None:
    """Replaces CrypTen's TTPClient seed exchange: the dealer sends each party a 256-bit key."""
    # links: the links branch moves this key onto the authenticated dealer link (bind_dealer there)
    key = torch.empty(KEY_BYTES, dtype=torch.uint8)
    dist.irecv(tensor=key, src=communicator.get().get_ttp_rank(), group=self.ttp_group).wait()
    dist.barrier(group=self.ttp_group)
    bind_dealer(bytes(key.numpy().tobytes()))
    self.generator = _placeholder()
    bind_generator(self.generator, party_dealer_stream)
    self.generator_cuda = self.generator  # one stream per party whatever the device


def ttp_server_setup(server) -> None:
    """The dealer's side of ``_ttp_client_setup`` (``FixedMaskServer._setup_generators``): one key
    per party; ``server.generators[i]`` draws from ``dealer_stream(i)``."""
    world = communicator.get().get_world_size()
    reset()  # a new dealer session: new keys
    keys = [fresh_key() for _ in range(world)]
    # links: the links branch sends these over the authenticated dealer link (dealer_bind there)
    tensors = [torch.frombuffer(bytearray(k), dtype=torch.uint8) for k in keys]
    requests = [dist.isend(tensor=t, dst=i, group=server.ttp_group) for i, t in enumerate(tensors)]
    server.generators = []
    for i, k in enumerate(keys):
        dealer_bind(i, k)
        server.generators.append(_placeholder())
        bind_generator(server.generators[i], lambda i=i: dealer_stream(i))
        requests[i].wait()
    server.generators_cuda = server.generators  # one stream per party whatever the device
    dist.barrier(group=server.ttp_group)


def install_dealer() -> None:
    """Dealer process (before its TTPServer starts): CrypTen's draw functions use the streams."""
    _patch_modules()


def install_party(rank: int) -> None:
    """Parties 0 and 1: route all of CrypTen's randomness to keyed streams, fail closed.

    Call it before ``crypten.init()`` (runtime.init does): then CrypTen's seed exchanges are
    replaced (no seeds on the wire; the TTP dealer sends keys). Called after init it rebinds the
    generators that init made (TFP only: a TTP client already took a seed). No-op with
    MPCACHE_INSECURE_RNG=mt19937 (CrypTen's generators stay; their draws are only counted)."""
    if insecure_rng():
        _patch_modules()
        return
    if rank not in (0, 1):
        raise ValueError(f"install_party is for parties 0 and 1, not rank {rank}")
    reset()
    _patch_modules()

    crypten._setup_prng = _keyed_setup_prng
    TTPClient._TTPClient__TTPClient._setup_generators = _ttp_client_setup
    if crypten.is_initialized():
        _bind_crypten_generators(rank)
