"""The CPU kernels' thread budget (affinity, cgroup quota, INT8KERN_NUM_THREADS) and their
parallel regions per call (issue 21; csrc/cpu/parallel.h)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import int8kern

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
budget_from = torch.ops.int8kern._cpu_budget_from
regions = torch.ops.int8kern._cpu_parallel_regions


def fake_root(tmp_path, mountinfo, cgroup, files):
    """A directory laid out like / for the budget: proc/self/{mountinfo,cgroup} and files."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text("\n".join(mountinfo) + "\n")
    (tmp_path / "proc/self/cgroup").write_text("\n".join(cgroup) + "\n")
    for path, text in files.items():
        p = tmp_path / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n")
    return str(tmp_path)


V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate"
V1_MOUNT = "25 20 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct"


@pytest.mark.parametrize("cpu_max, quota, threads", [
    ("150000 100000", 1.5, 1),   # a fractional quota rounds down
    ("250000 100000", 2.5, 2),
    ("max 100000", 0.0, 8),      # unlimited: the affinity decides
    ("50000 100000", 0.5, 1),    # below one CPU: still one thread
])
def test_cgroup_v2_quota(tmp_path, cpu_max, quota, threads):
    root = fake_root(tmp_path, [V2_MOUNT], ["0::/user.slice/job"],
                     {"sys/fs/cgroup/user.slice/job/cpu.max": cpu_max})
    got = budget_from(root, None, 8)
    assert got[0] == threads and got[1] == pytest.approx(quota) and got[2] == 8 and got[3] == 0


def test_cgroup_v2_parent_quota_caps_the_child(tmp_path):
    root = fake_root(tmp_path, [V2_MOUNT], ["0::/user.slice/job"],
                     {"sys/fs/cgroup/user.slice/job/cpu.max": "max 100000",
                      "sys/fs/cgroup/user.slice/cpu.max": "300000 100000"})
    assert budget_from(root, None, 8)[:2] == (3, pytest.approx(3.0))


def test_cgroup_v2_in_a_namespace(tmp_path):
    # Inside a container's cgroup namespace the process sees its own cgroup as "/", at the mount point.
    root = fake_root(tmp_path, [V2_MOUNT], ["0::/"], {"sys/fs/cgroup/cpu.max": "200000 100000"})
    assert budget_from(root, None, 16)[:2] == (2, pytest.approx(2.0))


def test_affinity_below_the_quota(tmp_path):
    root = fake_root(tmp_path, [V2_MOUNT], ["0::/job"], {"sys/fs/cgroup/job/cpu.max": "400000 100000"})
    assert budget_from(root, None, 2)[0] == 2


@pytest.mark.parametrize("quota_us, threads", [("200000", 2), ("-1", 4)])
def test_cgroup_v1_quota(tmp_path, quota_us, threads):
    d = "sys/fs/cgroup/cpu,cpuacct/docker/abc"
    root = fake_root(tmp_path, [V1_MOUNT], ["4:memory:/docker/abc", "3:cpu,cpuacct:/docker/abc"],
                     {f"{d}/cpu.cfs_quota_us": quota_us, f"{d}/cpu.cfs_period_us": "100000"})
    assert budget_from(root, None, 4)[0] == threads


