"""The GPU runbook (scripts/gpu_check.sh, `make gpu-check`) is rehearsed here on every run, so
that the one call on a lent GPU does not fail on a typo: the dry run checks the script, the
paths it uses and that its step timeouts fit its wall-time budget."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ["setup", "selftest", "selftest-wgmma", "tests-mma", "tests-wgmma", "sanitize-memcheck",
         "sanitize-racecheck", "sanitize-synccheck", "sanitize-initcheck", "sanitize-pytest", "bench",
         "gemm-choice"]


def _dry_run(**env):
    return subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, GPU_CHECK_DRY_RUN="1", GPU_CHECK_LOG="/tmp/int8kern-gpu-check-dry", **env),
                          timeout=120)


def test_dry_run_plans_every_step_within_budget():
    out = _dry_run()
    assert out.returncode == 0, out.stdout + out.stderr
    for step in STEPS:
        assert f"[dry] {step} (" in out.stdout, step
    assert "--small" in out.stdout and "INT8KERN_CUDA_GEMM=wgmma" in out.stdout


def test_dry_run_refuses_a_budget_its_timeouts_exceed():
    out = _dry_run(GPU_CHECK_BUDGET_S="100")
    assert out.returncode == 1 and "exceed the budget" in out.stdout
