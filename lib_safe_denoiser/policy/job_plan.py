"""What one generation runs with: the user's arguments, their saved preset and the operator's policy.

Every way into a job — the accordion, ``alwayson_scripts``, an XYZ axis value, pasted infotext —
ends here, so one rule decides them all: a saved preset resolves in the caller's own scopes only,
the operator's policy then switches the job on or raises it to the floors, and the banks the user
chose are checked against what that user may see (another user's private bank is "not found"),
while the banks the operator chose (always-on banks, the enforced preset's) are taken as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from lib_safe_denoiser.banks.store import BankInfo, BankStore
from lib_safe_denoiser.errors import BankNotFoundError
from lib_safe_denoiser.generation.args import SafeDenoiserArgs
from lib_safe_denoiser.policy.bank_access import visible_bank
from lib_safe_denoiser.policy.operator_policy import OperatorPolicy, apply_policy
from lib_safe_denoiser.policy.presets_store import PresetStore, ResolvedArgs
from lib_safe_denoiser.policy.users import User


@dataclass(frozen=True)
class JobPlan:
    """``resolved`` None: the job runs without the safe denoiser (``notes`` may say why although enforced)."""

    resolved: ResolvedArgs | None
    notes: tuple[str, ...] = ()
    own_banks: tuple[str, ...] = ()
    """The banks of ``resolved`` the user chose (the rest are the operator's)."""
    own_reference: bool = False
    """Whether the reference bank is the user's choice."""


def plan_job(args: SafeDenoiserArgs, user: User, presets: PresetStore, policy: OperatorPolicy) -> JobPlan:
    """The job ``user`` asked for with ``args``, as the policy lets it run.

    Raises ``PresetNotFoundError``/``ArgsError`` for a bad request (a preset the user cannot see
    is not found) and ``EnforcementError`` when the policy requires steering it cannot set up.
    """
    hidden = policy.hides_from(user.operator)
    request: SafeDenoiserArgs | ResolvedArgs | None = None
    if args.enabled:
        # a hidden accordion's values are replaced, never resolved: the user's preset may not exist
        request = presets.resolve_fields(args.as_dict(), user.name) if args.saved_preset and not hidden else args
    resolved, notes = apply_policy(request, policy, presets.resolve_shared, is_operator=user.operator)
    if resolved is None:
        return JobPlan(None, tuple(notes))
    users_own = args.enabled and not hidden
    own = (request.banks if isinstance(request, ResolvedArgs) else args.banks) if users_own else ()
    return JobPlan(resolved, tuple(notes), own, users_own)


def job_banks(plan: JobPlan, store: BankStore, user: User) -> tuple[tuple[BankInfo, ...], BankInfo | None]:
    """The negation banks and the reference bank (odds mode) of a planned job.

    ``BankNotFoundError`` names a missing bank: the user's own as "no bank named ..." (listing the
    banks they may use), the operator's as a bank the operator's policy requires.
    """
    assert plan.resolved is not None

    def get(name: str, own: bool) -> BankInfo:
        if own:
            return visible_bank(store, name, user)
        try:
            return store.get(name)
        except BankNotFoundError:
            raise BankNotFoundError(f"the bank {name!r} that the operator's policy requires does not exist; an "
                                    "operator must create it or change the policy") from None

    args = plan.resolved.args
    banks = tuple(get(name, name in plan.own_banks) for name in plan.resolved.banks)
    reference = get(args.reference_bank, plan.own_reference) if args.mode == "odds" else None
    return banks, reference
