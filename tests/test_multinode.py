"""Multi-node training on one host: two torchrun "nodes" (--nnodes 2, node ranks 0 and 1, one gloo process each).

What it checks, and why not equality with a one-process run: a 1-process run with the same global batch does
not compute the same thing by design. BatchNorm normalises with the statistics of each rank's own batch (no
SyncBatchNorm: per-rank statistics are the wespeaker / DDP norm), and chunk offsets and augmentation draws are
keyed by rank (so that they are independent of the world layout within a run). So the test checks instead that
the node boundary changes nothing: two nodes with one process each end with the same weights (within 1e-6) as
one node with two processes, from files and from shards; that killing one node makes the other fail within the
configured `train.dist_timeout` with a clear message; and that `--resume` on both nodes then finishes with the
weights of the uninterrupted run.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures_train import DDP_EXIT, kill_process_tree, make_corpus, tiny_config, torchrun_env

from spkcausal.data.shards import make_shards
from spkcausal.nn.config import save_config

REPO = Path(__file__).resolve().parents[1]

NODE_SCRIPT = """
import os, sys
from pathlib import Path
import numpy as np, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[3])
from test_multinode import run_config
from spkcausal.train.trainer import train
root, tag = Path(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo")  # one group for both runs; train() uses it as it is
for source in ("files", "shards"):
    res = train(run_config(root, f"exp_{tag}_{source}", source))
    # Parameters are the same on every rank; BatchNorm running statistics are each rank's own.
    p = torch.cat([t.detach().flatten().double() for t in res.net.parameters()])
    s = torch.cat([t.detach().flatten().double() for t in res.net.state_dict().values() if t.is_floating_point()])
    np.save(root / f"p_{tag}_{source}_{dist.get_rank()}.npy", p.numpy())
    np.save(root / f"s_{tag}_{source}_{dist.get_rank()}.npy", s.numpy())
""" + DDP_EXIT


def run_config(root: Path, exp: str, source: str) -> dict:
    """8 steps per epoch x 2 epochs, batch 4 per rank, dither on; from the data dir or the shards."""
    data = {"train": str(root / "data")} if source == "files" else {"train": None, "shards": str(root / "sh"),
                                                                     "shuffle_buffer": 4}
    return tiny_config(root / "data", root / exp, data=data, sampler={"num_samples": 64},
                       features={"n_mels": 40, "dither": 1.0},
                       train={"epochs": 2, "batch_size": 4, "ckpt_every_steps": 2, "keep_last": 20,
                              "dist_timeout": 20})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(rank: int, port: int, args: list[str], **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
           "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port), *args]
    # Own session: the whole node (agent + worker) can be killed at once, as a crashed machine would be.
    return subprocess.Popen(cmd, env=torchrun_env(), start_new_session=True, text=True, **kw)


def _two_nodes(args: list[str], timeout: float = 180) -> list[str]:
    port = _free_port()
    procs = [_node(r, port, args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        # Seen once in a full suite (the --resume pair, alone it passes): end both nodes and show where each was,
        # so that a recurrence says which node hung and after what.
        for p in procs:
            kill_process_tree(p.pid)
        tails = [p.communicate()[0] or "" for p in procs]
        pytest.fail(f"two nodes did not finish in {timeout} s (port {port}):\n"
                    + "\n".join(f"--- node {r}:\n{t[-3000:]}" for r, t in enumerate(tails)))
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def _weights(ckpt: Path) -> np.ndarray:
    from spkcausal.nn.checkpoint import load_checkpoint

    c = load_checkpoint(ckpt)
    return np.concatenate([t.double().flatten().numpy() for part in ("model", "head") for t in c[part].values()
                           if t.is_floating_point()])


@pytest.mark.slow
def test_two_nodes_equal_one_node_and_survive_a_killed_node(tmp_path):
    make_corpus(tmp_path, utts_per_spk=5)
    make_shards(tmp_path / "data", tmp_path / "sh", utts_per_shard=3, seed=0)
    script = tmp_path / "node.py"
    script.write_text(NODE_SCRIPT)
    _two_nodes([str(script), str(tmp_path), "nodes", str(REPO / "tests")])
    one = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(tmp_path), "single", str(REPO / "tests")],
                         capture_output=True, text=True, env=torchrun_env(), timeout=180)
    assert one.returncode == 0, one.stderr[-4000:]
    for source in ("files", "shards"):
        p = {(tag, r): np.load(tmp_path / f"p_{tag}_{source}_{r}.npy") for tag in ("nodes", "single") for r in (0, 1)}
        st = {(tag, r): np.load(tmp_path / f"s_{tag}_{source}_{r}.npy") for tag in ("nodes", "single") for r in (0, 1)}
        assert np.array_equal(p["nodes", 0], p["nodes", 1])  # DDP kept the ranks in step
        for r in (0, 1):  # weights and each rank's BatchNorm statistics: as on one node
            # 2 ranks: an all-reduce of two terms is exact whatever its order, so the runs are equal; 1e-6 spare
            assert np.abs(st["nodes", r] - st["single", r]).max() < 1e-6
        log = (tmp_path / f"exp_nodes_{source}" / "train.log").read_text()
        assert "2 ranks, 8 steps/epoch x 2 epochs" in log
    # The two sources really differ (the shards are read in another order).
    assert np.abs(np.load(tmp_path / "p_nodes_files_0.npy") - np.load(tmp_path / "p_nodes_shards_0.npy")).max() > 1e-3

    # Kill node 1 mid-run: node 0 must fail within train.dist_timeout (20 s) plus start-up slack, saying why.
    conf = tmp_path / "kill.yaml"
    save_config(run_config(tmp_path, "exp_kill", "shards"), conf)
    train_args = ["-m", "spkcausal", "train", "--config", str(conf)]
    port = _free_port()
    node0 = _node(0, port, train_args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    node1 = _node(1, port, train_args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = []
    for line in node0.stderr:
        seen.append(line)
        if "saved checkpoint" in line and "step_00000002.pt" in line:
            kill_process_tree(node1.pid)
            killed_at = time.monotonic()
            break
    else:
        pytest.fail("node 0 never checkpointed step 2:\n" + "".join(seen[-30:]))
    node1.wait(timeout=30)
    rest = node0.stderr.read()
    node0.wait(timeout=120)
    waited = time.monotonic() - killed_at
    assert node0.returncode != 0
    assert waited < 20 + 30, waited
    assert "another rank or node died" in rest, rest[-3000:]
    ckpts = sorted(p.name for p in (tmp_path / "exp_kill" / "checkpoints").glob("*.pt"))
    assert "epoch_0002.pt" not in ckpts and "step_00000002.pt" in ckpts

    # --resume on both nodes finishes the run with the weights of the uninterrupted one.
    outs = _two_nodes(train_args + ["--resume"])
    assert "resumed from" in outs[0]
    got = _weights(tmp_path / "exp_kill" / "checkpoints" / "epoch_0002.pt")
    want = _weights(tmp_path / "exp_nodes_shards" / "checkpoints" / "epoch_0002.pt")
    assert np.abs(got - want).max() < 1e-6  # a resume replays the same float32 ops: equal, as above
