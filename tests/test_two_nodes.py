"""Two Ray nodes on this machine: a head (`ray start --head`) and a second node (`ray start
--address`) with its own temp dir and custom resources, jobs submitted through the job submission
API. Engines and the training worker are pinned to the second node by custom resources; the node
is killed midway (SIGKILL to every process of its session) and started again.

Findings this test relies on (Ray 2.60): `--temp-dir` is per node, so the second node gets its own
(its logs, sockets and object store files stay apart from the head's); every `ray start` process
and the workers its raylet spawns share one session (workers get their own process group, so
killing the node means killing the session); two nodes on one host need their own
`--dashboard-agent-listen-port` (the default 52365 would clash). Never `ray stop`: it would stop
every Ray on the machine."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
# a lost node is declared dead after ~3 s instead of Ray's default ~30 s
FAST_HEALTH_CHECK = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
SCORE_FLAGS = (
    "--max-model-len 2048 --max-new-tokens 16 --score-only --no-progress --shared-filesystem "
    "--sessions-per-block 1"
)
N_SESSIONS = 8
N_ITEMS = 12


# ------------------------------------------------------------------ validation (no cluster)


def test_engine_resources_parse_from_json_and_stay_out_of_the_fingerprint(tiny_model):
    from care_ray.scoring.config import ScoreConfig

    base = dict(sessions="s", model=str(tiny_model), out="o")
    pinned = ScoreConfig(**base, engine_resources='{"engine_node": 1}')
    assert pinned.engine_resources == {"engine_node": 1.0}
    assert ScoreConfig(**base, engine_resources={"engine_node": 0.5}).engine_resources == {
        "engine_node": 0.5
    }
    # placement does not change answers: a folder scored on any node can be resumed on another
    assert pinned.fingerprint_settings() == ScoreConfig(**base).fingerprint_settings()


@pytest.mark.parametrize(
    "value, message",
    [
        ("engine_node=1", "not a JSON object"),
        ('{"CPU": 1}', "--cpus-per-engine"),
        ('{"engine_node": 0}', "engine_node must be > 0"),
    ],
)
def test_engine_resources_refused_in_one_line(value, message):
    from pydantic import ValidationError

    from care_ray.scoring.config import ScoreConfig

    with pytest.raises(ValidationError, match=message):
        ScoreConfig(sessions="s", model="m", out="o", engine_resources=value)


def test_custom_resources_checked_against_the_cluster():
    from care_ray.cluster.resources import MissingClusterResources, check_custom_resources

    head = {"CPU": 1.0, "memory": 1e9, "node:__internal_head__": 1.0, "node:10.0.0.1": 1.0}
    worker = {"CPU": 2.0, "engine_node": 4.0, "node:10.0.0.2": 1.0}
    check_custom_resources({}, 3, [head])
    check_custom_resources({"engine_node": 1}, 4, [head, worker])
    check_custom_resources({"engine_node": 1.5, "node:10.0.0.2": 0.5}, 2, [head, worker])
    with pytest.raises(MissingClusterResources) as e:
        check_custom_resources({"gpu_node": 1}, 1, [head, worker])
    assert str(e.value) == (
        "--engine-resources {\"gpu_node\": 1}: no node of the cluster has the resource 'gpu_node' "
        "(its resources besides CPU, GPU and memory: engine_node, node:10.0.0.1, node:10.0.0.2); "
        "start the nodes meant for it with `ray start --resources '{\"gpu_node\": N}'`"
    )
    with pytest.raises(MissingClusterResources, match="for 2 replicas, --num-engines asks for 3"):
        check_custom_resources({"engine_node": 2}, 3, [head, worker])
    with pytest.raises(MissingClusterResources, match="scaling.num_workers asks for 5"):
        check_custom_resources(
            {"engine_node": 1},
            5,
            [head, worker],
            option="scaling.resources_per_worker",
            replicas_option="scaling.num_workers",
        )


def test_finetune_resources_per_worker_validated(tiny_model, tmp_path, monkeypatch):
    import ray

    from care_ray.cluster.resources import MissingClusterResources
    from care_ray.training.config import ConfigError, load_finetune_config
    from care_ray.training.trainer import check_worker_resources, make_trainer

    def load(**settings):
        return load_finetune_config(
            REPO / "configs" / "finetune-tiny-cpu.yaml",
            {"model": str(tiny_model), **settings},
        )

    cfg = load(**{"scaling.resources_per_worker": {"train_node": 1}})
    scaling = make_trainer(cfg, 0).scaling_config
    assert scaling.resources_per_worker == {"CPU": 1.0, "train_node": 1.0}
    with pytest.raises(ConfigError, match="give GPU with gpus_per_worker"):
        load(**{"scaling.resources_per_worker": {"GPU": 1}})
    monkeypatch.setattr(
        ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0, "train_node": 1.0}}]
    )
    with pytest.raises(MissingClusterResources, match="for 1 replica, scaling.num_workers asks"):
        check_worker_resources(cfg)  # the tiny config has 2 workers


# ------------------------------------------------------------------ the two-node cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(session_id: int) -> list[int]:
    """Every process of a session: `ray start`, its raylet and agents, and the workers."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session_id:
                pids.append(int(proc.name))
    return pids


