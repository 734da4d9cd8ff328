//! Redis Streams as the bus from observers to the collector (large fleets, detached sessions).
//!
//! Layout, per session `S` and host `H` (names limited to `[A-Za-z0-9._-]`, so they can never
//! widen an ACL key pattern):
//! - `latplan:S:H:records` — a stream; each entry is one wire frame: fields `run` (the observer
//!   run's tag, `BOOT_ID/STARTED_NS`) and `f` (the frame bytes). The observer trims it with
//!   `XADD ... MAXLEN ~ N`; entries trimmed before the collector read them show up as gaps.
//! - `latplan:S:H:status` — the observer's heartbeat (JSON), with a TTL: absent = not alive.
//! - ACL user `latplan-S-H`, created by [`RedisBus::provision`] with a random password, allowed
//!   only `XADD`, `SET`, `EXPIRE`, `PING` on `latplan:S:H:*`. Its credentials reach the observer
//!   as one JSON line on stdin ([`ObserverRedisConfig::to_stdin_line`]), never argv or a file.
//!
//! The collector reads every host's stream with one consumer group (`latplan-collector`) and
//! acknowledges an entry only after the batch holding it has committed, so a collector killed at
//! any point loses nothing: restarted with the same consumer name it re-reads its own pending
//! entries; any other collector of the session claims them (`XAUTOCLAIM`) once they have been
//! idle for [`SourceOptions::claim_idle`]. Stores are idempotent, so re-storing is harmless.
//! After a Redis restart (its data and ACL users gone), the collector re-creates the users and
//! groups; observers reconnect with the same credentials; what Redis lost is reported as gaps.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use latplan_common::wire::Frame;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

use super::{Ack, CollectError, Collector, Msg, RunTag};
use crate::store::{Secret, read_password_file, redact};

/// Environment variable with the password of the Redis account latplan itself uses.
pub const REDIS_PASSWORD_ENV: &str = "LATPLAN_REDIS_PASSWORD";
/// Environment variable naming a 0600 file holding that password.
pub const REDIS_PASSWORD_FILE_ENV: &str = "LATPLAN_REDIS_PASSWORD_FILE";
/// Environment variable naming a PEM file with the CA that signs the Redis server's certificate
/// (for `rediss://` with a private CA; otherwise the webpki roots are used).
pub const REDIS_CA_ENV: &str = "LATPLAN_REDIS_CA";
/// The consumer group every collector of a session reads with.
pub const GROUP: &str = "latplan-collector";
/// Default bound on a host's stream length, in entries (frames).
pub const DEFAULT_MAXLEN: u64 = 100_000;

pub fn stream_key(session: &str, host: &str) -> String {
    format!("latplan:{session}:{host}:records")
}

pub fn status_key(session: &str, host: &str) -> String {
    format!("latplan:{session}:{host}:status")
}

/// The Redis-mode lease (docs/session.md): latplan renews it (`run`, with a TTL) while the session
/// runs and sets it to `stop` at the end; the observer only reads it.
pub fn lease_key(session: &str, host: &str) -> String {
    format!("latplan:{session}:{host}:lease")
}

/// TTL of a lease key, renewed every [`crate::session::HEARTBEAT_SECONDS`]: once latplan is gone
/// the key vanishes after this, and the observer detaches its own lease later.
pub const LEASE_KEY_TTL_SECS: u64 = 6;

pub fn acl_user(session: &str, host: &str) -> String {
    format!("latplan-{session}-{host}")
}

/// Refuses names that could escape their key pattern (`*`, `?`, `[`, `:`, spaces, …).
pub fn check_name(what: &str, name: &str) -> Result<(), CollectError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CollectError::Redis(format!(
            "{what} name {name:?} cannot be used in Redis keys: use letters, digits, '.', '_' and '-' only"
        )))
    }
}

