"""A parallel launch that goes wrong ends with one clear message and an exit status, never a traceback or a hang.

Processes are started as torchrun starts them, with RANK, WORLD_SIZE, MASTER_ADDR, ... in the environment,
or by torchrun itself (Gloo on the CPU). Where a run folder is involved, its files' hashes are compared before
and after.
"""

import contextlib
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from ddpm_core.training import distributed
from ddpm_core.training.run_folder import RunFolder
from ddpm_core.utils.errors import DDPMError
from tests.helpers import DDPM, REPO, TINY_FLAGS, child_env, folder_hashes, needs_mnist, run_cli, wait_for

LAUNCH = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
          "DDPM_RENDEZVOUS_TIMEOUT")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(**variables: str) -> dict[str, str]:
    """The test's environment without any launch variables of its own, plus ``variables``."""
    env = {k: v for k, v in child_env().items() if k not in LAUNCH and not k.startswith("TORCHELASTIC_")}
    return {**env, **variables}


def torchrun(*options: str) -> list[str]:
    return [*TORCHRUN, "--master-port", str(free_port()), "-m", "ddpm_core", "train", *options]


def assert_no_traceback_of_ours(output: str) -> None:
    """torchrun prints its own traceback with its report; no frame of this package may appear."""
    ours = [line for line in output.splitlines()
            if line.strip().startswith('File "') and f"{os.sep}ddpm_core{os.sep}" in line]
    assert not ours, output
    assert "Traceback" not in output or "ChildFailedError" in output, output


