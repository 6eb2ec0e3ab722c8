"""Bad input: one clear line on stderr, non-zero exit, no traceback."""

import subprocess
import sys

import pytest


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "mpcache", *args], capture_output=True, text=True, timeout=300,
        env=env,
    )


def assert_clean_error(proc, needle):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert needle in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_unknown_model():
    proc = run_cli("generate", "--prompt", "hi", "--model", "no-such-model")
    assert_clean_error(proc, "unknown model 'no-such-model'")


def test_unknown_random_preset():
    assert_clean_error(run_cli("generate", "--prompt", "hi", "--model", "random:huge"), "preset")


@pytest.mark.parametrize("n", ["0", "-3"])
def test_bad_max_new_tokens(n):
    proc = run_cli("generate", "--prompt", "hi", "--model", "random:tiny", "--max-new-tokens", n)
    assert_clean_error(proc, "--max-new-tokens must be at least 1")


def test_prompt_longer_than_model(tiny):
    long_prompt = "x" * (tiny.config.max_positions + 10)
    proc = run_cli("generate", "--prompt", long_prompt, "--model", "random:tiny")
    assert_clean_error(proc, "exceeds the model's 4096 positions")


def test_unknown_policy():
    proc = run_cli("generate", "--prompt", "hi", "--model", "random:tiny", "--policy", "nope")
    assert_clean_error(proc, "unknown policy 'nope'")


def test_missing_folder_parts(tmp_path):
    assert_clean_error(run_cli("generate", "--prompt", "hi", "--model", str(tmp_path)),
                       "has no config.json")


def test_corrupt_model_folder(tmp_path, tiny):
    import json

    (tmp_path / "config.json").write_text(json.dumps(tiny.config.to_hf()))
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage, not a safetensors file")
    proc = run_cli("generate", "--prompt", "hi", "--model", str(tmp_path))
    assert_clean_error(proc, "cannot read model.safetensors")


def test_bad_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    assert_clean_error(run_cli("generate", "--prompt", "hi", "--model", str(tmp_path)),
                       "bad config.json")


def test_generate_random_tiny_prints_text():
    proc = run_cli("generate", "--prompt", "hello", "--model", "random:tiny",
                   "--max-new-tokens", "5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("\n")


def test_local_hf_folder_round_trip(tmp_path, tiny):
    """A HF-layout folder (config.json + safetensors) of the tiny model loads and matches."""
    import json

    import torch
    from safetensors.torch import save_file

    from mpcache.models.loading import load_folder

    (tmp_path / "config.json").write_text(json.dumps(tiny.config.to_hf()))
    save_file(tiny.weights, str(tmp_path / "model.safetensors"))
    config, weights = load_folder(tmp_path)
    assert config == tiny.config
    assert all(torch.equal(weights[k], tiny.weights[k]) for k in tiny.weights)
