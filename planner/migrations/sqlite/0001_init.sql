-- latplan store, SQLite dialect. Keep in step with ../mysql/0001_init.sql (same tables, same columns).
-- Unsigned 64-bit kernel values (timestamps, sequence numbers, byte offsets) are stored as signed
-- 64-bit integers with the same bits; every real value is below 2^63.

CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    started_unix_ms INTEGER NOT NULL,
    ended_unix_ms INTEGER,
    status TEXT NOT NULL DEFAULT 'running'
);

CREATE TABLE IF NOT EXISTS hosts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    parent TEXT,
    clock_domain TEXT,
    boot_id TEXT,
    address TEXT,
    UNIQUE (session_id, name)
);

CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id INTEGER NOT NULL,
    host_id INTEGER NOT NULL,
    boot_id TEXT NOT NULL,
    started_ns INTEGER NOT NULL,
    observer_version TEXT NOT NULL,
    sample_size INTEGER NOT NULL,
    netns TEXT NOT NULL,
    first_seen_unix_ms INTEGER NOT NULL,
    bye_records_total INTEGER,
    bye_reason TEXT,
    UNIQUE (host_id, boot_id, started_ns)
);

CREATE TABLE IF NOT EXISTS interfaces (
    run_id INTEGER NOT NULL,
    host_id INTEGER NOT NULL,
    ifindex INTEGER NOT NULL,
    netns INTEGER NOT NULL,
    name TEXT NOT NULL,
    ingress_mode TEXT NOT NULL,
    PRIMARY KEY (run_id, netns, ifindex)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS clock_fits (
    session_id INTEGER NOT NULL,
    domain TEXT NOT NULL,
    valid_from_host_ns INTEGER NOT NULL,
    ref_host_ns INTEGER NOT NULL,
    offset_ns REAL NOT NULL,
    drift_ppm REAL NOT NULL,
    error_bound_ns REAL NOT NULL,
    samples INTEGER NOT NULL,
    min_delay_ns INTEGER NOT NULL,
    PRIMARY KEY (session_id, domain, valid_from_host_ns)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS flows (
    session_id INTEGER NOT NULL,
    flow_id INTEGER NOT NULL,
    saddr BLOB NOT NULL,
    daddr BLOB NOT NULL,
    sport INTEGER NOT NULL,
    dport INTEGER NOT NULL,
    PRIMARY KEY (session_id, flow_id)
) WITHOUT ROWID;

-- One row per record an observer run shipped; (run_id, record_seq) makes re-delivery idempotent.
CREATE TABLE IF NOT EXISTS samples (
    run_id INTEGER NOT NULL,
    record_seq INTEGER NOT NULL,
    ts_ns INTEGER NOT NULL,
    flow_id INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL,
    len INTEGER NOT NULL,
    layer INTEGER NOT NULL,
    ifindex INTEGER NOT NULL,
    netns INTEGER NOT NULL,
    cpu INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    PRIMARY KEY (run_id, record_seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS observer_stats (
    run_id INTEGER NOT NULL,
    ts_ns INTEGER NOT NULL,
    records_sent INTEGER NOT NULL,
    records_dropped INTEGER NOT NULL,
    cpu_percent REAL NOT NULL,
    PRIMARY KEY (run_id, ts_ns)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS layer_stats (
    run_id INTEGER NOT NULL,
    ts_ns INTEGER NOT NULL,
    layer INTEGER NOT NULL,
    seen INTEGER NOT NULL,
    sampled INTEGER NOT NULL,
    ringbuf_full INTEGER NOT NULL,
    rate_limited INTEGER NOT NULL,
    PRIMARY KEY (run_id, ts_ns, layer)
) WITHOUT ROWID;

-- Missing record ranges [from_seq, to_seq) of a run, found by the gap scan at the end of collection.
CREATE TABLE IF NOT EXISTS gaps (
    run_id INTEGER NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    noted_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, from_seq)
) WITHOUT ROWID;

-- Undecodable input on a host's stream: what it was, and how many bytes were skipped.
CREATE TABLE IF NOT EXISTS stream_errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id INTEGER NOT NULL,
    host TEXT NOT NULL,
    at_unix_ms INTEGER NOT NULL,
    error TEXT NOT NULL,
    skipped_bytes INTEGER NOT NULL
);

-- Analysis output. row_kind 'sample': one latency (t_ns = manager time of the first observation);
-- row_kind 'summary': one statistic `stat` (p50, p99, count, ...) of the segment over the flow.
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id INTEGER NOT NULL,
    flow_id INTEGER,
    segment TEXT NOT NULL,
    row_kind TEXT NOT NULL,
    stat TEXT,
    t_ns INTEGER,
    byte_offset INTEGER,
    value REAL NOT NULL,
    flagged INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS segments_by_flow ON segments (session_id, flow_id, segment);