def worker_pid(agent: int, rank: int) -> int | None:
    """The process id of the worker of ``rank`` that torchrun's agent ``agent`` started, or None (yet)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == agent and f"RANK={rank}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                return int(entry.name)
        except (OSError, IndexError, ValueError):
            continue
    return None


# 1. The launch variables are checked, all of them, before anything is read or written ------------------------


@pytest.mark.parametrize("variables, words", [
    ({"RANK": "abc"}, ["RANK='abc' is not a whole number", "torchrun", "env -u RANK"]),
    ({"WORLD_SIZE": "two", "RANK": "0"}, ["WORLD_SIZE='two' is not a whole number"]),
    ({"WORLD_SIZE": "0"}, ["WORLD_SIZE=0 must be 1 or more"]),
    ({"RANK": "1"}, ["RANK=1 is set but WORLD_SIZE", "is not"]),
    ({"WORLD_SIZE": "2"}, ["WORLD_SIZE=2 is set but RANK", "0 to 1"]),
    ({"RANK": "2", "WORLD_SIZE": "2"}, ["RANK=2 does not lie in 0..1"]),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, ["RANK=-1 must be 0 or more"]),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, ["LOCAL_RANK=2 does not lie"]),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "4"}, ["LOCAL_WORLD_SIZE=4", "exceeds WORLD_SIZE=2"]),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "x"}, ["LOCAL_RANK='x' is not a whole number"]),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "70000"},
     ["MASTER_PORT='70000' is not a port number", "1 to 65535"]),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
      "DDPM_RENDEZVOUS_TIMEOUT": "-3"}, ["DDPM_RENDEZVOUS_TIMEOUT='-3'", "from 1 to 604,800"]),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
      "DDPM_RENDEZVOUS_TIMEOUT": "1e15"}, ["DDPM_RENDEZVOUS_TIMEOUT='1e15'", "from 1 to 604,800 (a week"]),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
      "DDPM_RENDEZVOUS_TIMEOUT": "1e-300"}, ["DDPM_RENDEZVOUS_TIMEOUT='1e-300'", "from 1 to 604,800"]),
    ({"RANK": "0", "WORLD_SIZE": "1" + "0" * 30}, ["WORLD_SIZE=1000", "more than the 4,096 processes a run may have"]),
    ({"RANK": "0", "WORLD_SIZE": "9" * 5000}, ["WORLD_SIZE='9999", "... is not a whole number"]),
    ({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "node..cluster", "MASTER_PORT": "29500"},
     ["MASTER_ADDR='node..cluster' is no host name or IP address", "127.0.0.1"]),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "n" * 64 + ".cluster", "MASTER_PORT": "29500"},
     ["is no host name or IP address", "1 to 63"]),
    ({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "x" * 300, "MASTER_PORT": "29500"},
     ["MASTER_ADDR='xxxxx", "...", "253 characters at most"]),
])
def test_unusable_launch_variables_are_refused_before_the_run_folder_is_touched(variables, words, tmp_path,
                                                                                monkeypatch, capsys):
    for name in LAUNCH:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DDPMError) as refused:
        distributed.ranks_from_env()
    for word in words:
        assert word in str(refused.value)
    out = tmp_path / "run"
    code, output = run_cli(["train", "--out", str(out), *TINY_FLAGS], capsys)
    assert code == 2 and "Traceback" not in output and output.startswith("error: "), output
    assert all(word in output for word in words), output
    assert not out.exists()  # no lock, no folder: refused up front


@pytest.mark.slow
def test_a_malformed_rank_ends_a_real_process_with_one_paragraph_and_status_2(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([*DDPM, "train", "--out", str(out), *TINY_FLAGS], cwd=REPO, env=launch_env(RANK="abc"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("error: ") == 1, done.stderr
    assert "RANK='abc' is not a whole number" in done.stderr and "torchrun" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "localhost", "node-1.cluster.", "gpu_07"])
def test_host_names_and_addresses_pass_and_a_week_is_the_longest_rendezvous_timeout(address, monkeypatch):
    for name in LAUNCH:
        monkeypatch.delenv(name, raising=False)
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": address, "MASTER_PORT": "29500",
                        "DDPM_RENDEZVOUS_TIMEOUT": "604800"}.items():
        monkeypatch.setenv(name, value)
    ranks = distributed.ranks_from_env()
    assert ranks.rendezvous() == (address, 29500) and ranks.rendezvous_timeout == 604800


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_master_address_the_resolver_refuses_ends_a_process_with_one_line_and_the_advice_gets_further(tmp_path):
    out = tmp_path / "run"
    argv = [*DDPM, "train", "--out", str(out), *TINY_FLAGS]
    variables = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": str(free_port()), "DDPM_RENDEZVOUS_TIMEOUT": "1"}
    done = subprocess.run(argv, cwd=REPO, env=launch_env(**variables, MASTER_ADDR="a" * 70 + ".cluster"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "is no host name or IP address" in done.stderr and "127.0.0.1" in done.stderr
    assert not out.exists()
    # Its advice, followed: with MASTER_ADDR=127.0.0.1 the process goes on to wait for process 0.
    done = subprocess.run(argv, cwd=REPO, env=launch_env(**variables, MASTER_ADDR="127.0.0.1"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "waited 1 s for process 0 to open the rendezvous at 127.0.0.1:" in done.stderr, done.stderr


def test_a_plain_process_and_torchrun_ranks_are_read_as_such(monkeypatch):
    for name in LAUNCH:
        monkeypatch.delenv(name, raising=False)
    assert distributed.ranks_from_env() == distributed.Ranks()
    assert distributed.ranks_from_env().main and not distributed.ranks_from_env().distributed
    monkeypatch.setenv("RANK", " ")  # blank, as `RANK= command` leaves it: unset
    assert distributed.ranks_from_env().rank == 0
    for name, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                        "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "DDPM_RENDEZVOUS_TIMEOUT": "2.5",
                        "TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_USE_AGENT_STORE": "True",
                        "TORCHELASTIC_RESTART_COUNT": "1"}.items():
        monkeypatch.setenv(name, value)
    ranks = distributed.ranks_from_env()
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.local_world_size) == (3, 4, 1, 2)
    assert ranks.rendezvous() == ("10.0.0.1", 29500) and ranks.rendezvous_timeout == 2.5
    assert ranks.torchrun and ranks.agent_store and ranks.attempt == 1 and not ranks.main


# 2. A parallel run needs the address where its processes meet ------------------------------------------------


@pytest.mark.slow
def test_a_parallel_process_without_master_address_says_what_is_missing_and_how_torchrun_sets_it(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([*DDPM, "train", "--out", str(out), *TINY_FLAGS], cwd=REPO,
                          env=launch_env(RANK="1", WORLD_SIZE="2"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    for word in ("MASTER_ADDR and MASTER_PORT are not set", "torchrun --nproc-per-node 2 -m ddpm_core train",
                 "1 to 65535"):
        assert word in done.stderr, done.stderr
    assert not out.exists()


# 3. A process whose peers never come stops after DDPM_RENDEZVOUS_TIMEOUT, saying who is missing --------------


@pytest.mark.slow
@pytest.mark.parametrize("rank, words", [
    ("0", ["waiting up to", "for the other process to join at 127.0.0.1:", "Only 1 of the 2 processes joined",
           "missing: RANK 1", "RANK=1", "DDPM_RENDEZVOUS_TIMEOUT"]),
    ("1", ["waiting up to", "for process 0 to open the rendezvous", "Start process 0 (RANK=0)",
           "DDPM_RENDEZVOUS_TIMEOUT"]),
])
def test_a_process_whose_peers_never_join_stops_after_the_rendezvous_timeout(rank, words, run_copy):
    timeout = round(random.uniform(1.5, 3.0), 1)
    before = folder_hashes(run_copy)
    env = launch_env(RANK=rank, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                     DDPM_RENDEZVOUS_TIMEOUT=str(timeout))
    started = time.monotonic()
    done = subprocess.run([*DDPM, "train", "--out", str(run_copy), "--resume", *TINY_FLAGS], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert f"{timeout:g} s" in done.stderr
    for word in words:
        assert word in done.stderr, done.stderr
    assert done.stderr.count("waiting up to") == 1 and done.stderr.count("error: ") == 1, done.stderr
    assert time.monotonic() - started < timeout + 60  # it gave up, rather than waiting for the collectives' 10 min
    assert folder_hashes(run_copy) == before


def start_by_hand(out: Path, port: int, ranks: tuple[str, ...], world_size: int = 2,
                  **variables: str) -> list[subprocess.Popen]:
    """Processes of a run started by hand, as the rendezvous messages tell a person to."""
    env = launch_env(WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **variables)
    flags = list(TINY_FLAGS)
    flags[flags.index("--batch-size") + 1] = str(32 * world_size)  # a batch that every world size here splits
    argv = [*DDPM, "train", "--out", str(out), "--epochs", "1", "--subset", "192", *flags]
    return [subprocess.Popen(argv, cwd=REPO, env={**env, "RANK": rank}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for rank in ranks]


def finish(processes: list[subprocess.Popen]) -> list[tuple[int, str]]:
    try:
        return [(p.wait(timeout=300), p.communicate()[1]) for p in processes]
    finally:
        for p in processes:
            p.kill()


@pytest.mark.slow
@needs_mnist
@pytest.mark.timeout(600)
@pytest.mark.parametrize("alone, advice", [
    ("1", "Start process 0 (RANK=0) with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE=2"),
    ("0", "missing: RANK 1"),
])
def test_the_advice_to_start_the_missing_process_with_the_same_settings_trains(alone, advice, tmp_path):
    out, port = tmp_path / "run", free_port()
    ((code, stderr),) = finish(start_by_hand(out, port, (alone,), DDPM_RENDEZVOUS_TIMEOUT="2"))
    assert code == 2 and advice in stderr, stderr
    done = finish(start_by_hand(out, free_port(), ("0", "1")))  # the advice: the missing process beside it
    assert [code for code, _ in done] == [0, 0], done
    assert RunFolder(out).weights.is_file()


@pytest.mark.slow
@needs_mnist
@pytest.mark.timeout(600)
def test_the_advice_to_choose_a_free_port_trains(tmp_path):
    out = tmp_path / "run"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ((code, stderr),) = finish(start_by_hand(out, taken.getsockname()[1], ("0",)))
    assert code == 2 and "Choose a free port with MASTER_PORT" in stderr, stderr
    done = finish(start_by_hand(out, free_port(), ("0", "1")))  # the advice: another, free MASTER_PORT
    assert [code for code, _ in done] == [0, 0], done
    assert RunFolder(out).weights.is_file()


@pytest.mark.slow
@needs_mnist
@pytest.mark.timeout(600)
def test_the_advice_to_give_each_process_its_own_rank_trains(tmp_path):
    out = tmp_path / "run"
    done = finish(start_by_hand(out, free_port(), ("0", "1", "1")))
    refused = [stderr for code, stderr in done if code == 2]
    assert len(refused) == 1 and "Two processes of this run have RANK=1" in refused[0], done
    assert "give each another RANK" in refused[0]
    done = finish(start_by_hand(tmp_path / "again", free_port(), ("0", "1")))  # the advice: RANKs 0 and 1
    assert [code for code, _ in done] == [0, 0], done


@pytest.mark.slow
@needs_mnist
@pytest.mark.timeout(600)
def test_the_advice_to_start_every_process_again_after_process_0_stopped_trains(tmp_path):
    out, port = tmp_path / "run", free_port()
    first = start_by_hand(out, port, ("0",), world_size=3, DDPM_RENDEZVOUS_TIMEOUT="120")
    wait_for(lambda: (out / ".lock").exists() or first[0].poll() is not None, what="process 0")
    second = start_by_hand(out, port, ("1",), world_size=3, DDPM_RENDEZVOUS_TIMEOUT="120")
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=120))
    # process 1 joins the rendezvous that process 0 holds, then both wait for process 2
    wait_for(lambda: store.add("ddpm_core/joined", 0) >= 2 or second[0].poll() is not None, what="process 1")
    first[0].kill()
    ((code, stderr),) = finish(second)
    finish(first)
    assert code == 2 and "lost the rendezvous" in stderr and "start every process again" in stderr, stderr
    done = finish(start_by_hand(out, free_port(), ("0", "1", "2"), world_size=3))  # the advice
    assert [code for code, _ in done] == [0, 0, 0], done
    assert RunFolder(out).weights.is_file()


# 4. Under torchrun, a refusal that every process meets is printed once -------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("options, words", [
    ([], ["already holds a training run", "--resume"]),
    (["--lr", "-1"], ["expected a learning rate above 0", "--lr"]),
])
def test_a_refused_torchrun_launch_prints_its_message_once(options, words, run_copy):
    before = folder_hashes(run_copy)
    done = subprocess.run(torchrun("--out", str(run_copy), *TINY_FLAGS, *options), cwd=REPO, env=launch_env(),
                          capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output  # torchrun's status when a process failed
    assert_no_traceback_of_ours(output)
    for word in words:
        assert word in output, output
    assert output.count(words[0]) == 1 and output.count("usage:") <= 1, output  # once, from rank 0
    assert "process 1 of 2:" not in output, output
    # rank 0 failed with the package's status; rank 1 ended silently with the same one, or by torchrun's SIGTERM
    exit_codes = dict(re.findall(r"rank\s*: (\d) \(local_rank: \d\)\s*\n\s*exitcode\s*: (-?\d+)", output))
    assert exit_codes.get("0") == "2", output
    assert exit_codes.get("1") in (None, "2", "-15"), output
    assert folder_hashes(run_copy) == before


@pytest.mark.slow
@needs_mnist
@pytest.mark.timeout(600)
def test_a_batch_that_the_processes_cannot_split_is_refused_and_the_advice_trains(tmp_path):
    out = tmp_path / "run"
    flags = list(TINY_FLAGS)
    flags[flags.index("--batch-size") + 1] = "63"
    refused = subprocess.run(torchrun("--out", str(out), "--epochs", "1", "--subset", "128", *flags), cwd=REPO,
                             env=launch_env(), capture_output=True, text=True, timeout=300)
    output = refused.stdout + refused.stderr
    assert_no_traceback_of_ours(output)
    assert output.count("choose a --batch-size that 2 divides") == 1, output
    flags[flags.index("--batch-size") + 1] = "64"  # the advice: a batch that 2 divides
    followed = subprocess.run(torchrun("--out", str(out), "--epochs", "1", "--subset", "128", *flags), cwd=REPO,
                              env=launch_env(), capture_output=True, text=True, timeout=300)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert RunFolder(out).weights.is_file()


# 5. When torchrun loses a process, rank 0 says which, what is saved and how to continue ----------------------


@pytest.mark.slow
@needs_mnist
def test_a_killed_process_is_reported_once_and_the_last_checkpoint_resumes(tmp_path):
    out = tmp_path / "run"
    options = ["--out", str(out), "--subset", "256", *TINY_FLAGS]
    agent = subprocess.Popen(torchrun(*options, "--epochs", "500"), cwd=REPO, env=launch_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (out / "resume.pt").is_file() or agent.poll() is not None, what="the first checkpoint")
        assert agent.poll() is None
        victim = worker_pid(agent.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGSTOP)  # rank 0 soon blocks on it, so the folder holds still
        before = folder_hashes(out)
        time.sleep(0.5)
        while folder_hashes(out) != before:  # an epoch's files were still being written
            before = folder_hashes(out)
            time.sleep(0.5)
        epoch = RunFolder(out).saved_epoch()
        os.kill(victim, signal.SIGKILL)
        output, _ = agent.communicate(timeout=120)
    finally:
        if agent.poll() is None:  # the test failed early: end the launch and its workers
            workers = [worker_pid(agent.pid, rank) for rank in (0, 1)]
            agent.kill()
            for pid in workers:
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            agent.wait()
    assert agent.returncode == 1, output
    assert_no_traceback_of_ours(output)
    assert folder_hashes(out) == before
    assert output.count("intact") == 1, output  # rank 0 alone reports
    assert f"epoch {epoch}" in output and "--resume" in output, output
    exit_codes = dict(re.findall(r"rank\s*: (\d) \(local_rank: \d\)\s*\n\s*exitcode\s*: (-?\d+)", output))
    assert exit_codes.get("1") == "-9", output
    if "stopped:" in output:  # torchrun's SIGTERM came first: handled, with 128 + 15
        assert "process 1 of 2 ended" in output and "torchrun" in output, output
        assert exit_codes.get("0") == "143", output
    else:  # rank 0's collective failed first: the training loop's message, then its exit with 2, unless
        # torchrun's SIGTERM reaches it while it exits, after the message (-15)
        assert "lost contact" in output and exit_codes.get("0") in ("2", "-15"), output
    # The advice works: the command it gives continues the run (here for one more epoch).
    given = re.search(r"continue with `([^`]+)`", output)
    command = shlex.split(given.group(1)) if given else ["torchrun", "--nproc-per-node", "2", "-m", "ddpm_core",
                                                         "train", *options, "--epochs", "500", "--resume"]
    assert command[0] == "torchrun" and "--resume" in command
    command = [*TORCHRUN[:-2], "--master-port", str(free_port()), *command[1:]]
    command[command.index("--epochs") + 1] = str(epoch + 1)
    resumed = subprocess.run(command, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert RunFolder(out).saved_epoch() == epoch + 1
