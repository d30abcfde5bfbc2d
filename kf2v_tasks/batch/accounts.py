"""The accounts a batch runs on: each with its limits, its lanes, a client and its steps.

``credentials_block`` may name several blocks (an account pool): each account has its own
lane per model, and a row goes to the account whose lane frees first. A row whose task
exists already goes back to the account that holds it (the ledger says which), so a re-run
polls and downloads from the right one. Two blocks with the same key are one account.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from kf2v_tasks.batch.config import ConcurrencySettings
from kf2v_tasks.credentials import DashScopeCredentials, aresolve_credentials
from kf2v_tasks.dashscope.limits import AccountLimits
from kf2v_tasks.errors import PermanentError
from kf2v_tasks.lanes.account import CredentialsLike, account_id, account_label, limits_for
from kf2v_tasks.lanes.lane import Lane, LaneSlot, open_lane
from kf2v_tasks.lanes.lookahead import LookAhead
from kf2v_tasks.lanes.names import account_limit_name
from kf2v_tasks.lanes.rates import RateShare

logger = logging.getLogger("kf2v_tasks.batch.accounts")


class AccountNotInRunError(PermanentError):
    """The row's task lives on an account this run was not given."""


@dataclass
class RunAccount:
    """One account of this run (``name``: what results say, never key material)."""

    name: str
    label: str
    credentials: DashScopeCredentials = field(repr=False)
    limits: Optional[AccountLimits] = field(default=None, repr=False)
    lanes: dict[str, Lane] = field(default_factory=dict)
    aheads: dict[str, LookAhead] = field(default_factory=dict)
    client: Any = field(default=None, repr=False)
    steps: Any = field(default=None, repr=False)


async def resolve_accounts(
    credentials: Union[CredentialsLike, Sequence[CredentialsLike]], *, quiet: bool = False
) -> list[RunAccount]:
    """The distinct accounts behind ``credentials`` (one, or a list), in the order given.

    ``quiet``: a caller that only reads them (the prices' regions) leaves the warning about
    a key given twice to the run that uses the accounts: said once.

    Raises:
        ValueError: a block cannot be loaded (the message names it), or none is configured.
    """
    items = list(credentials) if isinstance(credentials, (list, tuple)) else [credentials]
    accounts: list[RunAccount] = []
    seen: dict[str, RunAccount] = {}
    for item in items or [None]:
        try:
            creds = await aresolve_credentials(item)
        except ValueError:
            raise
        except Exception as exc:  # not found, not a DashScope block, no server
            raise ValueError(
                f"credentials block {item!r} cannot be loaded ({type(exc).__name__})"
            ) from None
        label = account_label(creds)
        name = item if isinstance(item, str) and item else _block_name(creds) or label
        aid = account_id(creds)
        if aid in seen:
            if quiet:
                continue
            logger.warning(
                "credentials %r and %r hold the same key: one account, used once",
                seen[aid].name,
                name,
            )
            continue
        seen[aid] = account = RunAccount(name=name, label=label, credentials=creds)
        accounts.append(account)
    return accounts


def _block_name(creds: DashScopeCredentials) -> Optional[str]:
    if getattr(creds, "_is_anonymous", True):
        return None
    return getattr(creds, "_block_document_name", None)


