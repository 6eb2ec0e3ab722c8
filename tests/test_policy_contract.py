"""The policy contract: a policy declares the backends it runs on; every entry point refuses an
unsupported (policy, backend) pair with one line, before any setup (no party is launched)."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from mpcache.core.backend import PlainBackend
from mpcache.core.errors import UserError
from mpcache.core.policy import BACKENDS
from mpcache.models import Transformer, load_model
from mpcache.policies import POLICIES, check_supported, make_policy, supported
from mpcache.programs import cli
from mpcache.programs.commands import bench

PLAIN_ONLY = {"mikv", "kvcrush", "kvcrush+mikv", "lazyeviction", "locret", "attention-gate"}
PAIRS = [(name, backend) for name in POLICIES for backend in BACKENDS]


def test_declarations_match_what_runs_under_mpc():
    assert set(supported("plain")) == set(POLICIES)
    assert set(supported("mpc")) == set(POLICIES) - PLAIN_ONLY


class _NamedBackend(PlainBackend):
    """A plaintext backend answering to another backend's name: the check reads only the name."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name


@pytest.fixture(scope="module")
def tiny():
    return load_model("random:tiny")


@pytest.mark.parametrize(("name", "backend"), PAIRS)
def test_pair_is_run_or_refused_at_cache_start(name, backend, tiny):
    """The transformer checks the pair when a sequence starts (any entry point goes through it)."""
    policy = make_policy(name, 0.5)
    model = Transformer(tiny.config, tiny.weights, _NamedBackend(backend))
    if backend in POLICIES[name].backends:
        assert model.new_cache(policy) is not None
        check_supported(name, backend)
    else:
        refused = re.escape(f"policy '{name}' runs on the plain backend only (") + ".*"
        refused += re.escape(f"), not on '{backend}'")
        with pytest.raises(UserError, match=refused):
            model.new_cache(policy)
        with pytest.raises(UserError, match="plaintext only"):
            check_supported(name, backend)


@pytest.mark.parametrize("name", sorted(PLAIN_ONLY))
def test_bench_mpc_refuses_before_any_launch(name, capsys, monkeypatch, tmp_path):
    def no_launch(*args, **kwargs):
        raise AssertionError("a party was launched")

    monkeypatch.setattr(bench, "launch_local", no_launch)
    out = str(tmp_path / "r.jsonl")
    code = cli.main(["bench", "mpc", "--policy", name, "--model", "random:tiny", "--json", out])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "runs in plaintext only" in err[0] and "under MPC use one of" in err[0]
    assert not (tmp_path / "r.jsonl").exists()


def test_refusal_is_one_line_from_the_command_line(tmp_path):
    """As a user sees it: a fresh process, exit status 2, one line, no traceback, quickly."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mpcache", "bench", "mpc", "--policy", "locret",
                           "--json", str(tmp_path / "r.jsonl")], capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "mpcache: error: policy 'locret' runs in plaintext only (its retaining heads are plaintext MLPs); "
        "under MPC use one of: " + ", ".join(supported("mpc"))]
    assert seconds < 60  # ~3 s on an idle 2-core machine (the imports); generous for a loaded CI
