"""`fleetwise worker` and `fleetwise profile` as users run them (real CLI in a subprocess)."""

import os
import subprocess
import sys

import httpx
import yaml

from tests.cli import ROOT, run_cli


def test_profile_writes_a_yaml_with_its_fit_error(tmp_path) -> None:
    out = tmp_path / "profiles.yaml"
    result = run_cli("profile", "--model", "Tiny-Llama-2L", "--batches", "1,3", "--prompts", "8,24",
                     "--output-tokens", "5", "--served-requests", "8", "--threads", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "MAPE" in result.stdout and "intake" in result.stdout
    doc = yaml.safe_load(out.read_text())
    assert doc["kind"] == "LatencyProfiles" and doc["profiles"][0]["fit_error"]["num_heldout"] > 0
    assert doc["profiles"][0]["admit_s"] > 0  # the per-request intake, measured through the submit path
    assert doc["meta"]["served"]["requests"] == 8  # the served phase ran beside the grid


def test_bad_options_give_one_line_and_exit_code_2() -> None:
    for args, needle in [(("profile", "--model", "GPT-5"), "--model"),
                         (("profile", "--model", "Tiny-Llama-2L", "--prompts", "8,-1"), "--prompts"),
                         (("profile", "--model", "Tiny-Llama-2L", "--prompts", "8", "--batches", "1",
                           "--output-tokens", "600"), "--output-tokens"),  # the served phase would not fit
                         (("profile", "--model", "Tiny-Llama-2L", "--batches", "128", "--prompts", "16",
                           "--output-tokens", "4", "--served-requests", "0", "--threads", "1"),
                          "at least 10 iterations"),  # a grid too small to fit and validate on
                         (("worker", "--model", "Tiny-Llama-2L", "--weights", "x=/nowhere"), "--weights"),
                         (("worker", "--model", "Tiny-Llama-2L", "--device", "tpu"), "--device"),
                         (("worker", "--model", "Tiny-Llama-2L", "--memory-gib", "inf"), "--memory-gib"),
                         # checked before profiling starts, not after minutes of it
                         (("profile", "--model", "Tiny-Llama-2L", "--batches", "1", "--prompts", "8",
                           "--output-tokens", "4", "--served-requests", "0", "--out", "/nowhere/p.yaml"), "--out")]:
        result = run_cli(*args)
        assert result.returncode == 2 and needle in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_a_batch_larger_than_the_kv_pool_is_refused_before_profiling(tmp_path) -> None:
    result = run_cli("profile", "--model", "Tiny-Llama-2L", "--batches", "1,129", "--kv-pages", "128", "--prompts", "8",
                     "--output-tokens", "4", "--served-requests", "0", "--out", str(tmp_path / "p.yaml"))
    assert result.returncode == 2 and "--batches" in result.stderr and "--kv-pages (128)" in result.stderr
    assert not (tmp_path / "p.yaml").exists()


def test_worker_serves_on_a_free_port() -> None:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "worker", "--model", "tiny=Tiny-Llama-2L",
                             "--port", "0", "--threads", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("LISTENING "):
                url = line.split()[1]
                break
        assert url is not None
        body = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 3},
                          timeout=60).json()
        assert body["usage"]["completion_tokens"] <= 3 and body["model"] == "tiny"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_worker_profile_that_fits_no_served_model_or_is_no_profile_gives_one_line_and_exit_code_2(tmp_path) -> None:
    from core.latency import LatencyModel, save_profiles

    other = tmp_path / "other.yaml"
    save_profiles(other, [LatencyModel(arch="Llama-3.1-8B", gpu_type="H100-SXM", tp=1, c0_s=0.01, c_prefill_s=0.0,
                                       c_attn_s=0.0, c_decode_s=0.001, c_kv_s=0.0, disk_to_host_s=1.0,
                                       host_to_gpu_s=1.0, kv_swap_bytes_per_s=1e9, kv_bytes_per_token=1024)])
    junk = tmp_path / "junk.yaml"
    junk.write_text("kind: Fleet\n")
    for path, needle in ((other, "Llama-3.1-8B on H100-SXM at TP 1"), (junk, "LatencyProfiles")):
        result = run_cli("worker", "--model", "Tiny-Llama-2L", "--device", "cpu", "--profile", str(path))
        assert result.returncode == 2 and needle in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
