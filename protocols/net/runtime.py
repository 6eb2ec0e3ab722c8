"""Two-party runtime: CrypTen from torchrun's environment, roles, dealer, faults.

Rank 0 is the **server** (owns the weights), rank 1 the **client** (owns the prompt; the only party
that sees token ids or text in the clear). With ``--dealer ttp`` a third process (rank 2) is
CrypTen's trusted third party, extended with the fixed-mask requests of ``protocols.ring.dealer``.

Faults never hang: every collective has a timeout (gloo raises when a peer is gone or silent), a
watchdog bounds the rendezvous, and :func:`run_party` turns any failure into one clear line on
stderr and exit status 3.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import crypten
import torch.distributed as dist

from mpcache.core.errors import RuntimeFault, UserError, say
from protocols.net import dealerlink, fastcomm, links
from protocols.net.dealer_server import run_ttp_server
from protocols.ring import csprng

SERVER, CLIENT, DEALER = 0, 1, 2
ROLES = {SERVER: "server", CLIENT: "client", DEALER: "dealer"}
DEALERS = ("tfp", "ttp")
DEFAULT_TIMEOUT_S = 60.0
FAULT_EXIT = 3
SECRET_ENV = "MPCACHE_SESSION_SECRET"

DEALER_NOTE = {
    "tfp": "dealer: TFP (party 0 = the server makes the correlated randomness; fast, NOT private "
    "against the server)",
    "ttp": "dealer: TTP (a third process makes the correlated randomness; private against each "
    "party if the dealer colludes with neither)",
}


def world_size(dealer: str) -> int:
    """Processes a session needs: server and client, plus the TTP dealer."""
    return 3 if dealer == "ttp" else 2


@dataclass
class Party:
    rank: int
    dealer: str
    timeout_s: float

    @property
    def role(self) -> str:
        return ROLES[self.rank]

    @property
    def is_server(self) -> bool:
        return self.rank == SERVER

    @property
    def is_client(self) -> bool:
        return self.rank == CLIENT


def under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def _check_env(dealer: str) -> int:
    if dealer not in DEALERS:
        raise RuntimeFault(f"unknown dealer {dealer!r} (choose tfp or ttp)")
    missing = [k for k in ("RANK", "WORLD_SIZE") if k not in os.environ]
    if "RENDEZVOUS" not in os.environ:
        missing += [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeFault(
            f"missing environment {', '.join(missing)}: launch the parties with torchrun "
            f"(torchrun --nproc_per_node={world_size(dealer)} ...)"
        )
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    expected = world_size(dealer)
    if world != expected:
        raise RuntimeFault(
            f"dealer {dealer} needs {expected} processes (server, client"
            f"{', dealer' if dealer == 'ttp' else ''}), got WORLD_SIZE={world}"
        )
    if not 0 <= rank < world:
        raise RuntimeFault(f"RANK={rank} outside 0..{world - 1}")
    return rank


def _patch_timeouts(timeout_s: float) -> None:
    """CrypTen creates its process groups without a timeout (30 min): give them ours."""
    if getattr(dist, "_mpcache_timeout", None) == timeout_s:
        return
    td = datetime.timedelta(seconds=timeout_s)
    original_init = getattr(dist, "_mpcache_init", dist.init_process_group)
    original_group = getattr(dist, "_mpcache_new_group", dist.new_group)

    def init_process_group(*args, **kwargs):
        kwargs.setdefault("timeout", td)
        return original_init(*args, **kwargs)

    def new_group(*args, **kwargs):
        kwargs.setdefault("timeout", td)
        return original_group(*args, **kwargs)

    dist._mpcache_init, dist._mpcache_new_group = original_init, original_group
    dist.init_process_group, dist.new_group = init_process_group, new_group
    dist._mpcache_timeout = timeout_s


_exiting = threading.Lock()
_on_exit: list[Callable[[str], None]] = []  # notify the other party (control channel) before exiting


def exit_now(message: str, code: int) -> None:
    """Print one line and end the process now (from any thread); the first caller wins."""
    if not _exiting.acquire(blocking=False):
        return
    for hook in _on_exit:
        try:
            hook(message)
        except Exception:  # best effort: the other side may be gone already
            pass
    say(message)
    os._exit(code)


def on_exit(hook: Callable[[str], None]) -> None:
    """Run ``hook(message)`` before the process ends through :func:`exit_now`."""
    _on_exit.append(hook)


def stop_on_interrupt(role: str) -> None:
    """Ctrl-C (SIGINT) or SIGTERM end this party within a second, wherever the main thread is.

    A Python signal handler only runs when the main thread returns to the interpreter, which a
    party blocked in gloo or in the store's C++ wait may not do for minutes. The C-level handler
    writes the signal to a wakeup fd at once; a thread reading it exits the process.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)  # the thread below does the work

    def watch() -> None:
        data = os.read(r, 1)
        name = "Ctrl-C" if data and data[0] == signal.SIGINT else "terminated"
        exit_now(f"mpcache: {role}: interrupted ({name})", 130)

    threading.Thread(target=watch, daemon=True).start()


