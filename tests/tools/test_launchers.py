"""Issue 15, item 8: the torchrun and SLURM launchers in tools/cluster/, rendered with stand-in
environment variables. The cluster's own programs (torchrun, srun, scontrol, nvidia-smi, ray's
python, prepare-shards) are shims first on PATH that record their command line; the launcher
scripts themselves run for real under bash, and no torch starts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CLUSTER = Path(__file__).resolve().parents[2] / "tools" / "cluster"
SCRIPTS = sorted([*CLUSTER.glob("*.sh"), *CLUSTER.glob("*.sbatch")])
SBATCHES = [p for p in SCRIPTS if p.suffix == ".sbatch"]
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")

# each shim appends one line to $SHIM_LOG: its name and its arguments, tab-separated; srun also
# records SRUN_CPUS_PER_TASK, and runs its command (after its own options) when SRUN_RUNS is set.
# A line is one write, so shims running at once (the sbatch's background steps) cannot interleave.
RECORD = 'line=$(basename "$0"); for a in "$@"; do line+=$\'\\t\'"$a"; done; printf "%s\\n" "$line" >> "$SHIM_LOG"\n'
SHIMS = {
    "torchrun": RECORD,
    "prepare-shards": RECORD,
    "sleep": RECORD,
    "nvidia-smi": RECORD + 'for i in $(seq 0 $((${FAKE_GPUS:-0} - 1))); do echo "GPU $i: Fake GPU (UUID: GPU-$i)"; done\n',
    "scontrol": RECORD + 'printf "%s\\n" $FAKE_NODES\n',
    # `python - ADDRESS NODES TIMEOUT` is the sbatch's wait for every node's Ray to join: like the real
    # one, it returns only once each node's srun step has started (an ENV line per srun: the head's
    # address, then one `ray start` per node), so the EXIT trap cannot kill them before they record
    "python": RECORD + """cat > /dev/null
if [[ "${1:-}" == "-" ]]; then
    for _ in $(seq 400); do
        [[ $(grep -c '^ENV' "$SHIM_LOG") -gt "$3" ]] && break
        "$REAL_SLEEP" 0.05
    done
fi
echo 0123abcd
""",
    "srun": RECORD + """printf "ENV\\tSRUN_CPUS_PER_TASK=%s\\n" "${SRUN_CPUS_PER_TASK:-}" >> "$SHIM_LOG"
if [[ -n "${SRUN_RUNS:-}" ]]; then
    while [[ "$1" == -* ]]; do shift; done
    exec "$@"
fi
echo 10.0.0.1
""",
}


@pytest.fixture()
def shims(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in SHIMS.items():
        p = bin_dir / name
        p.write_text("#!/bin/bash\n" + body)
        p.chmod(0o755)
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "activate").write_text("")  # the sbatches source $VENV/bin/activate
    return tmp_path


def _run(script: str, shims: Path, env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    log = shims / "calls.log"
    log.write_text("")
    base = {"PATH": f"{shims / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(shims),
            "SHIM_LOG": str(log), "VENV": str(shims / "venv"), "REAL_SLEEP": shutil.which("sleep") or "/bin/sleep"}
    r = subprocess.run([BASH, str(CLUSTER / script), *args], env={**base, **env}, capture_output=True, text=True,
                       timeout=60, cwd=shims, stdin=subprocess.DEVNULL)
    return r, [ln.split("\t") for ln in log.read_text().splitlines()]


def _calls(calls: list[list[str]], name: str) -> list[list[str]]:
    return [c[1:] for c in calls if c[0] == name]


def _after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


TORCHRUN_ENV = {"HEAD": "gpu-0", "NNODES": "2", "GPUS": "4"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_parses(script):
    r = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", SBATCHES, ids=lambda p: p.name)
def test_sbatch_headers_parse(script):
    """Slurm reads #SBATCH lines only before the first command; each one is a long option with a value."""
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/bin/bash"
    first_command = next(i for i, ln in enumerate(lines) if i and ln.strip() and not ln.startswith("#"))
    headers: dict[str, str | None] = {}
    for ln in lines[1:first_command]:
        if ln.startswith("#SBATCH"):
            m = re.fullmatch(r"#SBATCH --([a-z-]+)(?:=(\S+))?(?:\s+#.*)?", ln)
            assert m, f"{script.name}: cannot parse {ln!r}"
            headers[m[1]] = m[2]
    assert not any("#SBATCH" in ln for ln in lines[first_command:]), f"{script.name}: #SBATCH after a command (ignored)"
    assert int(headers["nodes"]) >= 1 and int(headers["cpus-per-task"]) >= 1
    assert headers["ntasks-per-node"] == "1" and headers["requeue"] is None and headers["output"] == "%x-%j.out"
    if "train" in script.name:
        assert int(headers["gpus-per-node"]) >= 1


