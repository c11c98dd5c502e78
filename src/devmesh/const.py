"""Every timeout, interval and limit of devmesh, in one place, with its unit in its name.

Tests patch these smaller through fixtures instead of sleeping.
"""

from __future__ import annotations

# Config
CONFIG_NAMES = ("devmesh.toml", "devmesh.yaml", "devmesh.yml")
STATE_DIR_NAME = ".devmesh"
CONFIG_POLL_INTERVAL_S = 0.1  # config files are polled: changes apply within ~0.2 s

# Default addresses (DESIGN §2)
DEFAULT_LISTEN = "127.0.0.1:7080"
DEFAULT_ADMIN = "127.0.0.1:7070"
DEFAULT_MESH = "0.0.0.0:7090"

# Supervisor
STOP_GRACE_S = 5.0
KILL_WAIT_S = 2.0
RESTART_BACKOFF_INITIAL_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
RESTART_BACKOFF_RESET_AFTER_S = 60.0
WATCH_DEBOUNCE_MS = 200
LOG_TAIL_LINES = 200

# Health
HEALTH_INTERVAL_S = 2.0
HEALTH_TIMEOUT_S = 1.0
HEALTH_UNHEALTHY_AFTER = 3
# While a service is starting, probe more often so `up` does not wait a whole interval.
HEALTH_STARTING_INTERVAL_S = 0.02
HEALTH_STARTING_FAST_FOR_S = 5.0
HEALTH_STARTING_INTERVAL_MAX_S = 0.5
# Without a health check a service started elsewhere is probed on its port at this interval.
PORT_PROBE_INTERVAL_S = 1.0

# Agent and CLI
AGENT_START_TIMEOUT_S = 15.0
# The admin API's imports take ~0.5 s of CPU: they wait until the services are healthy, so as not to slow
# them down, but no longer than this.
ADMIN_START_DELAY_MAX_S = 2.0
AGENT_STOP_TIMEOUT_S = 30.0
AGENT_START_WAIT_S = 15.0  # `devmesh down` waits this long for a starting agent to write agent.json
ADMIN_REQUEST_TIMEOUT_S = 5.0
LOG_FILE_MAX_BYTES = 20 * 1024 * 1024
LOG_LINE_MAX_BYTES = 64 * 1024

# Proxy (data plane). Timeouts are enforced by a sweep every PROXY_SWEEP_INTERVAL_S, not a timer per
# request: a request only writes a deadline.
PROXY_SWEEP_INTERVAL_S = 1.0
PROXY_HEADER_TIMEOUT_S = 10.0  # from a request's first byte to its last header line (slowloris)
PROXY_BODY_IDLE_TIMEOUT_S = 60.0  # between two pieces of a request body
PROXY_KEEPALIVE_TIMEOUT_S = 75.0  # an idle client connection (nginx's default)
PROXY_UPSTREAM_IDLE_TIMEOUT_S = 60.0  # a pooled upstream connection nobody uses
PROXY_UPSTREAM_IDLE_MAX = 256  # pooled idle connections per endpoint
PROXY_CONNECT_TIMEOUT_S = 5.0
PROXY_START_WAIT_S = 30.0  # a request for a service that is (re)starting waits this long for it
PROXY_MAX_HEADER_BYTES = 32 * 1024  # request line and header block, as nginx's 4 x 8k
PROXY_MAX_HEADERS = 128
PROXY_MAX_URL_BYTES = 8 * 1024
PROXY_REPLAY_MAX_BYTES = 1024 * 1024  # request body kept to retry on another endpoint
PROXY_BUFFER_HIGH_BYTES = 256 * 1024  # buffered body beyond which the sender is paused
ACCESS_LOG_FLUSH_S = 0.05  # short batches: formatting one is a pause for every request in flight

# Mirror (`mirror = "https://..."`: a copy of each request, fire-and-forget). Copies never wait, pause
# or change the real request: past these bounds they are dropped, and counted (devmesh_mirror_total).
MIRROR_MAX_BODY_BYTES = PROXY_REPLAY_MAX_BYTES  # a request with a larger body is not mirrored
MIRROR_MAX_IN_FLIGHT = 8  # copies per service waiting for the mirror's answer; more are dropped
MIRROR_MAX_BUFFERED_BYTES = 16 * 1024 * 1024  # bytes of all copies in flight; more are dropped
MIRROR_TIMEOUT_S = 10.0  # a copy's answer; later, its connection is dropped
MIRROR_DOWN_BACKOFF_S = 1.0  # after a failed connect, copies are dropped this long without trying

# Remote fallback (`remote = "https://..."`): probed in the background for its health and version.
REMOTE_PROBE_INTERVAL_S = 5.0
REMOTE_PROBE_TIMEOUT_S = 2.0  # a probe's connect (with TLS), then its answer, each within this
REMOTE_PROBE_UNHEALTHY_AFTER = 2  # failed probes in a row before a remote that answered is taken out
REMOTE_PROBE_CONCURRENCY = 8  # probes at once, whatever the number of remotes
REMOTE_PROBE_MAX_HEAD_BYTES = 64 * 1024  # a remote's answer head; a longer one is a failed probe
REMOTE_VERSION_MAX_BYTES = 4096  # `GET /version`: body read at most

# Peers (agent to agent, on the mesh port)
MESH_REPLAY_WINDOW_S = 30.0  # a signed request older or newer than this is refused
PEER_POLL_INTERVAL_S = 1.0  # each peer's catalog is fetched this often: it is also the liveness check
PEER_FETCH_TIMEOUT_S = 1.0
PEER_EXPIRE_S = 3.0  # a peer that has not answered for this long leaves the route table

# Observability (events stream, dashboard)
EVENTS_QUEUE_MAX = 2000  # events queued for one stream client before it is dropped (it reconnects)
TRAFFIC_SAMPLE_INTERVAL_S = 1.0
TRAFFIC_HISTORY_SAMPLES = 60  # the charts' last minute, sent to a dashboard as it connects
TRAFFIC_REQUESTS_MAX = 50  # finished requests carried by one traffic sample
EVENTS_HELLO_REQUESTS = 200  # recent requests in the first message of the stream
REPLAY_TIMEOUT_S = 30.0  # `devmesh replay`: the whole replayed exchange
