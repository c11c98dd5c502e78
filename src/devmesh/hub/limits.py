"""Every interval, timeout and limit of the hub, with its unit in its name (tests patch them smaller)."""

from __future__ import annotations

HEARTBEAT_S = 5.0  # told to agents in `welcome`
OFFLINE_AFTER_S = 3 * HEARTBEAT_S  # an agent not heard from for this long is offline, whatever its flag
HELLO_TIMEOUT_S = 10.0  # a session must say hello this soon after the handshake
SEND_TIMEOUT_S = 10.0
JWT_TTL_S = 12 * 3600.0
ENROLL_TTL_DEFAULT_S = 24 * 3600.0
ENROLL_TTL_MAX_S = 30 * 24 * 3600.0
MESSAGE_MAX_BYTES = 1 << 20
DOCUMENT_MAX_BYTES = 1 << 20
LISTEN_RETRY_INITIAL_S = 0.2
LISTEN_RETRY_MAX_S = 5.0
HEARTBEAT_FLUSH_S = 2.0  # heartbeats are kept in memory and written together this often (<< OFFLINE_AFTER_S)
HEARTBEAT_BATCH_MAX = 500  # agents per flush transaction
STATUS_BATCH_WAIT_S = 0.1  # revision_status answers are recorded together after at most this long...
STATUS_BATCH_MAX = 200  # ...or as soon as this many wait
SWEEP_INTERVAL_S = HEARTBEAT_S  # how often each replica looks for agents that went stale elsewhere
NOTIFY_CHANNEL = "devmesh_hub"
AGENT_NAME_MAX = 255  # enroll and hello: stored cut to 128 characters, audited in full
HOSTNAME_MAX = 255
VERSION_MAX = 64
REVISION_MAX = 64  # a revision is named by its SHA-256 in hex