def test_cgroup_v1_mount_of_a_subtree(tmp_path):
    # A container mounts only its own subtree (mountinfo root /docker/abc): the files are at the mount point.
    mount = V1_MOUNT.replace(" / /sys", " /docker/abc /sys")
    root = fake_root(tmp_path, [mount], ["3:cpu,cpuacct:/docker/abc"],
                     {"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "100000",
                      "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert budget_from(root, None, 4)[0] == 1


def test_no_cgroup_files(tmp_path):
    assert budget_from(str(tmp_path), None, 3) == (3, 0.0, 3, 0)


def test_override(tmp_path):
    root = fake_root(tmp_path, [V2_MOUNT], ["0::/job"], {"sys/fs/cgroup/job/cpu.max": "100000 100000"})
    assert budget_from(root, "3", 2)[0] == 3 and budget_from(root, "3", 2)[3] == 3


@pytest.mark.parametrize("bad", ["0", "-2", "two", "2x", "", "99999"])
def test_bad_override_names_the_variable(tmp_path, bad):
    with pytest.raises(RuntimeError, match="INT8KERN_NUM_THREADS must be a whole number of threads"):
        budget_from(str(tmp_path), bad, 2)


def run_python(code, **env_changes):
    """stdout of `code` in a fresh interpreter; env_changes set (str) or remove (None) variables."""
    env = dict(os.environ)
    for k, v in env_changes.items():
        env.pop(k, None) if v is None else env.__setitem__(k, v)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


BUDGET = "import torch, int8kern\nprint(torch.ops.int8kern._cpu_budget()[0], torch.ops.int8kern._cpu_threads())\n"


def test_process_budget_takes_the_override():
    assert run_python(BUDGET, INT8KERN_NUM_THREADS="1").split() == ["1", "1"]


def test_process_budget_takes_the_affinity():
    pin = "import os\nos.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
    assert run_python(pin + BUDGET, INT8KERN_NUM_THREADS=None).split() == ["1", "1"]


def test_bad_override_in_the_process_is_a_clear_error():
    code = "import torch, int8kern\ntorch.ops.int8kern._cpu_threads()\n"
    env = dict(os.environ, INT8KERN_NUM_THREADS="lots",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "INT8KERN_NUM_THREADS must be a whole number of threads" in out.stderr
    assert "'lots'" in out.stderr


@pytest.mark.parametrize("variable, value, message", [
    ("INT8KERN_CPU_POLL_US", v, "INT8KERN_CPU_POLL_US must be a whole number of microseconds") for v in ("soon", "-1", "2000000")
] + [("INT8KERN_CPU_PREFETCH_KB", v, "INT8KERN_CPU_PREFETCH_KB must be a whole number of KiB") for v in ("lots", "-1")])
def test_bad_helper_setting_is_a_clear_error(variable, value, message):
    """INT8KERN_CPU_POLL_US (how long an idle helper polls for the next call) and
    INT8KERN_CPU_PREFETCH_KB (how far it prefetches) are read on the calling thread when work
    is first offered or too small for a sleeping helper, and a bad value is an error there,
    not a crash in a helper thread."""
    code = ("import torch, int8kern\nfrom int8kern import ops\n"
            "ops.int8_matmul(torch.ones(64, 4096, dtype=torch.int8), torch.ones(512, 4096, dtype=torch.int8))\n")
    env = dict(os.environ, INT8KERN_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    env[variable] = value
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]
    assert f"'{value}'" in out.stderr


@pytest.mark.parametrize("poll_us", ["0", "200"])
def test_poll_window_keeps_results(poll_us):
    """Helpers that sleep at once (0) or poll (the default): the same bits as one thread, for
    layers above and below the work that only a polling helper shares."""
    code = ("import torch, int8kern\ng = torch.Generator().manual_seed(0)\nok = True\n"
            "for K, N in ((576, 192), (576, 1536), (4096, 4096)):\n"
            "    lin = int8kern.Int8LinearLt.from_linear(torch.nn.Linear(K, N), threshold=6.0)\n"
            "    x = torch.randn(3, K, generator=g); x[:, 5] = 9.0\n"
            "    with torch.inference_mode():\n"
            "        many = [lin(x) for _ in range(20)]\n"
            "        torch.set_num_threads(1); one = lin(x); torch.set_num_threads(2)\n"
            "    ok &= all(torch.equal(m, one) for m in many)\n"
            "print('OK' if ok else 'DIFFER', torch.ops.int8kern._cpu_parallel_regions() > 0)\n")
    env = dict(os.environ, INT8KERN_CPU_POLL_US=poll_us,
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    env.pop("INT8KERN_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == "OK", out.stdout
    if len(os.sched_getaffinity(0)) > 1:
        assert out.stdout.split()[1] == "True", out.stdout  # some call did run on two threads


def test_override_wins_over_torch_threads():
    code = "import torch, int8kern\ntorch.set_num_threads(1)\nprint(torch.ops.int8kern._cpu_threads())\n"
    assert run_python(code, INT8KERN_NUM_THREADS="2").split() == ["2"]


@pytest.mark.skipif("INT8KERN_NUM_THREADS" in os.environ, reason="the override replaces torch's count")
def test_threads_follow_torch():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.ops.int8kern._cpu_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert torch.ops.int8kern._cpu_threads() == min(before, torch.ops.int8kern._cpu_budget()[0])


def test_set_num_threads_apart_from_torch():
    """int8kern.set_num_threads(n) wins over torch's count and INT8KERN_NUM_THREADS until
    set_num_threads(0); torch's own count is untouched."""
    before_torch, before = torch.get_num_threads(), int8kern.get_num_threads()
    try:
        torch.set_num_threads(1)
        int8kern.set_num_threads(3)
        assert int8kern.get_num_threads() == 3 and torch.get_num_threads() == 1
        layer, x = linear(4096, 4096, 6.0)
        with torch.inference_mode():
            want = layer(x)
            int8kern.set_num_threads(1)
            assert torch.equal(layer(x), want)
    finally:
        int8kern.set_num_threads(0)
        torch.set_num_threads(before_torch)
    assert int8kern.get_num_threads() == before


@pytest.mark.parametrize("bad", [-1, 4097])
def test_set_num_threads_bad_value(bad):
    with pytest.raises(RuntimeError, match=r"int8kern.set_num_threads: n must be 0 \(back to the default\) or a "
                       rf"whole number of threads from 1 to 4096, got {bad}"):
        int8kern.set_num_threads(bad)


def linear(K, N, threshold, M=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(K, N)
    x = torch.randn(M, K, generator=g)
    x[:, : max(1, K // 200)] = 30.0  # outlier columns
    return int8kern.Int8LinearLt.from_linear(lin, threshold=threshold), x


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_decode_call_opens_at_most_one_region(threshold):
    layer, x = linear(4096, 4096, threshold)
    with torch.inference_mode():
        layer(x)
        before = regions()
        layer(x)
        assert regions() - before <= 1


def test_reset_backoff_takes_the_helpers_again():
    """After a stall int8kern's kernels run on the calling thread for 10 ms to 1 s (parallel.h);
    _cpu_reset_parallel_backoff ends that at once (benchmarks call it between setups). A stall
    cannot be made to order here, so this checks what the reset promises whatever came before:
    the next large call offers work to a helper, and the stall counter is kept."""
    if torch.ops.int8kern._cpu_budget()[0] < 2:
        pytest.skip("one CPU: every call runs on the calling thread")
    layer, x = linear(4096, 4096, 6.0)
    before_threads = torch.get_num_threads()
    try:
        int8kern.set_num_threads(2)
        with torch.inference_mode():
            for _ in range(3):
                stalls = torch.ops.int8kern._cpu_parallel_stalls()
                torch.ops.int8kern._cpu_reset_parallel_backoff()
                assert torch.ops.int8kern._cpu_parallel_stalls() == stalls
                before = regions()
                layer(x)
                assert regions() == before + 1
    finally:
        int8kern.set_num_threads(0)
        torch.set_num_threads(before_threads)


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_small_work_stays_on_one_thread(threshold):
    layer, x = linear(256, 256, threshold, M=4)
    with torch.inference_mode():
        before = regions()
        layer(x)
        int8kern.quantize_rowwise(x, threshold)
        assert regions() == before


@pytest.mark.skipif("INT8KERN_NUM_THREADS" in os.environ, reason="the override replaces torch's count")
def test_one_thread_opens_no_region():
    layer, x = linear(4096, 4096, 6.0, M=64)
    before_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        before = regions()
        with torch.inference_mode():
            layer(x)
        assert regions() == before
    finally:
        torch.set_num_threads(before_threads)


@pytest.mark.parametrize("M", [1, 200, 300])  # one block of rows, several, the oneDNN path
def test_results_do_not_depend_on_threads(M):
    layer, x = linear(1024, 1000, 6.0, M=M)
    before_threads = torch.get_num_threads()
    try:
        with torch.inference_mode():
            torch.set_num_threads(1)
            one = layer(x)
            torch.set_num_threads(max(2, before_threads))
            many = layer(x)
    finally:
        torch.set_num_threads(before_threads)
    assert torch.equal(one, many)


def test_bench_shared_cpu_dry_run(tmp_path):
    out = tmp_path / "shared.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks/bench_shared_cpu.py"), "--dry-run",
                        "--json", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    conditions = {c["condition"] for c in data["checks"]}
    assert conditions == ({"idle", "neighbour"} if len(os.sched_getaffinity(0)) > 1 else {"idle"})
    assert data["env"]["isa"] and data["env"]["cpu"]
    assert {c["row"] for c in data["checks"]} == {f"Int8LinearLt th {t}, M = {M}" for t in (6, 0) for M in (1, 16)}


# The helper's prefetch of the weight expected next (parallel.h, prefetch_after_stream): a
# decode step's GEMVs, repeated as tokens are, teach it the order; it must then prefetch, and
# results must not change with it on or off.
PREFETCH = """
import torch, int8kern
g = torch.Generator().manual_seed(0)
layers = [int8kern.Int8LinearLt.from_linear(torch.nn.Linear(K, N), threshold=6.0)
          for K, N in ((576, 576), (576, 1536), (1536, 576), (576, 192))]
x = {K: torch.randn(1, K, generator=g) * 3 for K in (576, 1536)}  # some |x| >= 6: outliers too
def step():
    return [layer(x[layer.in_features]) for layer in layers]
prefetched = torch.ops.int8kern._cpu_prefetched_bytes
with torch.inference_mode():
    torch.ops.int8kern._set_cpu_prefetch_bytes(0)
    for _ in range(30): off = step()
    before = prefetched()
    for _ in range(30): off = step()
    idle = prefetched() - before
    torch.ops.int8kern._set_cpu_prefetch_bytes(1 << 20)
    before = prefetched()
    for _ in range(30):
        # A stall (the host took the helper's core) would put the next 10 ms, this whole loop,
        # on one thread, which plans no prefetch: what is tested here is the plan.
        torch.ops.int8kern._cpu_reset_parallel_backoff()
        on = step()
    busy = prefetched() - before
    int8kern.set_num_threads(1)
    before = prefetched()
    for _ in range(30): one = step()
    after_one = prefetched() - before
print(all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(on, off, one)), idle, busy, after_one)
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="prefetching needs a helper thread")
def test_prefetch_learns_the_order_and_keeps_results():
    same, idle, busy, after_one = map(eval, run_python(PREFETCH, INT8KERN_NUM_THREADS="2").split())
    assert same
    assert idle == 0  # budget 0: nothing prefetched
    # 30 steps of 4 layers; each GEMV's follower (>= 110 KiB) is known after the first step.
    # A helper the OS never scheduled would prefetch nothing: demand a quarter of the plan.
    assert busy >= 29 * 4 * (192 * 576) // 4, busy
    # One thread: no new plans; the helper may finish the one it had (the 1 MiB budget).
    assert after_one <= 1 << 20, after_one


@pytest.mark.skipif("INT8KERN_NUM_THREADS" in os.environ, reason="the override replaces torch's count")
def test_large_gemm_on_torchs_team_only_when_torch_has_the_threads():
    """A prefill-sized GEMM on int8kern's own tiles (M = 100: below oneDNN's sizes) runs on
    torch's OpenMP team when torch's ops use as many threads as int8kern's kernels (their
    workers spin after each of torch's ops; parallel.h, parallel_chunks_large), and on int8kern's
    helpers when torch runs on one thread; the results are the same either way."""
    if torch.ops.int8kern._cpu_budget()[0] < 2:
        pytest.skip("one CPU: every call runs on the calling thread")
    team_regions = torch.ops.int8kern._cpu_openmp_team_regions
    layer, x = linear(4096, 1024, 6.0, M=100)
    before_threads = torch.get_num_threads()
    try:
        with torch.inference_mode():
            torch.set_num_threads(2)
            torch.ops.int8kern._cpu_reset_parallel_backoff()  # no backoff left by an earlier stall
            before = team_regions()
            team = layer(x)
            assert team_regions() == before + 1  # one region for the whole product
            torch.set_num_threads(1)
            int8kern.set_num_threads(2)
            before = team_regions()
            helpers = layer(x)
            assert team_regions() == before
    finally:
        int8kern.set_num_threads(0)
        torch.set_num_threads(before_threads)
    assert torch.equal(team, helpers)
