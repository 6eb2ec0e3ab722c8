"""``mpcache chat server|client|dealer``: a private multi-turn chat, one command per party.

The server owns the weights, the client types; the secret KV cache persists across turns (each
turn prefills only its own tokens, as one chunk) and is managed by ``--policy``/``--budget``: any
KV-cache policy that runs under MPC, with the conversation so far as its prompt. The client's text
never leaves the client: the server only learns token counts.
"""

from __future__ import annotations

import argparse

from mpcache.core.approximations import MPC_DEFAULT, MPC_DEFAULT_TTP, PRESETS, mpc_default
from mpcache.core.errors import UserError
from mpcache.generation.chat import STAGE_TOKENS
from mpcache.models import DEFAULT_MODEL
from mpcache.policies import check_supported, parse_options, parse_spec, supported
from mpcache.programs.parties import chat_party

CHAT_EPILOG = """\
exit status: 0 done, 2 bad option, 3 connection fault (no server, refused, settings mismatch, the
other party stopped or died, timeout), 130 interrupted (Ctrl-C).
the MPC rendezvous uses --port + 1 as well; the server must be reachable on both ports.
links: the control channel is TLS 1.3; every party prints its key fingerprint and its peers', and
proves its key (pinned: --peer-fingerprint, --expect-dealer) or the session secret before anything
else is read. On one machine the server leaves a fresh secret in a file only you can read and the
others find it; for a remote server set MPCACHE_SESSION_SECRET (hex; the server prints the line to
export) or pin keys (`mpcache keys PATH`, --key PATH).
the server refuses a bad connection (wrong secret, malformed message, mismatched settings, a
second client or dealer) with one line on both sides and keeps waiting for the right one.
policies: the budget is a fraction of the conversation (tokens attended per answer token, or kept,
as the policy defines it); the policy's stage (static eviction, cluster summaries) runs after the
first turn and after every turn of at least --stage-tokens new tokens (a pasted document).
in the chat: /file PATH (send a text file as the message), /stats (traffic, rounds, time so far,
the secret cache and what the policy kept), /reset (new conversation), /quit."""


# MPCache with its look-once static stage: a document turn leaves rho = clamp(2 * budget, 0.3, 1) of
# the cache, so later turns' prefill attends (and pays for) that much less (the registry's default
# preset keeps every token and bounds only what each answer token attends).
CHAT_POLICY = "mpcache:static=true"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="private multi-turn chat (server | client | dealer)",
                       description=__doc__, epilog=CHAT_EPILOG,
                       formatter_class=_Formatter)
    add_arguments(p)
    p.set_defaults(run=run)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("role", choices=["server", "client", "dealer"])
    p.add_argument("--addr", default="127.0.0.1",
                   help="server: address to listen on; client/dealer: the server's address")
    p.add_argument("--port", type=int, default=29500, help="the server's control port (MPC: port+1)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="server: the weights; client: the architecture and tokenizer it expects")
    p.add_argument("--dealer", choices=["ttp", "tfp"], default="ttp",
                   help="ttp: a third process deals (private; start `mpcache chat dealer`); tfp: the "
                   "server deals (NOT private against the server)")
    p.add_argument("--policy", default=CHAT_POLICY, metavar="NAME[:KEY=VALUE...]",
                   help=f"KV-cache policy of the secret cache (under MPC: {', '.join(supported('mpc'))}); "
                   "the default evicts at its stage, so the budget bounds the cache, not only what each "
                   "answer token attends; both sides must agree")
    p.add_argument("--budget", type=float, default=0.2,
                   help="the policy's budget, a fraction in (0, 1] of the conversation so far")
    p.add_argument("--stage-tokens", type=int, default=STAGE_TOKENS,
                   help="a turn of at least this many tokens runs the policy's stage again (static "
                   "eviction over the whole cache); both sides must agree")
    p.add_argument("--approx", choices=[n for n in PRESETS if n != "exact"], default=None,
                   help=f"MPC approximation preset (default {MPC_DEFAULT_TTP} with the TTP dealer, "
                   f"{MPC_DEFAULT} with tfp; both sides must agree)")
    p.add_argument("--max-new-tokens", type=int, default=48,
                   help="answer length; the server's value caps the client's")
    p.add_argument("--max-prompt-tokens", type=int, default=256,
                   help="longest message in tokens (client: it sends; server: it accepts, refusing a "
                   "longer turn)")
    p.add_argument("--expect-digest", default=None,
                   help="client: refuse a server whose weights digest does not start with this")
    p.add_argument("--key", default=None, metavar="PATH",
                   help="this party's key (`mpcache keys PATH` makes one); default: a fresh key per run")
    p.add_argument("--peer-fingerprint", default=None, metavar="FP",
                   help="pin the peer's key (client/dealer: the server's; server: the client's, or "
                   "client=FP). Without pins the parties prove the session secret (see below)")
    p.add_argument("--expect-dealer", default=None, metavar="FP",
                   help="client (and server): accept only the dealer with this key fingerprint")
    p.add_argument("--connect-timeout", type=float, default=60.0,
                   help="seconds to wait for the other parties to connect")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds a party waits for the other inside a turn (SmolLM2 steps are slow)")
    p.add_argument("--json", default=None, help="client: append one JSON record per turn to this file")


def canonical_spec(spec: str) -> str:
    """One spelling of a policy spec (options sorted, values typed), which the parties compare:
    ``mpcache:static=1`` and ``mpcache:static=true`` are the same policy."""
    name, *items = spec.strip().split(":")
    options = parse_options(name, items)
    return ":".join([name] + [f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                              for k, v in sorted(options.items())])


def run(args: argparse.Namespace) -> int:
    args.approx = args.approx or mpc_default(args.dealer)
    for name in ("max_new_tokens", "max_prompt_tokens", "stage_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    check_supported(args.policy, "mpc")  # one line, before any launch
    parse_spec(args.policy, args.budget)  # bad options and budgets too
    args.policy = canonical_spec(args.policy)  # the parties compare this string
    if not 0 < args.port < 65535:
        raise UserError(f"--port must be in 1..65534, got {args.port}")
    return chat_party.main(args)
