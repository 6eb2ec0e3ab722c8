"""``mpcache keys PATH``: make a party's key pair (Ed25519, PEM, mode 0600) and print its fingerprint.

The other parties pin it: ``--peer-fingerprint FP`` (server <-> client; ``ROLE=FP`` on the dealer),
``--expect-dealer FP`` (the client, for the TTP dealer). A party started with ``--key PATH`` uses
it; without one it makes an ephemeral key and prints its fingerprint at connect.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mpcache.core.errors import UserError
from protocols.net import tls


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="make a key pair for a party and print its fingerprint")
    p.add_argument("path", help="where to write the private key (never overwritten)")
    p.add_argument("--show", action="store_true", help="print the fingerprint of an existing key instead")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        identity = tls.load(args.path) if args.show else tls.make(args.path)
    except FileExistsError:
        raise UserError(f"{args.path} exists (use --show to print its fingerprint)") from None
    except OSError as exc:
        raise UserError(f"cannot write {args.path}: {exc.strerror}") from None
    except tls.AuthError as exc:
        raise UserError(str(exc)) from None
    if not args.show:
        print(f"wrote {Path(args.path)} (keep it private)")
    print(f"fingerprint {identity.fingerprint}")
    return 0
