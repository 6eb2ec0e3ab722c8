"""A private terminal chat: the client types, the server's model answers, the server sees no text.

The same as ``mpcache chat``. Three commands (terminals or machines; the dealer is what makes the
chat private: with ``--dealer tfp`` the server deals and could unmask the client's input):
    python examples/private_chat.py server --addr 0.0.0.0 --port 29500
    python examples/private_chat.py dealer --addr SERVER_IP --port 29500
    python examples/private_chat.py client --addr SERVER_IP --port 29500
The secret KV cache persists across turns: each turn prefills only its own tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from mpcache.core.errors import UserError
    from mpcache.programs.commands.chat import CHAT_EPILOG, _Formatter, add_arguments, run

    p = argparse.ArgumentParser(description=__doc__, epilog=CHAT_EPILOG, formatter_class=_Formatter)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        print(f"mpcache: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