def _kill_session(process: subprocess.Popen) -> None:
    for pid in _session_pids(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)


class TwoNodes:
    """A head (1 CPU: drivers, the job supervisor, Ray Data's light tasks) and a second node (2
    CPUs, the custom resources engines and training workers ask for), each `ray start --block` in
    its own session."""

    def __init__(self, root: Path):
        self.root = root
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "VIRTUAL_ENV"))
        }
        self.env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", **FAST_HEALTH_CHECK)
        self.temp_dirs: list[Path] = []
        self.gcs = f"127.0.0.1:{_free_port()}"
        self.dashboard = f"http://127.0.0.1:{_free_port()}"
        self.head: subprocess.Popen | None = None
        self.node2: subprocess.Popen | None = None

    def start(self) -> None:
        self.head = self._start(
            "head",
            [
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={self.gcs.rsplit(':', 1)[1]}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard.rsplit(':', 1)[1]}",
                f"--ray-client-server-port={_free_port()}",
                "--num-cpus=1",
            ],
        )
        self._wait(lambda nodes: any(n.is_head_node and n.state == "ALIVE" for n in nodes))
        self.start_node2()

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        # Ray's socket paths live under the temp dir and must stay under 108 bytes (AF_UNIX):
        # pytest's tmp_path is too deep for them
        temp_dir = Path(tempfile.mkdtemp(prefix=f"ray-{name}-"))
        self.temp_dirs.append(temp_dir)
        with (self.root / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                [str(RAY), "start", "--block", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
                # two nodes on one host: the agent's default port 52365 would clash
                + [f"--dashboard-agent-listen-port={_free_port()}"]
                + ["--object-store-memory=200000000"]
                + args,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def nodes(self):
        from ray.util.state import list_nodes

        return list_nodes(address=self.dashboard, limit=1000, raise_on_missing_output=False)

    def _wait(self, ready, timeout: float = 120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            started = [p for p in (self.head, self.node2) if p is not None]
            if any(p.poll() is not None for p in started):
                break
            try:
                nodes = self.nodes()
                if ready(nodes):
                    return nodes
            except Exception:  # the dashboard is not up yet
                pass
            time.sleep(0.5)
        logs = "".join(p.read_text()[-2000:] for p in self.root.glob("*.log"))
        raise TimeoutError(f"cluster not ready (or a node exited) in {timeout:.0f} s:\n{logs}")

    def node2_ids(self, state: str = "ALIVE") -> set[str]:
        return {
            n.node_id
            for n in self.nodes()
            if n.state == state and n.resources_total.get("engine_node")
        }

    def start_node2(self) -> str:
        """Start (or start again) the second node; returns its node id (a new one each time)."""
        earlier = {n.node_id for n in self.nodes() if n.resources_total.get("engine_node")}
        self.node2 = self._start(
            "node2",
            [
                f"--address={self.gcs}",
                "--node-ip-address=127.0.0.1",
                "--num-cpus=2",
                '--resources={"engine_node": 4, "train_node": 1}',
            ],
        )
        nodes = self._wait(lambda nodes: self.node2_ids_in(nodes) - earlier)
        (node_id,) = self.node2_ids_in(nodes) - earlier
        return node_id

    @staticmethod
    def node2_ids_in(nodes) -> set[str]:
        return {
            n.node_id for n in nodes if n.state == "ALIVE" and n.resources_total.get("engine_node")
        }

    def kill_node2(self) -> None:
        """Lose the second node like a machine that died: SIGKILL, no cleanup; returns once the
        head has declared it dead."""
        assert self.node2 is not None
        lost = self.node2_ids()
        _kill_session(self.node2)
        self.node2 = None
        self._wait(lambda nodes: not lost & self.node2_ids_in(nodes), timeout=60)

    def close(self) -> None:
        for process in (self.node2, self.head):
            if process is not None:
                _kill_session(process)
        for temp_dir in self.temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)

    # -------------------------------------------------------------- jobs

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard)

    def submit(self, working_dir: Path, entrypoint: str) -> str:
        return self.client().submit_job(
            entrypoint=f"{shlex.quote(sys.executable)} {entrypoint}",
            runtime_env={"working_dir": str(working_dir)},
        )

    def wait_job(self, job_id: str, timeout: float = 300):
        client = self.client()
        deadline = time.time() + timeout
        while not client.get_job_status(job_id).is_terminal():
            if time.time() > deadline:
                client.stop_job(job_id)
                raise TimeoutError(f"{job_id} still running after {timeout:.0f} s")
            time.sleep(1)
        return client.get_job_info(job_id), client.get_job_logs(job_id)

    def actors_of(self, job_id: str, class_part: str):
        from ray.util.state import list_actors

        driver = self.client().get_job_info(job_id).driver_info
        return [
            a
            for a in list_actors(
                address=self.dashboard,
                filters=[("job_id", "=", driver.id)],
                detail=True,
                limit=10000,
                raise_on_missing_output=False,
            )
            if class_part in a.class_name
        ]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = TwoNodes(tmp_path_factory.mktemp("two-nodes"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def working_dir(tmp_path_factory) -> Path:
    """A snapshot of this checkout for the jobs (tracked and new files, as git sees them): other
    work in the tree goes on while a job's package is hashed and uploaded."""
    dest = tmp_path_factory.mktemp("job-working-dir")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes((REPO / name).read_bytes())
    return dest


@pytest.fixture(scope="module")
def small_corpus(esconv_corpus, tmp_path_factory) -> Path:
    from care_ray.corpus.ingest import ingest_files
    from care_ray.corpus.reader import export_sessions_jsonl

    work = tmp_path_factory.mktemp("small-corpus")
    export_sessions_jsonl(esconv_corpus, work / "all.jsonl")
    lines = (work / "all.jsonl").read_text().splitlines()[:N_SESSIONS]
    (work / "eight.jsonl").write_text("\n".join(lines) + "\n")
    ingest_files("sessions-jsonl", [work / "eight.jsonl"], work / "corpus")
    return work / "corpus"


def _score_entrypoint(corpus: Path, model: Path, out: Path, resources: dict) -> str:
    return (
        f"-m jobs.score --sessions {corpus} --model {model} --out {out} {SCORE_FLAGS} "
        f"--engine-resources {shlex.quote(json.dumps(resources))}"
    )


def _pairs(out: Path) -> list[tuple[str, int]]:
    from care_ray.scoring.results import RunFolder

    run = RunFolder(out)
    return [
        (row["session_id"], row["item_id"])
        for sub in ("items", "errors")
        for row in run.read(sub, columns=["session_id", "item_id"]).to_pylist()
    ]


def _commits(out: Path) -> list[str]:
    folder = out / "_commits"
    return sorted(p.name for p in folder.glob("items.*")) if folder.exists() else []


@pytest.mark.slow
def test_scoring_refuses_engine_resources_no_node_has(
    cluster, working_dir, small_corpus, tiny_model
):
    out = cluster.root / "scores-refused"
    job = cluster.submit(
        working_dir, _score_entrypoint(small_corpus, tiny_model, out, {"gpu_node": 1})
    )
    info, logs = cluster.wait_job(job, timeout=120)
    # one line before anything runs, not engine actors pending forever
    assert info.status == "FAILED", logs[-2000:]
    assert "no node of the cluster has the resource 'gpu_node'" in logs and "Traceback" not in logs
    assert not (out / "fingerprint.json").exists()


@pytest.mark.slow
def test_scoring_engines_on_the_second_node_survive_losing_it(
    cluster, working_dir, small_corpus, tiny_model
):
    out = cluster.root / "scores"
    entrypoint = _score_entrypoint(small_corpus, tiny_model, out, {"engine_node": 1})
    node2 = cluster.node2_ids()
    job = cluster.submit(working_dir, entrypoint)
    client = cluster.client()
    while not _commits(out):  # midway: the first results are committed
        assert not client.get_job_status(job).is_terminal(), client.get_job_logs(job)[-3000:]
        time.sleep(0.2)
    engines = cluster.actors_of(job, "ScoreItemsActor")
    assert engines and {a.node_id for a in engines} == node2, "engines ran off the engine node"
    committed_before = len(_commits(out))
    cluster.kill_node2()
    new_node2 = cluster.start_node2()
    info, logs = cluster.wait_job(job)
    # Ray Data restarts the engine actor on the new node (its actors restart without limit) and
    # rebuilds the blocks lost with the node from lineage: the job finishes
    assert info.status == "SUCCEEDED" or (
        info.status == "FAILED" and "node" in (info.message or "").lower()
    ), (info.status, info.message, logs[-3000:])
    assert committed_before < N_SESSIONS, "the node was lost after all results were in"
    engine_nodes = {a.node_id for a in cluster.actors_of(job, "ScoreItemsActor")}
    assert new_node2 in engine_nodes and engine_nodes <= node2 | {new_node2}, engine_nodes

    # a rerun finds every pair once: nothing lost, nothing scored twice
    info, logs = cluster.wait_job(cluster.submit(working_dir, entrypoint))
    assert info.status == "SUCCEEDED", logs[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["items_in"] == N_SESSIONS * N_ITEMS
    assert manifest["items_scored"] + manifest["items_errors"] == N_SESSIONS * N_ITEMS
    pairs = _pairs(out)
    assert len(pairs) == len(set(pairs)) == N_SESSIONS * N_ITEMS


@pytest.fixture(scope="module")
def sft_data(esconv_corpus, tiny_model, tmp_path_factory) -> Path:
    from care_ray.training.sft_data import SFTOptions, make_sft_data

    out = tmp_path_factory.mktemp("two-nodes-sft")
    make_sft_data(
        esconv_corpus,
        out,
        SFTOptions(target="score", folds=2, max_sessions=40, seed=5),
        tokenizer_path=str(tiny_model),
        max_model_len=640,
        max_new_tokens=128,
    )
    return out


@pytest.mark.slow
def test_finetune_resumes_from_its_checkpoint_after_losing_the_worker_node(
    cluster, working_dir, sft_data, tiny_model
):
    out = cluster.root / "finetune"
    # one worker on the second node; 8 optimizer steps, a checkpoint every 2
    settings = [
        f"model={tiny_model}",
        f"data={sft_data}",
        "epochs=1",
        "folds=[0]",
        "scaling.num_workers=1",
        "scaling.resources_per_worker={train_node: 1}",
        "effective_batch_size=4",
        "max_train_examples=32",
        "max_eval_examples=24",
        "eval_every_steps=2",
    ]
    job = cluster.submit(
        working_dir,
        "jobs/finetune.py --config configs/finetune-tiny-cpu.yaml "
        + " ".join(f"--set {shlex.quote(s)}" for s in settings)
        + f" --out {out}",
    )
    client = cluster.client()
    snapshot = out / "ray-results" / "tiny-cpu-esconv-fold0" / "checkpoint_manager_snapshot.json"
    # the controller writes its snapshot once it has registered a checkpoint: only then is the
    # checkpoint the one a restarted worker group gets (a step-* folder alone is not enough)
    while not (snapshot.exists() and "step-" in snapshot.read_text()):
        assert not client.get_job_status(job).is_terminal(), client.get_job_logs(job)[-3000:]
        time.sleep(0.2)
    saved_steps = [
        r["metrics"]["step"] for r in json.loads(snapshot.read_text())["checkpoint_results"]
    ]
    cluster.kill_node2()
    new_node2 = cluster.start_node2()
    info, logs = cluster.wait_job(job)
    assert info.status == "SUCCEEDED", (info.message, logs[-3000:])
    record = json.loads((out / "fold0" / "metrics.json").read_text())
    first, resumed = record["attempts"]
    assert first["start_step"] == 0 and resumed["start_step"] >= max(saved_steps) > 0, record[
        "attempts"
    ]
    assert [step for step, _ in record["loss_history"]] == list(range(1, 9))
    assert f"start step {resumed['start_step']}" in logs  # the restarted worker's own log line
    workers = cluster.actors_of(job, "RayTrainWorker")
    assert new_node2 in {w.node_id for w in workers}
    assert {w.node_id for w in workers} <= cluster.node2_ids("DEAD") | {new_node2}
