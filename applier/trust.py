"""Which messages on this cluster's plan subject are the planner's plans, to be executed.

Guarantees:
- The signature is checked before the bytes are parsed: unsigned plans and forged ones (a key this cluster does
  not trust, a signature that does not match the subject and bytes) are refused. Only the planner's key signs,
  so only the planner can mint an epoch or a sequence.
- Replays are refused: per deployment, the newest (epoch, sequence) admitted is remembered with the stream
  position it arrived at. A plan that is not newer yet arrives later in the stream is an old plan's bytes
  published again (or a deposed leader's plan its successor already superseded). A JetStream redelivery (the
  same or an earlier stream position) passes: the applier's own per-deployment checks skip what already ran.
  An equal (epoch, sequence) passes too: it can only be the same signed plan, and executing it again is a no-op.
- Far-future epochs are refused: a plan more than `max_epoch_jump` epochs above the highest this process has
  admitted. (Epochs grow by one per planner term; a signed plan with an absurd epoch means a broken hub.)
- A refused plan changes nothing: the memory moves only when a plan is admitted, so no refused plan can fence
  out the real planner's next one.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from api.keys import DeploymentKey
from api.plans import AnyPlan
from api.signing import verify

DEFAULT_MAX_EPOCH_JUMP = 10_000


@dataclass(frozen=True)
class _Admitted:
    epoch: int
    sequence: int
    stream_sequence: int


@dataclass
class PlanTrust:
    keys: Mapping[str, Ed25519PublicKey]
    """Trusted public keys by key id (two while keys rotate)."""
    max_epoch_jump: int = DEFAULT_MAX_EPOCH_JUMP
    newest: dict[DeploymentKey, _Admitted] = field(default_factory=dict)
    highest_epoch: int = 0

    def signature_problem(self, subject: str, data: bytes, headers: Mapping[str, str] | None) -> str | None:
        """Why these bytes are not a plan signed by a trusted key, or None."""
        return verify(self.keys, subject, data, headers)

    def admit(self, plan: AnyPlan, stream_sequence: int) -> str | None:
        """Why this (verified) plan is refused, or None after remembering it as admitted."""
        if self.highest_epoch and plan.epoch > self.highest_epoch + self.max_epoch_jump:
            return (
                f"far-future epoch: plan epoch {plan.epoch} is more than {self.max_epoch_jump} above the highest "
                f"seen ({self.highest_epoch})"
            )
        key = plan.deployment.key
        wanted = (plan.epoch, plan.sequence)
        before = self.newest.get(key)
        if before is not None:
            seen = (before.epoch, before.sequence)
            if wanted < seen and stream_sequence > before.stream_sequence:
                return (
                    f"replayed: epoch {plan.epoch} sequence {plan.sequence} arrived after epoch {before.epoch} "
                    f"sequence {before.sequence} of {key}"
                )
            if wanted <= seen:
                return None  # a redelivery (or the same plan again): the applier's own checks skip what ran
        self.newest[key] = _Admitted(plan.epoch, plan.sequence, stream_sequence)
        self.highest_epoch = max(self.highest_epoch, plan.epoch)
        return None