class Watchdog:
    """Exits the process with a message if a guarded section outlives its deadline."""

    def __init__(self, timeout_s: float, what: str, role: str):
        self.timer = threading.Timer(timeout_s, self._fire, args=(what, role, timeout_s))
        self.timer.daemon = True

    @staticmethod
    def _fire(what: str, role: str, timeout_s: float) -> None:
        exit_now(f"mpcache: {role}: {what} did not finish within {timeout_s:.0f} s (is the other party "
                 "running, with the same --dealer and address?)", FAULT_EXIT)

    def __enter__(self):
        self.timer.start()
        return self

    def cancel(self) -> None:
        self.timer.cancel()

    def __exit__(self, *exc):
        self.timer.cancel()


def init(dealer: str = "tfp", timeout_s: float = DEFAULT_TIMEOUT_S,
         rendezvous_timeout_s: float | None = None) -> Party:
    """Initialise CrypTen for this process from torchrun's environment.

    ``timeout_s`` bounds every later collective (a silent peer); ``rendezvous_timeout_s`` (default:
    the same) bounds the rendezvous of the parties.

    The dealer process (rank 2 with ``ttp``) serves requests here and exits when party 0 shuts
    down; this function does not return there.
    """
    rank = _check_env(dealer)
    if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
        # torchrun's store is the rendezvous. Overwrite an inherited file:// RENDEZVOUS (an earlier
        # in-process crypten.init() leaves one in the environment): a file outlives a killed run and
        # hands the next run a dead peer's address ("Gloo connectFullMesh failed").
        os.environ["RENDEZVOUS"] = "env://"
    os.environ.setdefault("DISTRIBUTED_BACKEND", "gloo")
    if dealer == "ttp":
        os.environ["WORLD_SIZE"] = "2"  # CrypTen counts the parties; it adds the TTP itself
    crypten.cfg.mpc.provider = "TTP" if dealer == "ttp" else "TFP"
    crypten.cfg.communicator.verbose = True
    _patch_timeouts(timeout_s)
    role = ROLES[rank]

    links.check_network(secret_on_gloo=links.insecure() or csprng.insecure_rng()
                        or os.environ.get("MPCACHE_SOCKET") == "0")
    if not links.insecure():
        links.identity()  # an unreadable --key: one line before the rendezvous
        for peer in ("server", "client", "dealer") if dealer == "ttp" else ("server", "client"):
            if peer != role and not links.trust(role).usable_for(peer):
                raise RuntimeFault(f"nothing to authenticate the {peer} with: set {SECRET_ENV} (hex, the "
                                   "same for all parties) or pin its key (--peer-fingerprint / "
                                   "--expect-dealer); local launches make a secret themselves")
    connect_s = rendezvous_timeout_s or timeout_s
    with Watchdog(connect_s, "the rendezvous of the parties", role) as watchdog:
        if rank == DEALER:
            run_ttp_server(on_connected=watchdog.cancel, timeout_s=connect_s)  # serves the whole session
            sys.exit(0)
        csprng.install_party(rank)  # keyed AES-CTR streams instead of MT19937 (before init: no seeds)
        dealerlink.install_party(timeout_s)  # the TTP dealer over its TLS link (after csprng's patch)
        crypten.init()
        fastcomm.install(timeout_s)  # the parties' direct TLS link; the pair key goes over it
    return Party(rank=rank, dealer=dealer, timeout_s=timeout_s)


def shutdown() -> None:
    dealerlink.close()
    try:
        if crypten.is_initialized():
            crypten.uninit()
    except Exception:  # the other side may be gone already; nothing left to clean
        pass


def run_party(body: Callable[[], int], role: str | None = None) -> int:
    """Run ``body``; any fault ends the process with one line on stderr.

    Exit status: 2 bad input (UserError), 3 a launch or communication fault (peer gone, timeout,
    settings mismatch, refused), 130 interrupted (Ctrl-C / SIGTERM).
    """
    if role is None:
        rank = os.environ.get("RANK", "")
        role = ROLES.get(int(rank), "party") if rank.isdigit() else "party"
    try:
        code = body()
    except RuntimeFault as exc:
        exit_now(f"mpcache: {role}: {exc}", FAULT_EXIT)
    except UserError as exc:
        if int(os.environ.get("LOCAL_RANK", "0")) > 0:  # local parties share a terminal: say it once
            os._exit(2)
        exit_now(f"mpcache: error: {exc}", 2)
    except KeyboardInterrupt:
        exit_now(f"mpcache: {role}: interrupted (Ctrl-C)", 130)
    except Exception as exc:  # a dead or silent peer surfaces as a gloo RuntimeError
        if os.environ.get("MPCACHE_DEBUG"):
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        peer = {"client": " with the server", "server": " with the client"}.get(role, "")
        exit_now(f"mpcache: {role}: the two-party computation{peer} failed — the other party died, "
                 f"was killed or timed out ({type(exc).__name__}: {first[:200]})", FAULT_EXIT)
    shutdown()
    return code
