"""``mpcache chat`` as a user runs it: separate server / client / dealer processes (random:tiny).

The README's fault table is this file: every fault ends the parties (or, for a bad prompt, the
turn) with one line within 60 s; the persistent secret cache decodes what a plaintext run over
the whole conversation decodes.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from mpcache.core.approximations import Approximations
from mpcache.core.backend import PlainBackend
from mpcache.generation.chat import Conversation
from mpcache.generation.generate import generate
from mpcache.models import Transformer, load_model
from mpcache.policies import parse_spec
from protocols.net import tls
from protocols.net.launch import free_port

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 60


def party(role: str, port: int, *extra: str, stdin=subprocess.DEVNULL, env=None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT), **(env or {}))
    cmd = [sys.executable, "-m", "mpcache", "chat", role, "--model", "random:tiny", "--port", str(port),
           "--connect-timeout", "30", "--timeout", "60", *extra]
    return subprocess.Popen(cmd, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT)


def finish(proc: subprocess.Popen, timeout: float = LIMIT_S) -> tuple[int, str, str]:
    if proc.stdin is not None and proc.stdin.closed:
        proc.stdin = None  # written and closed by the test already
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"still running after {timeout} s: {err.decode()[-2000:]}") from None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def last_line(err: str) -> str:
    return [line for line in err.splitlines() if line.strip()][-1]


def wait_for(proc: subprocess.Popen, text: str, timeout: float = LIMIT_S) -> str:
    """Read the process's stderr until ``text`` appears (the rest stays readable by finish)."""
    seen, deadline = b"", time.time() + timeout
    os.set_blocking(proc.stderr.fileno(), False)
    while text.encode() not in seen:
        if time.time() > deadline or proc.poll() is not None:
            raise AssertionError(f"no {text!r} within {timeout} s: {seen.decode()[-2000:]}")
        chunk = proc.stderr.read()
        seen += chunk or b""
        time.sleep(0.1)
    os.set_blocking(proc.stderr.fileno(), True)
    return seen.decode()


@pytest.fixture
def port():
    return free_port()


def test_wrong_port_shows_progress_then_one_line(port):
    start = time.time()
    code, _, err = finish(party("client", port, "--connect-timeout", "11", "--dealer", "tfp"))
    assert code == 3, err
    assert f"waiting for the server at 127.0.0.1:{port}... 10 s" in err
    assert "gave up after 11 s" in last_line(err)
    assert time.time() - start < LIMIT_S


def test_ctrl_c_while_connecting_ends_within_2_s(port):
    client = party("client", port, "--dealer", "tfp")
    wait_for(client, "connecting to the server")
    client.send_signal(signal.SIGINT)
    start = time.time()
    code, _, err = finish(client, 10)
    assert time.time() - start < 2
    assert code == 130 and "interrupted (Ctrl-C)" in last_line(err)


def still_running(server: subprocess.Popen, refused: str) -> None:
    """The server said it refused (one line) and keeps listening; then stop it (Ctrl-C)."""
    wait_for(server, refused)
    assert server.poll() is None, "the server stopped after refusing a connection"
    server.send_signal(signal.SIGINT)
    code, _, err = finish(server, 10)
    assert code == 130 and "interrupted" in last_line(err)


def test_dealer_mismatch_is_refused_and_the_server_goes_on(port):
    server = party("server", port, "--dealer", "ttp")
    wait_for(server, "listening")
    code_c, _, err_c = finish(party("client", port, "--dealer", "tfp"))
    assert code_c == 3 and "dealer mismatch: server --dealer ttp, client --dealer tfp" in last_line(err_c)
    still_running(server, "dealer mismatch: server --dealer ttp, client --dealer tfp; still waiting")


def test_model_mismatch_is_refused_and_the_server_goes_on(port):
    server = party("server", port, "--dealer", "tfp")
    wait_for(server, "listening")
    client = party("client", port, "--dealer", "tfp", "--model", "random:small")
    code_c, _, err_c = finish(client)
    assert code_c == 3 and "model mismatch: the server runs random:tiny (2 layers" in last_line(err_c)
    assert "the client expects random:small (8 layers" in last_line(err_c)
    still_running(server, "model mismatch: the server runs random:tiny")