/// Everything an observer needs to write its stream: one JSON line on its stdin.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObserverRedisConfig {
    /// `redis://host:port` or `rediss://host:port`, without credentials.
    pub url: String,
    pub username: String,
    pub password: String,
    pub stream_key: String,
    pub status_key: String,
    /// Approximate bound on the stream length (`XADD MAXLEN ~`).
    pub maxlen: u64,
    /// Seconds the heartbeat key lives; the observer refreshes it well before.
    pub status_ttl_secs: u64,
    /// PEM CA certificate for `rediss://` with a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// The lease key the observer polls ([`lease_key`]); without it the lease is stdin's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_key: Option<String>,
}

impl std::fmt::Debug for ObserverRedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserverRedisConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &"***")
            .field("stream_key", &self.stream_key)
            .finish_non_exhaustive()
    }
}

impl ObserverRedisConfig {
    /// The line to write to the observer's stdin (newline-terminated). It holds a secret:
    /// write it to the process' stdin only, never to a log.
    pub fn to_stdin_line(&self) -> String {
        let mut s = serde_json::to_string(&serde_json::json!({ "redis": self }))
            .expect("config serializes");
        s.push('\n');
        s
    }
}

fn redis_err(what: &str) -> impl FnOnce(redis::RedisError) -> CollectError + '_ {
    move |e| CollectError::Redis(format!("failed to {what}: {e}"))
}