class AccountPool:
    """This run's accounts, their lanes and look-aheads, and the rates they share."""

    def __init__(self, accounts: list[RunAccount], concurrency: ConcurrencySettings) -> None:
        if not accounts:
            raise ValueError("a run needs at least one account")
        self.accounts = accounts
        self.concurrency = concurrency
        self._shares: list[RateShare] = []

    @property
    def look_aheads(self) -> list[LookAhead]:
        return [a for acct in self.accounts for a in acct.aheads.values()]

    @property
    def lanes(self) -> list[Lane]:
        return [lane for acct in self.accounts for lane in acct.lanes.values()]

    async def open(self, models: list[str], shard_count: int = 1) -> None:
        """Open every account's lane of each model, and join the rates' shares."""
        c = self.concurrency
        for acct in self.accounts:
            acct.limits = limits = limits_for(acct.credentials, c.quotas(models))
            limits.query_limiter.set_rate(c.queries_per_second)
            for model in models:
                lane = acct.lanes[model] = await open_lane(
                    acct.label,
                    model,
                    limits.quota(model),
                    queue_ahead=c.queue_ahead,
                    limit_prefix=c.global_limit or None,
                )
                ahead = acct.aheads[model] = LookAhead(
                    lane.running,
                    c.queue_ahead,
                    on_fall_back=lambda _why, lane=lane: lane.shrink(lane.running),
                    held=lambda lane=lane: lane.in_use,
                )
                # A create the service refuses for concurrency is not retried where it
                # failed: the row gives its slot back and waits for a running one.
                limits.create_limiter(model).stop_retry = ahead.refuses
            await self._share_rates(acct, shard_count)

    async def _share_rates(self, acct: RunAccount, shard_count: int) -> None:
        """Keep to this run's share of each lane's creates/s and the account's queries/s."""
        c, limits = self.concurrency, acct.limits
        assert limits is not None
        shared = bool(acct.lanes) and all(lane.limit_name for lane in acct.lanes.values())
        if shared:
            wanted = [
                (lane.limit_name, {limits.create_limiter(m): lane.quota.creates_per_second})
                for m, lane in acct.lanes.items()
            ]
            wanted.append(
                (
                    account_limit_name(c.global_limit or "kf2v", acct.label),
                    {limits.query_limiter: c.queries_per_second},
                )
            )
            # At once: each join is a few server round trips, and waits one refresh when
            # other runs are at work; one after the other they delayed the first create.
            joined = await asyncio.gather(
                *(RateShare.join(name, limiters) for name, limiters in wanted)  # type: ignore[arg-type]
            )
            self._shares.extend(share for share in joined if share is not None)
            shared = all(share is not None for share in joined)
        if not shared and shard_count > 1:
            # Nothing counts the shards that run at once: each keeps to its part.
            for m, lane in acct.lanes.items():
                limits.create_limiter(m).set_rate(lane.quota.creates_per_second / shard_count)
            limits.query_limiter.set_rate(c.queries_per_second / shard_count)
            logger.info(
                "rates not shared through the server: this shard keeps to 1/%d of them",
                shard_count,
            )

    def holder(self, record: Any) -> RunAccount:
        """The account that holds the record's task (a record from before pools: the first).

        Raises:
            AccountNotInRunError: the task lives on an account this run was not given.
        """
        label = (getattr(record, "extra", None) or {}).get("account") if record else None
        for acct in self.accounts:
            if acct.label == label:
                return acct
        if len(self.accounts) == 1 or not label:  # one account, or a record from before pools
            return self.accounts[0]
        raise AccountNotInRunError(
            f"task {record.task_id} was created on account {label!r}, which this run was "
            "not given: add its credentials block to re-attach (nothing was created again)"
        )

    @contextlib.asynccontextmanager
    async def slot(
        self, model: str, pinned: Optional[RunAccount]
    ) -> AsyncIterator[tuple[RunAccount, LaneSlot]]:
        """A slot of ``model``'s lane: on ``pinned``, else on the account that frees first."""
        acct, held = await self._take(model, [pinned] if pinned else self.accounts)
        try:
            yield acct, held
        finally:
            held.release()

    async def _take(self, model: str, candidates: list[RunAccount]) -> tuple[RunAccount, LaneSlot]:
        # A free running slot first: a task queued behind one account's running tasks
        # while another account has a slot idle would wait for nothing (B7).
        running = [a for a in candidates if a.lanes[model].in_use < a.lanes[model].running]
        candidates = running or candidates
        if len(candidates) == 1:
            return candidates[0], await candidates[0].lanes[model].take()
        takes = [asyncio.ensure_future(a.lanes[model].take()) for a in candidates]
        try:
            await asyncio.wait(takes, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            _give_back(takes, keep=None)
            raise
        winner = next(t for t in takes if t.done())
        _give_back(takes, keep=winner)
        return candidates[takes.index(winner)], winner.result()

    async def close(self) -> None:
        """Give back every lane's idle global-limit slots and leave the rates' shares."""
        for lane in self.lanes:
            with contextlib.suppress(Exception):
                await lane.settle()
        for share in self._shares:
            await share.leave()


def _give_back(takes: list[asyncio.Future], keep: Optional[asyncio.Future]) -> None:
    """Cancel the takes that lost; a slot one of them got meanwhile goes back at once."""

    def release(f: asyncio.Future) -> None:
        if not f.cancelled() and f.exception() is None:
            f.result().release()

    for t in takes:
        if t is keep:
            continue
        if t.done():
            release(t)
        else:
            t.cancel()
            t.add_done_callback(release)