@pytest.mark.slow  # runs whole MPC turns (30-90 s on a loaded 2-core machine)
def test_second_client_is_refused_and_the_first_goes_on(port):
    server = party("server", port, "--dealer", "tfp")
    first = party("client", port, "--dealer", "tfp", "--max-new-tokens", "2", stdin=subprocess.PIPE)
    wait_for(first, "ready")
    code2, _, err2 = finish(party("client", port, "--dealer", "tfp"))
    assert code2 == 3 and "busy with another client" in last_line(err2)
    # strangers during the session: not TLS, a wrong secret, a silent one; the chat goes on
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(b"[1, 2, 3]\n")
        silent = socket.create_connection(("127.0.0.1", port))
        wrong = {"MPCACHE_SESSION_SECRET": "11" * 32}
        code3, _, err3 = finish(party("client", port, "--dealer", "tfp", env=wrong))
        assert code3 == 3 and "does not know the session secret" in last_line(err3)
    first.stdin.write(b"hi\n/quit\n")
    first.stdin.close()
    code1, out1, err1 = finish(first, 180)
    assert code1 == 0 and "assistant>" in out1 and "[turn 1:" in err1
    silent.close()
    code_s, _, err_s = finish(server)
    assert code_s == 0 and "TLS handshake" in err_s and "the chat goes on" in err_s


@pytest.mark.slow  # runs whole MPC turns (30-90 s on a loaded 2-core machine)
def test_bad_prompts_are_refused_and_the_chat_goes_on(port):
    server = party("server", port, "--dealer", "tfp", "--max-new-tokens", "2", "--max-prompt-tokens", "30")
    client = party("client", port, "--dealer", "tfp", "--max-new-tokens", "5", "--max-prompt-tokens", "40",
                   stdin=subprocess.PIPE)
    # 15 characters: 33 tokens with the first turn's template, over the server's own 30 (not the client's 40)
    client.stdin.write(b"x" * 100 + b"\n" + b"   \n" + b"caf\xe9\n" + b"fifteen chars!!\n" + b"ok\n/quit\n")
    client.stdin.close()
    code, out, err = finish(client, 180)  # a whole session with one turn on a loaded machine
    assert code == 0, err
    assert "the server caps answers at 2 tokens (you asked for 5)" in err
    assert re.search(r"\[refused: the message is \d+ tokens, the limit is 40", err)
    assert "[refused: empty message" in err
    assert "[refused: the message is not valid UTF-8" in err
    assert "[refused by the server: the message is 33 tokens, the server's limit is 30" in err
    assert "[the server takes messages up to 30 tokens]" in err
    assert "[turn 1: " in err and "+ 2 answer tokens" in err and "[turn 2:" not in err
    code_s, _, err_s = finish(server)
    assert code_s == 0 and "[server: refused a turn: the message is 33 tokens" in err_s


@pytest.mark.slow  # runs whole MPC turns (30-90 s on a loaded 2-core machine)
@pytest.mark.parametrize("who", ["client", "server"])
def test_ctrl_c_mid_turn_ends_both_within_2_s(port, who):
    server = party("server", port, "--dealer", "tfp")
    client = party("client", port, "--dealer", "tfp", "--max-new-tokens", "48", stdin=subprocess.PIPE)
    wait_for(client, "ready")
    client.stdin.write(b"a question that takes a while to answer\n")
    client.stdin.flush()
    time.sleep(3)  # inside the turn: both parties are in gloo
    victim, other = (client, server) if who == "client" else (server, client)
    victim.send_signal(signal.SIGINT)
    start = time.time()
    code_v, _, err_v = finish(victim, 10)
    code_o, _, err_o = finish(other, 10)
    assert time.time() - start < 2 + 1  # the other one's line comes at once too
    assert code_v == 130 and "interrupted (Ctrl-C)" in last_line(err_v)
    assert code_o == 3 and f"the {who} stopped" in last_line(err_o)


@pytest.mark.slow  # runs whole MPC turns (30-90 s on a loaded 2-core machine)
def test_killed_peer_is_reported_at_once(port):
    server = party("server", port, "--dealer", "tfp")
    client = party("client", port, "--dealer", "tfp", "--max-new-tokens", "48", stdin=subprocess.PIPE)
    wait_for(client, "ready")
    client.stdin.write(b"a question\n")
    client.stdin.flush()
    time.sleep(3)
    server.kill()
    start = time.time()
    code, _, err = finish(client, 30)
    assert time.time() - start < 5
    line = last_line(err)  # the control channel or the MPC link (TLS) notices first
    assert code == 3 and "server" in line and any(
        words in line for words in ("disconnected", "other party died", "closed the connection"))