/// The collector's own Redis connection: provisions observer accounts and streams.
pub struct RedisBus {
    client: Client,
    /// The URL without credentials, as given to observers.
    public_url: String,
    ca_pem: Option<String>,
    /// Accounts created in this process, re-created after a Redis restart.
    users: Mutex<HashMap<String, (String, Secret)>>,
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl RedisBus {
    /// Connects to `url` (`redis://[user@]host:port[/db]` or `rediss://…`), with the password from
    /// [`REDIS_PASSWORD_ENV`] or [`REDIS_PASSWORD_FILE_ENV`], and the CA from [`REDIS_CA_ENV`].
    pub async fn connect(url: &str) -> Result<RedisBus, CollectError> {
        let password = match (
            std::env::var(REDIS_PASSWORD_ENV),
            std::env::var_os(REDIS_PASSWORD_FILE_ENV),
        ) {
            (Ok(p), _) => Some(Secret::new(p)),
            (_, Some(f)) => Some(
                read_password_file(std::path::Path::new(&f))
                    .map_err(|e| CollectError::Redis(e.to_string()))?,
            ),
            _ => None,
        };
        let ca = match std::env::var_os(REDIS_CA_ENV) {
            Some(p) => Some(std::fs::read_to_string(&p).map_err(|e| {
                CollectError::Redis(format!(
                    "failed to read the Redis CA file {}: {e}",
                    std::path::Path::new(&p).display()
                ))
            })?),
            None => None,
        };
        RedisBus::connect_with(url, password, ca).await
    }

    pub async fn connect_with(
        url: &str,
        password: Option<Secret>,
        ca_pem: Option<String>,
    ) -> Result<RedisBus, CollectError> {
        let client = build_client(url, None, password.as_ref(), ca_pem.as_deref())?;
        let public_url = public_url(url)?;
        let bus = RedisBus {
            client,
            public_url,
            ca_pem,
            users: Mutex::default(),
            conn: Mutex::default(),
        };
        let mut c = bus.conn().await?;
        redis::cmd("PING")
            .query_async::<()>(&mut c)
            .await
            .map_err(redis_err("reach Redis"))?;
        Ok(bus)
    }

    async fn conn(&self) -> Result<MultiplexedConnection, CollectError> {
        let mut g = self.conn.lock().await;
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let c = connect(&self.client).await?;
        *g = Some(c.clone());
        Ok(c)
    }

    /// Forgets the cached connection after an error, so the next call reconnects.
    async fn reset(&self) {
        *self.conn.lock().await = None;
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Creates (or resets) the account of `host` in `session`, its stream and the collector's
    /// consumer group, and returns what the observer needs.
    pub async fn provision(
        &self,
        session: &str,
        host: &str,
        maxlen: u64,
    ) -> Result<ObserverRedisConfig, CollectError> {
        check_name("session", session)?;
        check_name("host", host)?;
        let user = acl_user(session, host);
        let password = Secret::new(random_hex(32)?);
        self.set_user(session, host, &user, &password).await?;
        self.users.lock().await.insert(
            format!("{session}\n{host}"),
            (user.clone(), password.clone()),
        );
        self.ensure_group(&stream_key(session, host)).await?;
        Ok(ObserverRedisConfig {
            url: self.public_url.clone(),
            username: user,
            password: password.expose().to_string(),
            stream_key: stream_key(session, host),
            status_key: status_key(session, host),
            maxlen,
            status_ttl_secs: 10,
            ca_pem: self.ca_pem.clone(),
            lease_key: Some(lease_key(session, host)),
        })
    }

    async fn set_user(
        &self,
        session: &str,
        host: &str,
        user: &str,
        password: &Secret,
    ) -> Result<(), CollectError> {
        let mut c = self.conn().await?;
        let pass = format!(">{}", password.expose());
        // Its stream and heartbeat read-write; its lease read-only (`%R~`), so an observer can
        // never extend its own lease.
        let r = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(user)
            .arg("reset")
            .arg("on")
            .arg(pass)
            .arg(format!("~{}", stream_key(session, host)))
            .arg(format!("~{}", status_key(session, host)))
            .arg(format!("%R~{}", lease_key(session, host)))
            .arg("resetchannels")
            .arg("-@all")
            .arg("+xadd")
            .arg("+set")
            .arg("+get")
            .arg("+expire")
            .arg("+ping")
            .query_async::<()>(&mut c)
            .await;
        if r.is_err() {
            self.reset().await;
        }
        r.map_err(redis_err("create the observer's Redis account"))
    }

    async fn ensure_group(&self, key: &str) -> Result<(), CollectError> {
        let mut c = self.conn().await?;
        ensure_group(&mut c, key).await
    }

    /// Re-creates every account and group this bus provisioned (after a Redis restart lost them).
    pub async fn reprovision(&self) -> Result<usize, CollectError> {
        let users: Vec<(String, String, Secret)> = self
            .users
            .lock()
            .await
            .iter()
            .map(|(k, (u, p))| (k.clone(), u.clone(), p.clone()))
            .collect();
        let n = users.len();
        for (k, user, pw) in users {
            let (s, h) = k.split_once('\n').expect("key is session\\nhost");
            self.set_user(s, h, &user, &pw).await?;
            self.ensure_group(&stream_key(s, h)).await?;
        }
        Ok(n)
    }

    /// Deletes the account of `host` (teardown); its keys stay until [`Self::delete_keys`].
    pub async fn revoke(&self, session: &str, host: &str) -> Result<(), CollectError> {
        check_name("session", session)?;
        check_name("host", host)?;
        self.users
            .lock()
            .await
            .remove(&format!("{session}\n{host}"));
        let mut c = self.conn().await?;
        redis::cmd("ACL")
            .arg("DELUSER")
            .arg(acl_user(session, host))
            .query_async::<()>(&mut c)
            .await
            .map_err(redis_err("delete an observer account"))
    }

    /// Renews the leases of `hosts` (value `run`, TTL [`LEASE_KEY_TTL_SECS`]) in one round trip.
    pub async fn renew_leases(&self, session: &str, hosts: &[String]) -> Result<(), CollectError> {
        self.set_leases(session, hosts, "run").await
    }

    /// Asks the observers of `hosts` to detach, flush, say goodbye and exit (value `stop`).
    pub async fn stop_leases(&self, session: &str, hosts: &[String]) -> Result<(), CollectError> {
        self.set_leases(session, hosts, "stop").await
    }

    async fn set_leases(
        &self,
        session: &str,
        hosts: &[String],
        value: &str,
    ) -> Result<(), CollectError> {
        let mut p = redis::pipe();
        for h in hosts {
            p.cmd("SET")
                .arg(lease_key(session, h))
                .arg(value)
                .arg("EX")
                .arg(LEASE_KEY_TTL_SECS)
                .ignore();
        }
        let mut c = self.conn().await?;
        let r = p.query_async::<()>(&mut c).await;
        if r.is_err() {
            self.reset().await;
        }
        r.map_err(redis_err("renew the observers' leases"))
    }

    /// Deletes the stream and status keys of `host` (after collection finished).
    pub async fn delete_keys(&self, session: &str, host: &str) -> Result<(), CollectError> {
        check_name("session", session)?;
        check_name("host", host)?;
        let mut c = self.conn().await?;
        redis::cmd("DEL")
            .arg(stream_key(session, host))
            .arg(status_key(session, host))
            .arg(lease_key(session, host))
            .query_async::<()>(&mut c)
            .await
            .map_err(redis_err("delete a host's keys"))
    }

    /// The observer's last heartbeat (JSON), or `None` if it expired or never came.
    pub async fn status(&self, session: &str, host: &str) -> Result<Option<String>, CollectError> {
        let mut c = self.conn().await?;
        redis::cmd("GET")
            .arg(status_key(session, host))
            .query_async(&mut c)
            .await
            .map_err(redis_err("read a heartbeat"))
    }

    /// Entries not yet delivered to the collector plus entries delivered but not acknowledged,
    /// over the given hosts' streams: 0 means the collector has caught up and committed all.
    pub async fn backlog(&self, session: &str, hosts: &[String]) -> Result<u64, CollectError> {
        let mut c = self.conn().await?;
        let mut total = 0;
        for h in hosts {
            let groups: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream_key(session, h))
                .query_async(&mut c)
                .await
                .map_err(redis_err("read consumer group state"))?;
            for g in groups {
                if g.get("name")
                    .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                    .as_deref()
                    != Some(GROUP)
                {
                    continue;
                }
                let num = |k: &str| {
                    g.get(k)
                        .and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok())
                        .unwrap_or(0)
                };
                total += num("pending") + num("lag");
            }
        }
        Ok(total)
    }
}