def test_torchrun_expert_passes_the_global_batch_and_the_rendezvous(shims):
    r, calls = _run("torchrun-train-expert.sh", shims, {**TORCHRUN_ENV, "GLOBAL_BATCH": "640", "PORT": "29511"},
                    "--shards", "/s", "--variant", "j2k-r200", "--out", str(shims / "run"))
    assert r.returncode == 0, r.stderr
    (argv,) = _calls(calls, "torchrun")
    assert {"--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d", "--rdzv-endpoint=gpu-0:29511",
            "--rdzv-id=lv-expert", "--max-restarts=0"} <= set(argv)
    cmd = argv[argv.index("-m"):]
    assert cmd[:3] == ["-m", "lossyvision.cli", "train-expert"]
    assert _after(cmd, "--preset") == "marie2022-mnasnet-expert" and _after(cmd, "--global-batch") == "640"
    assert not {"-b", "--batch-size", "--resume", "--kl-reduction", "--alpha"} & set(cmd)  # no batch arithmetic left
    assert cmd[-6:] == ["--shards", "/s", "--variant", "j2k-r200", "--out", str(shims / "run")]


def test_torchrun_expert_without_global_batch_leaves_the_preset_batch_global(shims):
    r, calls = _run("torchrun-train-expert.sh", shims, {**TORCHRUN_ENV, "PRESET": "marie2022-resnet50-expert"},
                    "--out", str(shims / "run"))
    assert r.returncode == 0, r.stderr
    (argv,) = _calls(calls, "torchrun")
    assert _after(argv, "--preset") == "marie2022-resnet50-expert"
    assert not {"--global-batch", "-b", "--batch-size"} & set(argv)  # train-expert takes the preset's 384 as global


@pytest.mark.parametrize("given", [["-b", "16"], ["-b16"], ["--batch-size=16"], ["--global-batch", "96"]])
def test_a_batch_after_the_script_replaces_global_batch(shims, given):
    r, calls = _run("torchrun-train-segmentation.sh", shims, {**TORCHRUN_ENV, "GLOBAL_BATCH": "8"}, *given)
    assert r.returncode == 0, r.stderr
    (argv,) = _calls(calls, "torchrun")
    assert argv.count("--global-batch") == given.count("--global-batch") and argv[-len(given):] == given


def test_torchrun_segmentation_resumes_and_counts_gpus_from_nvidia_smi(shims):
    run = shims / "seg"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_text("")
    env = {"HEAD": "gpu-0", "NNODES": "1", "GLOBAL_BATCH": "8", "FAKE_GPUS": "8"}
    r, calls = _run("torchrun-train-segmentation.sh", shims, env, f"--out={run}")
    assert r.returncode == 0, r.stderr
    (argv,) = _calls(calls, "torchrun")
    assert {"--nnodes=1", "--nproc-per-node=8", "--rdzv-id=lv-seg"} <= set(argv)
    cmd = argv[argv.index("-m"):]
    assert cmd[2] == "train-segmentation" and "--resume" in cmd and _after(cmd, "--global-batch") == "8"


