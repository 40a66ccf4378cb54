"""Names fixed by SPEC.md: span attributes, span and event names, metric names.

Everything that leaves the process under a name is spelled here once.
"""

from __future__ import annotations

from typing import Final

# Observation span attributes (SPEC §3).
OP: Final = "agentstate.op"
STORE: Final = "agentstate.store"
TIER: Final = "agentstate.tier"
READ_FACTS: Final = "agentstate.read.facts"
READ_VERSIONS: Final = "agentstate.read.versions"
WRITE_FACTS: Final = "agentstate.write.facts"
WRITE_VERSIONS: Final = "agentstate.write.versions"
TXN_ID: Final = "agentstate.txn.id"
COMMITTED: Final = "agentstate.committed"
TXN_OUTCOME: Final = "agentstate.txn.outcome"
CONSISTENCY: Final = "agentstate.consistency"
# SPEC §3: parallel to write.facts; the version a copy (cache fill, index sync) came from
WRITE_COPY_OF: Final = "agentstate.write.copy_of"
LINK: Final = "agentstate.link"  # parallel to write.facts: a zero-config cache link, and why
# Ours, beyond the SPEC table: parallel to write.facts, the fields (hash fields, payload keys)
# each write merged into the stored value, comma-separated ("," and "%" percent-encoded);
# "" for a write that replaced the whole value. Field names only, never values.
WRITE_FIELDS: Final = "agentstate.write.fields"
WRITE_STORE_ORDER: Final = "agentstate.write.store_order"  # a store's own operation counter
# Ours, beyond the SPEC table: statements whose facts could not be resolved to rows.
UNRESOLVED: Final = "agentstate.unresolved"
# Ours: the kind of scope span opened by the API (agent, decision, mutation, workflow).
SCOPE: Final = "agentstate.scope"
MUTATION_NAME: Final = "agentstate.mutation.name"
MUTATION_OUTCOME: Final = "agentstate.mutation.outcome"

DECISION_INTENT: Final = "agentstate.decision.intent"
DECISION_POLICY: Final = "agentstate.decision.policy"
DECISION_INPUTS: Final = "agentstate.decision.inputs"
DECISION_OUTCOME: Final = "agentstate.decision.outcome"

# GenAI semantic conventions (development status; no Python constants yet for all).
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
GEN_AI_AGENT_ID: Final = "gen_ai.agent.id"
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"

# Database semantic conventions (stable names).
DB_SYSTEM_NAME: Final = "db.system.name"
DB_NAMESPACE: Final = "db.namespace"
DB_COLLECTION_NAME: Final = "db.collection.name"
DB_OPERATION_NAME: Final = "db.operation.name"
DB_QUERY_SUMMARY: Final = "db.query.summary"

# Anomaly reporting (SPEC §4).
ANOMALY_SPAN_PREFIX: Final = "agentstate.anomaly"
ANOMALY_EVENT: Final = "agentstate.anomaly"
ANOMALY_KIND: Final = "agentstate.anomaly.kind"
ANOMALY_FACT: Final = "agentstate.anomaly.fact"
ANOMALY_OBSERVED: Final = "agentstate.anomaly.observed_version"
ANOMALY_EXPECTED: Final = "agentstate.anomaly.expected_version"
ANOMALY_LAG_MS: Final = "agentstate.anomaly.lag_ms"
ANOMALY_AGENTS: Final = "agentstate.anomaly.agents"
ANOMALY_SEVERITY: Final = "agentstate.anomaly.severity"
ANOMALY_SUMMARY: Final = "agentstate.anomaly.summary"

METRIC_ANOMALIES: Final = "agentstate.anomalies"
METRIC_STALE_LAG: Final = "agentstate.stale_read.lag"
METRIC_OBSERVATIONS: Final = "agentstate.observations"

# The instrumentation scope of every span this package creates itself.
SCOPE_NAME: Final = "otel_agent_state"

# GenAI memory conventions (development status, semantic-conventions-genai; no Python
# constants upstream yet). Emitted on our memory-layer spans (LangGraph store, mem0) and read
# from other instrumentations' memory and retrieval spans (`genai_memory`).
GEN_AI_MEMORY_STORE_ID: Final = "gen_ai.memory.store.id"
GEN_AI_MEMORY_RECORD_ID: Final = "gen_ai.memory.record.id"
GEN_AI_MEMORY_RECORD_COUNT: Final = "gen_ai.memory.record.count"
GEN_AI_RETRIEVAL_DOCUMENTS: Final = "gen_ai.retrieval.documents"  # JSON list of {id, score}
OP_SEARCH_MEMORY: Final = "search_memory"
OP_CREATE_MEMORY: Final = "create_memory"
OP_UPDATE_MEMORY: Final = "update_memory"
OP_UPSERT_MEMORY: Final = "upsert_memory"
OP_DELETE_MEMORY: Final = "delete_memory"
OP_RETRIEVAL: Final = "retrieval"