async fn ensure_group(c: &mut MultiplexedConnection, key: &str) -> Result<(), CollectError> {
    // From id 0: a group re-created after a Redis restart must also read what observers wrote
    // between the restart and now.
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(c)
        .await;
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(redis_err("create the collector's consumer group")(e)),
    }
}

fn build_client(
    url: &str,
    user: Option<&str>,
    password: Option<&Secret>,
    ca_pem: Option<&str>,
) -> Result<Client, CollectError> {
    use redis::IntoConnectionInfo;
    let mut info = url
        .into_connection_info()
        .map_err(|e| CollectError::Redis(format!("invalid Redis URL {}: {e}", redact(url))))?;
    let mut redis_info = info.redis_settings().clone();
    if let Some(u) = user {
        redis_info = redis_info.set_username(u);
    }
    if let Some(p) = password {
        redis_info = redis_info.set_password(p.expose());
    }
    info = info.set_redis_settings(redis_info);
    match ca_pem {
        Some(ca) if url.starts_with("rediss://") => {
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.as_bytes().to_vec()),
            };
            Client::build_with_tls(info, certs)
                .map_err(|e| CollectError::Redis(format!("failed to set up TLS to Redis: {e}")))
        }
        _ => Client::open(info)
            .map_err(|e| CollectError::Redis(format!("invalid Redis URL {}: {e}", redact(url)))),
    }
}

/// The URL with any credentials removed (observers get their own).
fn public_url(url: &str) -> Result<String, CollectError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| CollectError::Redis(format!("invalid Redis URL {}", redact(url))))?;
    if scheme != "redis" && scheme != "rediss" {
        return Err(CollectError::Redis(format!(
            "Redis URL {} must start with redis:// or rediss://",
            redact(url)
        )));
    }
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    Ok(format!("{scheme}://{rest}"))
}

