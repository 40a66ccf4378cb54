"""A compact builder for hand-written histories (times in milliseconds), Elle style:

    h = H()
    scorer = h.agent("scorer", (0, 20))
    w = h.write("scorer", "credit_score/42", "n:2", (10, 12), scope=scorer)
    r = h.read("risk", "credit_score/42", "n:1", (20, 21), tier="cache")
    h.write("scorer", "credit_score/42", "n:3", (22, 23), txn="tx1")
    h.commit("tx1", at=30)  # or h.rollback("tx1", at=30)
    history = h.history()

Every method returns the span id it made, for evidence assertions. A write with `txn=`
is uncommitted until `commit(txn)`; one never followed by commit or rollback stays open.
"""

from __future__ import annotations

from otel_agent_state.core.history import History
from otel_agent_state.core.model import (
    AnomalyKind,
    FactVersion,
    Observation,
    Op,
    Scope,
    ScopeKind,
    Severity,
    Tier,
    TxnEnd,
    parse_version,
)

# Short names for assertions on anomaly shapes.
STALE, DIVERGENT, LOST, ORPHAN = (
    AnomalyKind.STALE_READ,
    AnomalyKind.DIVERGENT_VIEW,
    AnomalyKind.LOST_UPDATE,
    AnomalyKind.ORPHANED_MUTATION,
)
ERROR, WARNING = Severity.ERROR, Severity.WARNING

MS = 1_000_000
TRACE = "0" * 31 + "1"


class H:
    """`h.write("scorer", "score/42", "n:2", (10, 12))` and so on; `h.history()` at the end."""

    def __init__(self, trace: str = TRACE) -> None:
        self.trace = trace
        self.observations: list[Observation] = []
        self.scopes: list[Scope] = []
        self.txn_ends: list[TxnEnd] = []
        self._next = 0

    def _id(self) -> str:
        self._next += 1
        return format(self._next, "016x")

    def obs(self, span_id: str) -> Observation:
        [found] = [o for o in self.observations if o.span_id == span_id]
        return found

    def scope(self, span_id: str) -> Scope:
        [found] = [s for s in self.scopes if s.span_id == span_id]
        return found

    # ------------------------------------------------------------------ scopes

    def agent(self, name: str, t: tuple[int, int | None], *, failed: bool = False) -> str:
        span_id = self._id()
        end = None if t[1] is None else t[1] * MS
        self.scopes.append(
            Scope(
                span_id, self.trace, ScopeKind.AGENT, name, t[0] * MS, end, failed=failed, name=name
            )
        )
        return span_id

    def decision(self, agent: str, scope: str | None, t: tuple[int, int]) -> str:
        span_id = self._id()
        self.scopes.append(
            Scope(
                span_id,
                self.trace,
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
                self.trace,
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

    # ------------------------------------------------------------------ observations

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
        store: str = "unknown",
        consistency: str | None = None,
    ) -> str:
        """`consistency`: the model the span names (`agentstate.consistency`)."""
        return self._obs(
            agent,
            Op.READ,
            t,
            reads=((fact, version),),
            tier=tier,
            scope=scope,
            decision=decision,
            process=process,
            store=store,
            consistency=consistency,
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
        applied: bool = False,
        fields: tuple[str, ...] | None = None,
        process: str = "p1",
        store: str = "unknown",
        copy_of: str | None = None,
    ) -> str:
        """`fields`: a merge write (HSET, set_payload) of those fields, the others kept;
        `applied`: the store applied it although the operation failed; `copy_of`: the
        recorded `agentstate.write.copy_of` ("" an original)."""
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
            applied=applied,
            fields=fields,
            process=process,
            store=store,
            copy_of=copy_of,
        )

    def read_write(
        self,
        agent: str,
        fact: str,
        read: str,
        wrote: str,
        t: tuple[int, int],
        *,
        scope: str | None = None,
        process: str = "p1",
    ) -> str:
        """An atomic read-modify-write (INCR, UPDATE ... RETURNING): one span, both sides."""
        return self._obs(
            agent,
            Op.READ_WRITE,
            t,
            reads=((fact, read),),
            writes=((fact, wrote),),
            scope=scope,
            process=process,
        )

    # ------------------------------------------------------------------ transactions

    def txn_end(self, txn: str, outcome: str, at: int) -> str:
        span_id = self._id()
        self.txn_ends.append(TxnEnd(txn, span_id, self.trace, outcome, at * MS))  # type: ignore[arg-type]
        return span_id

    def commit(self, txn: str, at: int) -> str:
        return self.txn_end(txn, "commit", at)

    def rollback(self, txn: str, at: int) -> str:
        return self.txn_end(txn, "rollback", at)

    # ------------------------------------------------------------------ internals

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
        applied: bool = False,
        fields: tuple[str, ...] | None = None,
        process: str = "p1",
        store: str = "unknown",
        consistency: str | None = None,
        copy_of: str | None = None,
    ) -> str:
        span_id = self._id()
        merged = None if fields is None else frozenset(fields)
        self.observations.append(
            Observation(
                span_id=span_id,
                trace_id=self.trace,
                agent=agent,
                op=op,
                start_ns=t[0] * MS,
                end_ns=t[1] * MS,
                reads=tuple(FactVersion(f, parse_version(v)) for f, v in reads),
                writes=tuple(FactVersion(f, parse_version(v), merged) for f, v in writes),
                store=store,
                tier=Tier(tier),
                agent_scope=scope,
                decision=decision,
                mutation=mutation,
                txn_id=txn,
                committed=txn is None,
                failed=failed,
                applied=applied,
                process=process,
                consistency=consistency,
                copy_of=() if copy_of is None else (copy_of,),
            )
        )
        return span_id

    def history(self) -> History:
        return History.of(self.observations, self.scopes, self.txn_ends)
