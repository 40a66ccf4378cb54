"""A compact builder for hand-written histories (times in milliseconds)."""

from __future__ import annotations

from otel_agent_state.history import History
from otel_agent_state.model import (
    FactVersion,
    Observation,
    Op,
    Scope,
    ScopeKind,
    Tier,
    TxnEnd,
    parse_version,
)

MS = 1_000_000
TRACE = "0" * 31 + "1"


class H:
    """`h.write("scorer", "score/42", "n:2", t=(10, 12))` and so on; `h.history()` at the end.

    Every method returns the span id it made, for evidence assertions.
    """

    def __init__(self) -> None:
        self.observations: list[Observation] = []
        self.scopes: list[Scope] = []
        self.txn_ends: list[TxnEnd] = []
        self._next = 0

    def _id(self) -> str:
        self._next += 1
        return format(self._next, "016x")

    def agent(self, name: str, t: tuple[int, int | None], *, failed: bool = False) -> str:
        span_id = self._id()
        end = None if t[1] is None else t[1] * MS
        self.scopes.append(
            Scope(span_id, TRACE, ScopeKind.AGENT, name, t[0] * MS, end, failed=failed, name=name)
        )
        return span_id

    def decision(self, agent: str, scope: str | None, t: tuple[int, int]) -> str:
        span_id = self._id()
        self.scopes.append(
            Scope(
                span_id,
                TRACE,
                ScopeKind.DECISION,
                agent,
                t[0] * MS,
                t[1] * MS,
                parent_agent_scope=scope,
                name="decide",
            )
        )
        return span_id

    def mutation(
        self,
        agent: str,
        scope: str | None,
        t: tuple[int, int | None],
        *,
        failed: bool = False,
        name: str = "transfer",
    ) -> str:
        span_id = self._id()
        end = None if t[1] is None else t[1] * MS
        self.scopes.append(
            Scope(
                span_id,
                TRACE,
                ScopeKind.MUTATION,
                agent,
                t[0] * MS,
                end,
                failed=failed,
                parent_agent_scope=scope,
                name=name,
            )
        )
        return span_id

    def read(
        self,
        agent: str,
        fact: str,
        version: str,
        t: tuple[int, int],
        *,
        tier: str = "primary",
        scope: str | None = None,
        decision: str | None = None,
        process: str = "p1",
    ) -> str:
        return self._obs(
            agent,
            Op.READ,
            t,
            reads=((fact, version),),
            tier=tier,
            scope=scope,
            decision=decision,
            process=process,
        )

    def write(
        self,
        agent: str,
        fact: str,
        version: str,
        t: tuple[int, int],
        *,
        tier: str = "primary",
        scope: str | None = None,
        txn: str | None = None,
        mutation: str | None = None,
        failed: bool = False,
        process: str = "p1",
    ) -> str:
        return self._obs(
            agent,
            Op.DELETE if version == "none" else Op.WRITE,
            t,
            writes=((fact, version),),
            tier=tier,
            scope=scope,
            txn=txn,
            mutation=mutation,
            failed=failed,
            process=process,
        )

    def txn_end(self, txn: str, outcome: str, at: int) -> str:
        span_id = self._id()
        self.txn_ends.append(TxnEnd(txn, span_id, TRACE, outcome, at * MS))  # type: ignore[arg-type]
        return span_id

    def _obs(
        self,
        agent: str,
        op: Op,
        t: tuple[int, int],
        *,
        reads: tuple[tuple[str, str], ...] = (),
        writes: tuple[tuple[str, str], ...] = (),
        tier: str = "primary",
        scope: str | None = None,
        decision: str | None = None,
        txn: str | None = None,
        mutation: str | None = None,
        failed: bool = False,
        process: str = "p1",
    ) -> str:
        span_id = self._id()
        self.observations.append(
            Observation(
                span_id=span_id,
                trace_id=TRACE,
                agent=agent,
                op=op,
                start_ns=t[0] * MS,
                end_ns=t[1] * MS,
                reads=tuple(FactVersion(f, parse_version(v)) for f, v in reads),
                writes=tuple(FactVersion(f, parse_version(v)) for f, v in writes),
                tier=Tier(tier),
                agent_scope=scope,
                decision=decision,
                mutation=mutation,
                txn_id=txn,
                committed=txn is None,
                failed=failed,
                process=process,
            )
        )
        return span_id

    def history(self) -> History:
        return History.of(self.observations, self.scopes, self.txn_ends)
