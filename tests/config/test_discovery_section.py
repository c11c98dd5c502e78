"""`[discovery] kubernetes`: the kubeconfig `devmesh k8s sync` records, resolved against the project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from devmesh.config.schema import KubernetesSection, MeshConfig


def test_the_kubeconfig_is_optional_and_relative_to_the_project(tmp_path: Path) -> None:
    config = MeshConfig.model_validate(
        {
            "discovery": {
                "kubernetes": {"context": "kind-dev", "namespace": "shop", "kubeconfig": "ops/kubeconfig"}
            }
        }
    )
    section = config.discovery.kubernetes
    assert section is not None
    assert section.kubeconfig_path(tmp_path) == str(tmp_path / "ops" / "kubeconfig")
    assert KubernetesSection().kubeconfig_path(tmp_path) is None  # the agent's $KUBECONFIG, or the default


def test_absolute_home_and_several_paths_resolve_like_kubeconfig(tmp_path: Path) -> None:
    joined = os.pathsep.join(["/etc/kube/a", "~/b", "c"])
    resolved = KubernetesSection(kubeconfig=joined).kubeconfig_path(tmp_path)
    assert resolved == os.pathsep.join(["/etc/kube/a", str(Path("~/b").expanduser()), str(tmp_path / "c")])


def test_an_empty_kubeconfig_is_refused() -> None:
    with pytest.raises(ValidationError):
        KubernetesSection.model_validate({"kubeconfig": ""})
