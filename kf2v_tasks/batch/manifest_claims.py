"""Ids and output names a manifest's rows claim, and which rows share one.

Ids and output names must be unique in a manifest, and no row can know that alone: each
row records what it claims in one :class:`Claims` for the file, and once every row is read
:meth:`Claims.shared_errors` makes **every** row of a shared id or output invalid (not only
the later ones: which of them the user meant is anybody's guess, so none is paid for).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kf2v_tasks.batch.manifest_schema import RowError

__all__ = ["Claims"]


@dataclass(frozen=True)
class _OutputClaim:
    line: int
    name: str
    row_id: str
    from_cell: bool  # False: derived from the row's id


@dataclass
class Claims:
    """The ids and output names the rows of one manifest claim, to find the shared ones."""

    ids: dict[str, list[int]] = field(default_factory=dict)
    derived: set[int] = field(default_factory=set)  # rows whose id is row-<line>
    outputs: dict[str, list[_OutputClaim]] = field(default_factory=dict)

    def claim_id(self, row_id: str, line: int, *, derived: bool = False) -> None:
        """Row ``line`` uses ``row_id`` (``derived``: made from its line number)."""
        self.ids.setdefault(row_id, []).append(line)
        if derived:
            self.derived.add(line)

    def claim_output(self, name: str, line: int, row_id: str, *, from_cell: bool) -> None:
        """Row ``line`` writes ``name`` (compared case-insensitively: some filesystems are)."""
        claim = _OutputClaim(line, name, row_id, from_cell)
        self.outputs.setdefault(name.casefold(), []).append(claim)

    def shared_errors(self) -> dict[int, list[RowError]]:
        """Row number → the errors of every row whose id or output another row also uses."""
        errors: dict[int, list[RowError]] = {}
        shared_id: set[int] = set()
        for row_id, lines in self.ids.items():
            if len(lines) < 2:
                continue
            for line in lines:
                others = _rows([n for n in lines if n != line])
                what = f"derived id {row_id!r}" if line in self.derived else repr(row_id)
                errors.setdefault(line, []).append(
                    RowError(
                        row_number=line,
                        id=row_id,
                        column="id",
                        reason=f"{what} is also used by {others}",
                    )
                )
                shared_id.add(line)
        for claims in self.outputs.values():
            if len(claims) < 2:
                continue
            for c in claims:
                if not c.from_cell and c.line in shared_id:
                    continue  # its name comes from its id, already reported as shared
                others = [o for o in claims if o.line != c.line]
                spelt = sorted({o.name for o in others if o.name != c.name})
                also = (
                    f" (as {', '.join(repr(n) for n in spelt)}; names that differ only in "
                    "case are one file on some systems)"
                    if spelt
                    else ""
                )
                errors.setdefault(c.line, []).append(
                    RowError(
                        row_number=c.line,
                        id=c.row_id,
                        column="output" if c.from_cell else "id",
                        reason=f"output {c.name!r} is also used by "
                        f"{_rows([o.line for o in others])}{also}",
                    )
                )
        return errors


def _rows(lines: list[int]) -> str:
    """``"row 2"`` or ``"rows 2, 7"``."""
    numbers = ", ".join(str(n) for n in sorted(lines))
    return f"row{'s' if len(lines) > 1 else ''} {numbers}"
