"""A spending cap shared by the rows of one run: :class:`Budget` (``max_cost``)."""

from __future__ import annotations

import math
import threading
from typing import Optional

from kf2v_tasks.errors import BudgetExceededError

__all__ = ["Budget"]


class Budget:
    """A spending cap shared by the tasks of one run.

    Reserve a row's cost before submitting it; :meth:`commit` it when the task succeeds
    (billed) or :meth:`release` it when the task fails (failed tasks are free). A row
    that would take ``spent + reserved`` over ``max_cost`` is refused. ``max_cost=None``
    never refuses but still tracks spending. The lock makes it safe from threads and,
    as the critical sections never await, from tasks of one event loop.
    """

    #: Relative slack so that 10 x 0.2 fits a 2.0 budget despite float rounding.
    _EPSILON = 1e-9

    def __init__(self, max_cost: Optional[float] = None) -> None:
        if max_cost is not None and (not math.isfinite(max_cost) or max_cost < 0):
            raise ValueError(f"max_cost must be a number >= 0 or None, got {max_cost}")
        self.max_cost = None if max_cost is None else float(max_cost)
        self._spent = 0.0
        self._reserved = 0.0
        self._refused = 0
        self._lock = threading.Lock()

    @property
    def spent(self) -> float:
        """Cost of committed (succeeded, billed) rows."""
        return round(self._spent, 9)

    @property
    def reserved(self) -> float:
        """Cost of rows submitted and not yet finished."""
        return round(self._reserved, 9)

    @property
    def refused(self) -> int:
        """How many reservations were refused."""
        return self._refused

    @property
    def remaining(self) -> Optional[float]:
        """What can still be reserved (None: unlimited)."""
        if self.max_cost is None:
            return None
        with self._lock:
            return max(0.0, round(self.max_cost - self._spent - self._reserved, 9))

    def try_reserve(self, amount: float) -> bool:
        """Reserve ``amount`` if it fits under ``max_cost``; False (and nothing held) if not."""
        _check_amount(amount)
        with self._lock:
            if self.max_cost is not None:
                after = self._spent + self._reserved + amount
                if after > self.max_cost + self._EPSILON * max(1.0, self.max_cost):
                    self._refused += 1
                    return False
            self._reserved += amount
            return True

    def reserve(self, amount: float) -> None:
        """Like :meth:`try_reserve`, but raise :class:`BudgetExceededError` when it does not fit."""
        if not self.try_reserve(amount):
            raise BudgetExceededError(
                f"a row costing {amount:g} would exceed max_cost {self.max_cost:g} "
                f"(spent {self.spent:g}, reserved {self.reserved:g})"
            )

    def commit(self, amount: float) -> None:
        """A reserved row succeeded and is billed: move ``amount`` from reserved to spent."""
        _check_amount(amount)
        with self._lock:
            self._reserved = max(0.0, self._reserved - amount)
            self._spent += amount

    def release(self, amount: float) -> None:
        """A reserved row failed or was never submitted: it is not billed, free its reservation."""
        _check_amount(amount)
        with self._lock:
            self._reserved = max(0.0, self._reserved - amount)

    def __repr__(self) -> str:
        return f"Budget(max_cost={self.max_cost}, spent={self.spent}, reserved={self.reserved})"


def _check_amount(amount: float) -> None:
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"amount must be a finite number >= 0, got {amount}")
