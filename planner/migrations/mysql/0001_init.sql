-- latplan store, MySQL/MariaDB dialect. Keep in step with ../sqlite/0001_init.sql (same tables, same columns).
-- Unsigned 64-bit kernel values (timestamps, sequence numbers, byte offsets) are stored as signed
-- 64-bit integers with the same bits; every real value is below 2^63.

CREATE TABLE IF NOT EXISTS sessions (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) NOT NULL UNIQUE,
    started_unix_ms BIGINT NOT NULL,
    ended_unix_ms BIGINT,
    status VARCHAR(255) NOT NULL DEFAULT 'running'
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS hosts (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    session_id BIGINT NOT NULL,
    name VARCHAR(255) NOT NULL,
    kind VARCHAR(255) NOT NULL,
    parent VARCHAR(255),
    clock_domain VARCHAR(255),
    boot_id VARCHAR(255),
    address VARCHAR(255),
    UNIQUE (session_id, name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS runs (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    session_id BIGINT NOT NULL,
    host_id BIGINT NOT NULL,
    boot_id VARCHAR(255) NOT NULL,
    started_ns BIGINT NOT NULL,
    observer_version VARCHAR(255) NOT NULL,
    sample_size BIGINT NOT NULL,
    netns TEXT NOT NULL,
    first_seen_unix_ms BIGINT NOT NULL,
    bye_records_total BIGINT,
    bye_reason TEXT,
    UNIQUE (host_id, boot_id, started_ns)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS interfaces (
    run_id BIGINT NOT NULL,
    host_id BIGINT NOT NULL,
    ifindex BIGINT NOT NULL,
    netns BIGINT NOT NULL,
    name VARCHAR(255) NOT NULL,
    ingress_mode VARCHAR(255) NOT NULL,
    PRIMARY KEY (run_id, netns, ifindex)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS clock_fits (
    session_id BIGINT NOT NULL,
    domain VARCHAR(255) NOT NULL,
    valid_from_host_ns BIGINT NOT NULL,
    ref_host_ns BIGINT NOT NULL,
    offset_ns DOUBLE NOT NULL,
    drift_ppm DOUBLE NOT NULL,
    error_bound_ns DOUBLE NOT NULL,
    samples BIGINT NOT NULL,
    min_delay_ns BIGINT NOT NULL,
    PRIMARY KEY (session_id, domain, valid_from_host_ns)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS flows (
    session_id BIGINT NOT NULL,
    flow_id BIGINT NOT NULL,
    saddr VARBINARY(16) NOT NULL,
    daddr VARBINARY(16) NOT NULL,
    sport BIGINT NOT NULL,
    dport BIGINT NOT NULL,
    PRIMARY KEY (session_id, flow_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- One row per record an observer run shipped; (run_id, record_seq) makes re-delivery idempotent.
CREATE TABLE IF NOT EXISTS samples (
    run_id BIGINT NOT NULL,
    record_seq BIGINT NOT NULL,
    ts_ns BIGINT NOT NULL,
    flow_id BIGINT NOT NULL,
    byte_offset BIGINT NOT NULL,
    -- Narrower (signed: sqlx reads signed integers) where the value range allows: rows stay small.
    len INT NOT NULL,
    layer SMALLINT NOT NULL,
    ifindex INT NOT NULL,
    netns BIGINT NOT NULL,
    cpu INT NOT NULL,
    flags SMALLINT NOT NULL,
    PRIMARY KEY (run_id, record_seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS observer_stats (
    run_id BIGINT NOT NULL,
    ts_ns BIGINT NOT NULL,
    records_sent BIGINT NOT NULL,
    records_dropped BIGINT NOT NULL,
    cpu_percent DOUBLE NOT NULL,
    PRIMARY KEY (run_id, ts_ns)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS layer_stats (
    run_id BIGINT NOT NULL,
    ts_ns BIGINT NOT NULL,
    layer BIGINT NOT NULL,
    seen BIGINT NOT NULL,
    sampled BIGINT NOT NULL,
    ringbuf_full BIGINT NOT NULL,
    rate_limited BIGINT NOT NULL,
    PRIMARY KEY (run_id, ts_ns, layer)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Missing record ranges [from_seq, to_seq) of a run, found by the gap scan at the end of collection.
CREATE TABLE IF NOT EXISTS gaps (
    run_id BIGINT NOT NULL,
    from_seq BIGINT NOT NULL,
    to_seq BIGINT NOT NULL,
    kind VARCHAR(255) NOT NULL,
    noted_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (run_id, from_seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Undecodable input on a host's stream: what it was, and how many bytes were skipped.
CREATE TABLE IF NOT EXISTS stream_errors (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    session_id BIGINT NOT NULL,
    host VARCHAR(255) NOT NULL,
    at_unix_ms BIGINT NOT NULL,
    error TEXT NOT NULL,
    skipped_bytes BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Analysis output. row_kind 'sample': one latency (t_ns = manager time of the first observation);
-- row_kind 'summary': one statistic `stat` (p50, p99, count, ...) of the segment over the flow.
CREATE TABLE IF NOT EXISTS segments (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    session_id BIGINT NOT NULL,
    flow_id BIGINT,
    segment VARCHAR(255) NOT NULL,
    row_kind VARCHAR(255) NOT NULL,
    stat VARCHAR(255),
    t_ns BIGINT,
    byte_offset BIGINT,
    value DOUBLE NOT NULL,
    flagged BIGINT NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE INDEX IF NOT EXISTS segments_by_flow ON segments (session_id, flow_id, segment);
