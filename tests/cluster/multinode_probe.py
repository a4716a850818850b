"""Run as `python -m tests.cluster.multinode_probe MODEL_DIR`: a fake 3-node cluster with logical
GPUs (ray.cluster_utils.Cluster); prints the pool sizes Estuary derives, as JSON."""

from __future__ import annotations

import json
import os
import sys
import tempfile

_TMP = tempfile.mkdtemp(prefix="estmn-", dir="/tmp")
os.environ["RAY_TMPDIR"] = _TMP  # keep this fake cluster's files (address file too) out of /tmp/ray
os.makedirs(os.path.join(_TMP, "ray"), exist_ok=True)  # Ray writes its address file there, unasked

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from estuary.client.pool import ClientPool  # noqa: E402
from estuary.platform.loading import load_config  # noqa: E402


def main(model_dir: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": _TMP,
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=4, num_gpus=2, resources={"client_slot": 4})
    cluster.add_node(num_cpus=2, num_gpus=1, resources={"client_slot": 2})
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    cluster.wait_for_nodes()
    out = {}
    job = {
        "models": {"client": model_dir},
        "clients": {"count": 50, "mode": "pooled", "resources": {"num_cpus": 0.5, "num_gpus": 0.5}},
        "evaluation": {"server": False},
    }
    pool = ClientPool(load_config(base=job), {model_dir: model_dir})
    placed = pool.wait_ready()
    out["gpu_half"] = {"size": pool.size, "nodes": len({p["node"] for p in placed}),
                       "devices": sorted({p["device"] for p in placed})}
    pool.shutdown()
    job["clients"]["resources"] = {"num_cpus": 1, "custom": {"client_slot": 2}}
    pool = ClientPool(load_config(base=job), {model_dir: model_dir})
    out["custom_slot"] = {"size": pool.size, "nodes": len({p["node"] for p in pool.wait_ready()})}
    pool.shutdown()
    ray.shutdown()
    cluster.shutdown()
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