@pytest.mark.slow  # runs whole MPC turns (30-90 s on a loaded 2-core machine)
def test_turn_two_continues_the_secret_cache_like_a_plaintext_run(port, tmp_path):
    """Turn 2 feeds only its own tokens on top of the secret cache, and decodes what plaintext
    decodes over the concatenated conversation (turn 1 prompt + answer + turn 2)."""
    record = tmp_path / "turns.jsonl"
    key = tmp_path / "dealer.pem"
    pinned = tls.make(key).fingerprint  # the client pins the dealer's key
    dealer = party("dealer", port, "--key", str(key))
    server = party("server", port, "--policy", "full")
    client = party("client", port, "--policy", "full", "--max-new-tokens", "4", "--json", str(record),
                   "--expect-dealer", pinned, stdin=subprocess.PIPE)
    client.stdin.write(b"Hello MPC world\nAnd the second turn?\n/quit\n")
    client.stdin.close()
    code, _, err = finish(client, 240)
    assert code == 0, err
    assert "dealer: TTP" in err and f"the dealer's key {pinned} (as the server saw it; pinned)" in err
    assert re.search(r"\[turn 1: .*; dealer [1-9][0-9.]* MB", err), err  # the dealer's traffic is shown
    finish(server, 30), finish(dealer, 30)
    t1, t2 = [json.loads(line) for line in record.read_text().splitlines()]
    assert t2["prompt_tokens"] == len(t2["ids"]) < t2["position"]  # only its own tokens were fed
    m = load_model("random:tiny")
    model = Transformer(m.config, m.weights, PlainBackend(Approximations.preset(t1["approx"])))
    conversation = t1["ids"] + t1["answer_ids"][:-1] + t2["ids"]
    assert generate(model, conversation, 4).new_ids == t2["answer_ids"]


@pytest.mark.slow  # runs whole MPC turns (30-90 s on a loaded 2-core machine)
def test_mpcache_document_chat_decodes_like_the_plaintext_conversation(port, tmp_path):
    """/file sends a document (its stage runs: static eviction over the secret cache), a question
    follows (one chunk, no stage; dynamic selection serves each answer token): both turns decode
    what the plaintext Conversation with the same policy decodes over the same conversation."""
    doc, long = tmp_path / "doc.txt", tmp_path / "long.txt"
    doc.write_text("Alice keeps the red key in the blue box under the stairs. " * 2)
    long.write_text("x" * 400)
    record = tmp_path / "turns.jsonl"
    opts = ("--dealer", "tfp", "--policy", "mpcache:static=1", "--budget", "0.3", "--stage-tokens", "60")
    server = party("server", port, *opts)
    client = party("client", port, *opts, "--max-new-tokens", "3", "--json", str(record),
                   stdin=subprocess.PIPE)
    client.stdin.write(f"/file {long}\nn\n/file {doc}\nWhere is the key?\n/stats\n/quit\n".encode())
    client.stdin.close()
    code, _, err = finish(client, 240)
    assert code == 0, err
    finish(server, 30)
    assert re.search(r"\[file long.txt: 400 characters, \d+ tokens with this turn's template; the policy's "
                     r"stage runs after it\]\n\[not sent\]", err), err
    assert "[turn 1: " in err and ", stage ran, position" in err and "first token " in err
    assert "[cache: policy mpcache:static=true (budget 0.3): " in err and "stage after turn(s) 1;" in err
    t1, t2 = [json.loads(line) for line in record.read_text().splitlines()]
    assert t1["staged"] and not t2["staged"] and t1["first_token_s"] > 0
    assert t1["cache_tokens"] < t1["prompt_tokens"]  # the stage evicted part of the document
    m = load_model("random:tiny")
    model = Transformer(m.config, m.weights, PlainBackend(Approximations.preset(t1["approx"])))
    conv = Conversation(model, partial(parse_spec, t1["policy"], 0.3), 60)
    assert conv.turn(t1["ids"], 3).new_ids == t1["answer_ids"]
    assert conv.turn(t2["ids"], 3).new_ids == t2["answer_ids"]
    assert conv.cache_tokens == t2["cache_tokens"]
    assert conv.cache.mean_attended() < conv.cache_tokens  # the answer tokens attended a selection