async fn connect(client: &Client) -> Result<MultiplexedConnection, CollectError> {
    // Reads block for up to a second; give replies room beyond that.
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .map_err(redis_err("connect to Redis"))
}

fn random_hex(bytes: usize) -> Result<String, CollectError> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| {
            CollectError::Redis(format!("failed to read random bytes for a password: {e}"))
        })?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// What a Redis source did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisSourceSummary {
    pub entries: u64,
    pub reconnects: u64,
    pub acked: u64,
    /// Entries taken over from other consumers of the group (a dead collector's pending ones).
    pub claimed: u64,
}

/// How a source reads.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Entries another consumer read but has not acknowledged for this long are claimed and
    /// stored by this source (`XAUTOCLAIM`): that consumer is taken to be dead. A live
    /// collector acknowledges within a commit (well under a second), or within its store
    /// retries when the database is away; claiming from a slow live one only stores twice,
    /// which the store ignores. Zero claims everything pending at once: for a collector known
    /// to be dead (`latplan stop` of a detached session whose collector was killed).
    pub claim_idle: Duration,
    /// How often to look for such entries after the first look at start.
    pub claim_every: Duration,
    /// Entries per stream and `XREADGROUP` call.
    pub read_count: usize,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            claim_idle: Duration::from_secs(60),
            claim_every: Duration::from_secs(5),
            read_count: 256,
        }
    }
}

/// Entries this source has queued for the writer and not yet seen acknowledged: re-reading one
/// of them (own pending entries after a reconnect, or a claim) must not queue it twice.
#[derive(Default)]
struct InFlight(std::sync::Mutex<std::collections::HashSet<(Arc<str>, String)>>);

impl InFlight {
    /// True when the entry was not in flight yet (and now is).
    fn insert(&self, stream: &Arc<str>, id: &str) -> bool {
        self.0
            .lock()
            .expect("in-flight set")
            .insert((stream.clone(), id.to_string()))
    }

    fn remove(&self, acks: &[Ack]) {
        let mut set = self.0.lock().expect("in-flight set");
        for a in acks {
            set.remove(&(a.stream.clone(), a.id.clone()));
        }
    }
}

/// Reads the hosts' streams of a session into a [`Collector`].
pub struct RedisSource {
    stop: watch::Sender<bool>,
    reader: Option<JoinHandle<Result<RedisSourceSummary, CollectError>>>,
    acker: JoinHandle<u64>,
    summary: RedisSourceSummary,
}

impl RedisSource {
    /// Starts reading `hosts`' streams as consumer `consumer` of the collector group, with the
    /// default [`SourceOptions`]. A collector restarted with the same consumer name re-reads its
    /// unacknowledged entries at once; under another name it claims them once they are idle.
    pub async fn start(
        collector: &Collector,
        bus: Arc<RedisBus>,
        session: &str,
        hosts: &[String],
        consumer: &str,
    ) -> Result<RedisSource, CollectError> {
        Self::start_with(
            collector,
            bus,
            session,
            hosts,
            consumer,
            SourceOptions::default(),
        )
        .await
    }

    /// [`Self::start`] with explicit options.
    pub async fn start_with(
        collector: &Collector,
        bus: Arc<RedisBus>,
        session: &str,
        hosts: &[String],
        consumer: &str,
        options: SourceOptions,
    ) -> Result<RedisSource, CollectError> {
        check_name("session", session)?;
        let mut keys = Vec::new();
        for h in hosts {
            check_name("host", h)?;
            keys.push((
                Arc::<str>::from(stream_key(session, h)),
                Arc::<str>::from(h.as_str()),
            ));
        }
        let acks = collector.take_acks().await.ok_or_else(|| {
            CollectError::Redis("this collector already has a Redis source".into())
        })?;
        let (stop, stop_rx) = watch::channel(false);
        let tx = collector.sender()?;
        let in_flight = Arc::new(InFlight::default());
        let reader = tokio::spawn(read_loop(
            Reader {
                bus: bus.clone(),
                keys,
                consumer: consumer.to_string(),
                options,
                in_flight: in_flight.clone(),
            },
            tx,
            stop_rx,
        ));
        let acker = tokio::spawn(ack_loop(bus, acks, in_flight));
        Ok(RedisSource {
            stop,
            reader: Some(reader),
            acker,
            summary: RedisSourceSummary::default(),
        })
    }

