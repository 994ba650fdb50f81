"""Loading the trust material named by the settings: the planner's signing key, the appliers' trusted public
keys, and the tenant policy.

Guarantees: every problem is a `TrustError` whose message names the setting and the file, never key material;
a generated private key file is created readable by its owner only (0600) and never overwritten.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from api.policy import TenantPolicy
from api.signing import InvalidKey, PlanSigner, generate_private_key, load_signer, trusted_keys
from llm_operator.settings import Settings

SIGNING_KEY_FILE = "plan-signing.pem"


class TrustError(Exception):
    """Trust material is missing or unusable; the message says which setting to fix."""


def write_private_key(path: Path) -> PlanSigner:
    """Generate a key into `path` (which must not exist), readable by its owner only."""
    pem = generate_private_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise TrustError(f"{path} exists already: a signing key is never overwritten (rotate to a new file)") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return load_signer(pem)


def read_signer(path: Path) -> PlanSigner:
    try:
        return load_signer(path.read_bytes())
    except OSError as exc:
        raise TrustError(f"plan signing key {path}: {exc.strerror} (LLMOP_PLAN_SIGNING_KEY)") from exc
    except InvalidKey as exc:
        raise TrustError(f"plan signing key {path}: {exc} (LLMOP_PLAN_SIGNING_KEY)") from exc


def planner_signer(settings: Settings) -> PlanSigner:
    """The configured key; unset, the data directory's, generated the first time (local runs)."""
    if settings.plan_signing_key is not None:
        return read_signer(settings.plan_signing_key)
    path = settings.data_dir / SIGNING_KEY_FILE
    try:
        return _local_signer(path)
    except OSError as exc:
        raise TrustError(
            f"no plan signing key: set LLMOP_PLAN_SIGNING_KEY (llm-operator keys generate), or make {path.parent} "
            f"writable to have one generated there ({exc.strerror})"
        ) from exc


def _local_signer(path: Path) -> PlanSigner:
    if not path.exists():
        # Written aside and linked into place: a process starting at the same time reads a whole key or none.
        aside = path.with_name(f".{path.name}.{os.getpid()}")
        aside.unlink(missing_ok=True)
        write_private_key(aside)
        try:
            os.link(aside, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            aside.unlink(missing_ok=True)
    return read_signer(path)


def applier_keys(settings: Settings, planner: PlanSigner | None) -> dict[str, Ed25519PublicKey]:
    """The public keys appliers trust: the configured ones, else the planner's own when it runs here."""
    try:
        keys = trusted_keys(settings.plan_public_keys)
    except InvalidKey as exc:
        raise TrustError(f"LLMOP_PLAN_PUBLIC_KEYS: {exc}") from exc
    if not keys and planner is not None:
        keys = trusted_keys([planner.public_key])
    if not keys:
        raise TrustError(
            "no trusted plan-signing key: set LLMOP_PLAN_PUBLIC_KEYS (the chart's planSigning.publicKeys) to the "
            "hub's public key (llm-operator keys public)"
        )
    return keys


def tenant_policy(settings: Settings) -> TenantPolicy:
    """The policy file's policy (the default policy when unset), with the operator's namespace reserved."""
    policy = TenantPolicy()
    if settings.tenant_policy is not None:
        path = settings.tenant_policy
        try:
            text = path.read_text()
            loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            policy = TenantPolicy.model_validate(loaded or {})
        except OSError as exc:
            raise TrustError(f"tenant policy {path}: {exc.strerror} (LLMOP_TENANT_POLICY)") from exc
        except (ValueError, yaml.YAMLError, ValidationError) as exc:
            raise TrustError(f"tenant policy {path}: {str(exc).splitlines()[0]} (LLMOP_TENANT_POLICY)") from exc
    if settings.operator_namespace and policy.operator_namespace is None:
        policy = policy.model_copy(update={"operator_namespace": settings.operator_namespace})
    return policy
