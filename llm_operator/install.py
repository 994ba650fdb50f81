"""Installing the CRDs into a member cluster (what `helm install` does too, from the same generated files).

Guarantees: CRDs are server-side applied with the operator's field manager and this returns only when the
apiserver reports them Established, so watches started afterwards succeed.
"""

from __future__ import annotations

import anyio

from api.crd import all_crds
from kubeapi import RESOURCES, Kube

FIELD_MANAGER = "llm-operator"


async def install_crds(kube: Kube, *, timeout: float = 60.0) -> None:
    resource = RESOURCES["CustomResourceDefinition"]
    manifests = list(all_crds().values())
    for manifest in manifests:
        await kube.apply(resource, manifest, field_manager=FIELD_MANAGER)
    with anyio.fail_after(timeout):
        for manifest in manifests:
            while True:
                current = await kube.get(resource, manifest["metadata"]["name"])
                conditions = (current.get("status") or {}).get("conditions") or []
                if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                    break
                await anyio.sleep(0.2)