    /// Stops reading (entries still in Redis stay there, unacknowledged or unread).
    pub async fn stop_reading(&mut self) -> Result<(), CollectError> {
        let _ = self.stop.send(true);
        if let Some(r) = self.reader.take() {
            self.summary = r.await.map_err(|e| CollectError::Join(e.to_string()))??;
        }
        Ok(())
    }

    /// Waits for the last acknowledgements; call after [`Collector::finish`].
    pub async fn finish(mut self) -> Result<RedisSourceSummary, CollectError> {
        self.stop_reading().await?;
        self.summary.acked = self
            .acker
            .await
            .map_err(|e| CollectError::Join(e.to_string()))?;
        Ok(self.summary)
    }
}

/// What the read loop works with.
struct Reader {
    bus: Arc<RedisBus>,
    keys: Vec<(Arc<str>, Arc<str>)>,
    consumer: String,
    options: SourceOptions,
    in_flight: Arc<InFlight>,
}

async fn read_loop(
    r: Reader,
    tx: mpsc::Sender<Msg>,
    mut stop: watch::Receiver<bool>,
) -> Result<RedisSourceSummary, CollectError> {
    let mut sum = RedisSourceSummary::default();
    let mut conn: Option<MultiplexedConnection> = None;
    let mut backoff = Duration::from_millis(100);
    // While `history` holds ids, this consumer's own pending entries (delivered before a crash or
    // a reconnect, never acknowledged) are read first, from those ids on; then new entries (">").
    let mut history: Option<Vec<String>> = None;
    // When to look for other consumers' abandoned entries next; `None`: right after connecting.
    let mut next_claim: Option<Instant> = None;
    let host_of: HashMap<Arc<str>, Arc<str>> = r.keys.iter().cloned().collect();
    loop {
        if *stop.borrow() {
            return Ok(sum);
        }
        let mut c = match conn.clone() {
            Some(c) => c,
            None => match reconnect(&r.bus, &r.keys).await {
                Ok(c) => {
                    backoff = Duration::from_millis(100);
                    history = Some(vec!["0".to_string(); r.keys.len()]);
                    next_claim = None;
                    conn = Some(c.clone());
                    c
                }
                Err(e) => {
                    tracing::warn!("redis source: {e}; retrying in {} ms", backoff.as_millis());
                    sum.reconnects += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {},
                        _ = stop.changed() => {},
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        if next_claim.is_none_or(|t| Instant::now() >= t) {
            match claim(&mut c, &r, &tx, &mut sum).await {
                Ok(()) => next_claim = Some(Instant::now() + r.options.claim_every),
                Err(CollectError::WriterGone) => return Err(CollectError::WriterGone),
                Err(e) => {
                    tracing::warn!("redis source: {e}");
                    conn = None;
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&r.consumer)
            .arg("COUNT")
            .arg(r.options.read_count);
        if history.is_none() {
            cmd.arg("BLOCK").arg(500);
        }
        cmd.arg("STREAMS");
        for (k, _) in &r.keys {
            cmd.arg(&**k);
        }
        match &history {
            Some(ids) => ids.iter().for_each(|id| {
                cmd.arg(id);
            }),
            None => r.keys.iter().for_each(|_| {
                cmd.arg(">");
            }),
        }
        let reply: Option<StreamReadReply> = match cmd.query_async(&mut c).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("redis source: read failed: {e}");
                conn = None;
                if e.code() != Some("NOGROUP") {
                    sum.reconnects += 1;
                    tokio::time::sleep(backoff).await;
                }
                continue;
            }
        };
        let mut got = 0usize;
        for sk in reply.map(|r| r.keys).unwrap_or_default() {
            let Some((key, host)) = host_of
                .get_key_value(sk.key.as_str())
                .map(|(k, h)| (k.clone(), h.clone()))
            else {
                continue;
            };
            for entry in sk.ids {
                got += 1;
                if let Some(ids) = history.as_mut()
                    && let Some(i) = r.keys.iter().position(|(k, _)| *k == key)
                {
                    ids[i] = entry.id.clone();
                }
                if !r.in_flight.insert(&key, &entry.id) {
                    // Already queued (re-read after a reconnect, or claimed): once is enough.
                    continue;
                }
                sum.entries += 1;
                let msg = entry_to_msg(&key, &host, entry);
                if tx.send(msg).await.is_err() {
                    return Err(CollectError::WriterGone);
                }
            }
        }
        if got == 0 && history.is_some() {
            history = None;
        }
    }
}

/// Takes over the entries other consumers of the group read but left unacknowledged for
/// `claim_idle` (`XAUTOCLAIM`, every stream from its start) and queues them like fresh reads.
/// Entries trimmed from a stream before anyone stored them are gone; the gap scan reports them.
async fn claim(
    c: &mut MultiplexedConnection,
    r: &Reader,
    tx: &mpsc::Sender<Msg>,
    sum: &mut RedisSourceSummary,
) -> Result<(), CollectError> {
    let idle_ms = r.options.claim_idle.as_millis() as u64;
    for (key, host) in &r.keys {
        let mut cursor = "0-0".to_string();
        loop {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&**key)
                .arg(GROUP)
                .arg(&r.consumer)
                .arg(idle_ms)
                .arg(&cursor)
                .arg("COUNT")
                .arg(r.options.read_count)
                .query_async(c)
                .await
                .map_err(redis_err(
                    "claim another collector's unacknowledged entries",
                ))?;
            if !reply.deleted_ids.is_empty() {
                tracing::warn!(
                    host = %host,
                    entries = reply.deleted_ids.len(),
                    "unacknowledged entries were trimmed from the stream before they were stored"
                );
            }
            for entry in reply.claimed {
                if !r.in_flight.insert(key, &entry.id) {
                    continue;
                }
                sum.claimed += 1;
                sum.entries += 1;
                tx.send(entry_to_msg(key, host, entry))
                    .await
                    .map_err(|_| CollectError::WriterGone)?;
            }
            if reply.next_stream_id == "0-0" {
                break;
            }
            cursor = reply.next_stream_id;
        }
    }
    if sum.claimed > 0 {
        tracing::info!(
            claimed = sum.claimed,
            "redis source: took over entries another collector had left unacknowledged"
        );
    }
    Ok(())
}

async fn reconnect(
    bus: &RedisBus,
    keys: &[(Arc<str>, Arc<str>)],
) -> Result<MultiplexedConnection, CollectError> {
    let mut c = connect(bus.client()).await?;
    redis::cmd("PING")
        .query_async::<()>(&mut c)
        .await
        .map_err(redis_err("reach Redis"))?;
    // A restarted Redis has lost accounts, streams and groups: put them back before reading.
    bus.reset().await;
    let n = bus.reprovision().await?;
    for (k, _) in keys {
        ensure_group(&mut c, k).await?;
    }
    tracing::info!(
        accounts = n,
        "redis source: connected; observer accounts and consumer groups are in place"
    );
    Ok(c)
}

fn entry_to_msg(key: &Arc<str>, host: &Arc<str>, entry: redis::streams::StreamId) -> Msg {
    let ack = Some(Ack {
        stream: key.clone(),
        id: entry.id.clone(),
    });
    let bytes = |v: Option<&Value>| match v {
        Some(Value::BulkString(b)) => Some(b.clone()),
        Some(Value::SimpleString(s)) => Some(s.clone().into_bytes()),
        _ => None,
    };
    let run = bytes(entry.map.get("run"))
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| RunTag::decode(&s));
    let bad = |error: String| Msg::StreamError {
        host: host.clone(),
        error: format!("entry {}: {error}", entry.id),
        skipped_bytes: 0,
        ack: ack.clone(),
    };
    let Some(frame_bytes) = bytes(entry.map.get("f")) else {
        return bad("no frame field 'f'".into());
    };
    let Some(run) = run else {
        return bad("no valid run tag field 'run'".into());
    };
    match Frame::decode(&frame_bytes) {
        Ok((frame, used)) if used == frame_bytes.len() => Msg::Frame {
            host: host.clone(),
            run: Some(run),
            frame,
            ack,
        },
        Ok((_, used)) => bad(format!(
            "{} bytes after the frame",
            frame_bytes.len() - used
        )),
        Err(e) => Msg::StreamError {
            host: host.clone(),
            error: format!("entry {}: {e}", entry.id),
            skipped_bytes: frame_bytes.len() as u64,
            ack,
        },
    }
}

async fn ack_loop(
    bus: Arc<RedisBus>,
    mut rx: mpsc::UnboundedReceiver<Vec<Ack>>,
    in_flight: Arc<InFlight>,
) -> u64 {
    let mut acked = 0u64;
    let mut conn: Option<MultiplexedConnection> = None;
    while let Some(batch) = rx.recv().await {
        let mut by_stream: HashMap<Arc<str>, Vec<String>> = HashMap::new();
        for a in &batch {
            by_stream
                .entry(a.stream.clone())
                .or_default()
                .push(a.id.clone());
        }
        for (stream, ids) in by_stream {
            // An ack that cannot be delivered only means the entry is read again later, and the
            // store ignores it then; so retry a while, then let it go.
            for attempt in 0..20 {
                if conn.is_none() {
                    conn = connect(bus.client()).await.ok();
                }
                let Some(c) = conn.as_mut() else {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                };
                let r: redis::RedisResult<u64> = redis::cmd("XACK")
                    .arg(&*stream)
                    .arg(GROUP)
                    .arg(&ids)
                    .query_async(c)
                    .await;
                match r {
                    Ok(n) => {
                        acked += n;
                        break;
                    }
                    Err(e) if e.code() == Some("NOGROUP") => break,
                    Err(e) => {
                        tracing::warn!(
                            attempt,
                            "redis source: acknowledging {} entries failed: {e}",
                            ids.len()
                        );
                        conn = None;
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
        }
        // Stored (and acknowledged, or given up on): a later re-read may queue them again.
        in_flight.remove(&batch);
    }
    acked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_widen_a_key_pattern_are_refused() {
        assert!(check_name("host", "metal-1.lab_2").is_ok());
        for bad in ["", "a*", "a:b", "a b", "[x]", "h?", "a\\b", "ü"] {
            assert!(check_name("host", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn public_urls_carry_no_credentials() {
        assert_eq!(
            public_url("redis://u:p@127.0.0.1:6379/0").unwrap(),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(public_url("rediss://h:6380").unwrap(), "rediss://h:6380");
        assert!(public_url("http://h").is_err());
    }

    #[test]
    fn the_stdin_line_is_one_json_line_and_debug_hides_the_password() {
        let c = ObserverRedisConfig {
            url: "redis://h:1".into(),
            username: "latplan-s-h".into(),
            password: "topsecret".into(),
            stream_key: stream_key("s", "h"),
            status_key: status_key("s", "h"),
            maxlen: 10,
            status_ttl_secs: 10,
            ca_pem: None,
            lease_key: None,
        };
        let line = c.to_stdin_line();
        assert!(line.ends_with('\n') && line.trim_end().lines().count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["redis"]["stream_key"], "latplan:s:h:records");
        assert!(!format!("{c:?}").contains("topsecret"));
    }
}