def test_torchrun_launcher_refuses_without_gpus_or_head(shims):
    r, calls = _run("torchrun-train-segmentation.sh", shims, {"HEAD": "gpu-0", "NNODES": "1", "FAKE_GPUS": "0"})
    assert r.returncode == 2 and "set GPUS=N" in r.stderr and not _calls(calls, "torchrun")
    r, calls = _run("torchrun-train-expert.sh", shims, {"NNODES": "1", "GPUS": "1"})
    assert r.returncode != 0 and "HEAD" in r.stderr and not _calls(calls, "torchrun")


SLURM_ENV = {"SLURM_JOB_NODELIST": "gpu-[0-1]", "FAKE_NODES": "gpu-0 gpu-1", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_GPUS_ON_NODE": "4", "SLURM_JOB_ID": "4242", "SLURM_CPUS_PER_TASK": "32", "SRUN_RUNS": "1"}


@pytest.mark.parametrize("script,command,checkpoint", [("slurm-train-expert.sbatch", "train-expert", "last.pt"),
                                                       ("slurm-train-segmentation.sbatch", "train-segmentation",
                                                        "checkpoints/last.pt")])
def test_slurm_training_gives_srun_the_cpus_and_torchrun_the_nodes(shims, script, command, checkpoint):
    env = {**SLURM_ENV, "SLURM_SUBMIT_DIR": str(CLUSTER.parents[1]), "GLOBAL_BATCH": "16"}
    r, calls = _run(script, shims, env, "--shards", "/s", "--out", str(shims / "run"))
    assert r.returncode == 0, r.stderr
    (srun,) = _calls(calls, "srun")
    assert "--cpus-per-task=32" in srun and "--kill-on-bad-exit=1" in srun
    assert ["SRUN_CPUS_PER_TASK=32"] in _calls(calls, "ENV")
    (argv,) = _calls(calls, "torchrun")
    assert {"--nnodes=2", "--nproc-per-node=4", "--rdzv-endpoint=gpu-0:29500", "--rdzv-id=4242"} <= set(argv)
    cmd = argv[argv.index("-m"):]
    assert cmd[2] == command and _after(cmd, "--global-batch") == "16"
    assert _after(cmd, "--workers") == "8"  # 32 CPUs / 4 GPU processes
    assert "--resume" not in cmd and not {"-b", "--batch-size"} & set(cmd)
    if command == "train-expert":
        assert _after(cmd, "--preset") == "marie2022-mnasnet-expert"
    # a requeue (the same script again) after a checkpoint was written resumes
    (shims / "run" / checkpoint).parent.mkdir(parents=True, exist_ok=True)
    (shims / "run" / checkpoint).write_text("")
    r, calls = _run(script, shims, {**env, "SLURM_RESTART_COUNT": "1"}, "--shards", "/s", "--out", str(shims / "run"))
    assert r.returncode == 0 and "--resume" in _calls(calls, "torchrun")[0], r.stderr


def test_slurm_prepare_shards_names_the_cpus_of_every_step(shims):
    env = {**SLURM_ENV, "SRUN_RUNS": "", "SLURM_CPUS_PER_TASK": "64", "OUT": str(shims / "shards")}
    r, calls = _run("slurm-prepare-shards.sbatch", shims, env, "--shard-size", "50")
    assert r.returncode == 0, r.stderr
    sruns = _calls(calls, "srun")
    assert len(sruns) == 3  # the head's address, the Ray head, one Ray worker
    assert all("--cpus-per-task=64" in s for s in sruns), sruns
    assert all(e == ["SRUN_CPUS_PER_TASK=64"] for e in _calls(calls, "ENV"))
    # both `ray start` steps run in the background, so they may record in either order
    (head,) = [s for s in sruns if "ray" in s and "--head" in s]
    (worker,) = [s for s in sruns if "ray" in s and "--head" not in s]
    assert _after(head, "-w") == "gpu-0" and _after(worker, "-w") == "gpu-1"
    assert "--address=10.0.0.1:6379" in worker and "--num-cpus=64" in head
    (job,) = _calls(calls, "prepare-shards")
    assert _after(job, "--address") == "10.0.0.1:6379" and job[-2:] == ["--shard-size", "50"]
