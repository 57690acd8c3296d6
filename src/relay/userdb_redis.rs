//! The Redis side of `natkit relay --userdb`: reads coturn's redis-userdb
//! schema the way coturn's `dbd_redis.c` does (`GET turn/realm/R/user/U/key`,
//! the hex MD5(U:R:PASS) that `turnadmin -a` writes; `SMEMBERS
//! turn/realm/R/secret`, the REST secrets `turnadmin -s` adds, several
//! allowed) and carries out the core's [`Lookup`] effects.
//!
//! Every lookup has a timeout. One multiplexed connection is shared by all
//! lookups; after an error it is dropped and the next lookup connects again,
//! so a Redis that comes back is used again without a restart. An outage is
//! logged once when it starts and once when it ends; in between it is
//! counted (`natkit_relay_userdb_errors_total`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::{Mutex, mpsc};

use crate::turn::server::userdb::{Lookup, UserDbAnswer, UserRecord};

/// Where the user database is and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUserDbConfig {
    /// `redis://[:PASS@]HOST:PORT[/DB]`.
    pub url: String,
    /// Longest wait for a connection and for each lookup.
    pub timeout: Duration,
}

/// Reads `--userdb` or coturn's `redis-userdb` value: a `redis://` URL, or
/// coturn's connection string `ip=H dbname=N password=P port=N connect_timeout=S`
/// (coturn's defaults: 127.0.0.1, port 6379, database 0). Returns the URL
/// and the connect timeout the string named, if any.
pub fn parse_target(s: &str) -> Result<(String, Option<Duration>), String> {
    let s = s.trim().trim_matches('"').trim();
    if s.starts_with("redis://") {
        redis::Client::open(s).map_err(|e| format!("'{s}' is not a Redis URL: {e}"))?;
        return Ok((s.to_string(), None));
    }
    let (mut host, mut port, mut db, mut password, mut timeout) =
        ("127.0.0.1".to_string(), 6379u16, 0u32, None::<String>, None);
    for part in s.split_whitespace() {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!(
                "'{part}' in '{s}' is not key=value (expected redis://HOST:PORT/DB or ip=.. port=.. dbname=..)"
            ));
        };
        match k {
            "ip" | "host" => host = v.to_string(),
            "port" => port = v.parse().map_err(|_| format!("port={v}: expected a port number"))?,
            "dbname" | "database" | "db" => db = v.parse().map_err(|_| format!("dbname={v}: expected a number"))?,
            "password" => password = Some(v.to_string()),
            "connect_timeout" => {
                let secs: u64 = v.parse().map_err(|_| format!("connect_timeout={v}: expected seconds"))?;
                timeout = Some(Duration::from_secs(secs.max(1)));
            }
            // coturn's own knobs with no meaning here.
            "user" | "sslmode" => {}
            other => return Err(format!("unknown key '{other}' in '{s}'")),
        }
    }
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
    let url = format!("redis://{auth}{host}:{port}/{db}");
    redis::Client::open(url.as_str()).map_err(|e| format!("'{s}' does not make a Redis URL: {e}"))?;
    Ok((url, timeout))
}

/// The URL with any password replaced, for logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(a), Some(b)) if b > a => format!("{}://***@{}", &url[..a], &url[b + 1..]),
        _ => url.to_string(),
    }
}

/// The user database client.
pub struct RedisUserDb {
    client: redis::Client,
    shown: String,
    timeout: Duration,
    conn: Mutex<Option<MultiplexedConnection>>,
    down: AtomicBool,
}

impl RedisUserDb {
    /// A bad URL is the user's to fix; an unreachable server is not an error
    /// here (the relay starts, uncached users get 500 until Redis answers).
    pub fn new(cfg: &RedisUserDbConfig) -> Result<RedisUserDb, String> {
        let client = redis::Client::open(cfg.url.as_str()).map_err(|e| {
            format!("bad --userdb '{}': {e} (expected redis://[:PASS@]HOST:PORT[/DB])", redacted(&cfg.url))
        })?;
        Ok(RedisUserDb {
            client,
            shown: redacted(&cfg.url),
            timeout: cfg.timeout,
            conn: Mutex::new(None),
            down: AtomicBool::new(false),
        })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, String> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let cfg =
            redis::AsyncConnectionConfig::new().set_connection_timeout(self.timeout).set_response_timeout(self.timeout);
        let c = tokio::time::timeout(self.timeout, self.client.get_multiplexed_async_connection_with_config(&cfg))
            .await
            .map_err(|_| format!("no connection within {} ms", self.timeout.as_millis()))?
            .map_err(|e| e.to_string())?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// One lookup: the user's key and, for a REST username, the realm's secrets.
    pub async fn lookup(&self, l: &Lookup) -> Result<UserRecord, String> {
        let mut c = self.connection().await?;
        let key_name = format!("turn/realm/{}/user/{}/key", l.realm, l.username);
        let run = async {
            let hex: Option<String> = redis::cmd("GET").arg(&key_name).query_async(&mut c).await?;
            let secrets: Vec<String> = if l.secrets {
                redis::cmd("SMEMBERS").arg(format!("turn/realm/{}/secret", l.realm)).query_async(&mut c).await?
            } else {
                Vec::new()
            };
            Ok::<_, redis::RedisError>((hex, secrets))
        };
        let (hex, secrets) = match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                self.forget_connection().await;
                return Err(e.to_string());
            }
            Err(_) => {
                self.forget_connection().await;
                return Err(format!("no answer within {} ms", self.timeout.as_millis()));
            }
        };
        let key = hex.and_then(|h| match parse_key(&h) {
            Some(k) => Some(k),
            None => {
                // coturn with a SHA-256 password algorithm stores 64 hex digits; natkit's keys are MD5.
                tracing::warn!(key = %key_name, "user key is not 32 hex digits (an MD5 key as turnadmin -a writes): user ignored");
                None
            }
        });
        Ok(UserRecord { key, secrets })
    }

    async fn forget_connection(&self) {
        *self.conn.lock().await = None;
    }

    /// Logs the start and the end of an outage, once each.
    fn note(&self, result: &Result<UserRecord, String>) {
        match result {
            Err(e) => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "user database {} unavailable: {e}; users not in the cache get 500 until it answers \
                         (counted in natkit_relay_userdb_errors_total)",
                        self.shown
                    );
                }
            }
            Ok(_) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::warn!("user database {} answers again", self.shown);
                }
            }
        }
    }
}

/// 32 hex digits into a 16-byte key.
fn parse_key(hex: &str) -> Option<[u8; 16]> {
    let hex = hex.trim();
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut k = [0u8; 16];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(k)
}

/// Carries out lookups until the queue closes; `answer` hands each result
/// back to the core (the driver's closure: lock, answer, send).
pub async fn serve<F>(db: Arc<RedisUserDb>, mut lookups: mpsc::UnboundedReceiver<Lookup>, answer: Arc<F>)
where
    F: Fn(Lookup, UserDbAnswer) + Send + Sync + 'static,
{
    // Tried once at start so a wrong address is said at once, not at the first login.
    let first = db.connection().await.map(|_| UserRecord::default());
    db.note(&first);
    if first.is_ok() {
        tracing::info!("user database {}: connected", db.shown);
    }
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            l = lookups.recv() => {
                let Some(l) = l else { break };
                let (db, answer) = (db.clone(), answer.clone());
                // The core bounds lookups in flight (one per parked username, parked requests bounded).
                tasks.spawn(async move {
                    let result = db.lookup(&l).await;
                    db.note(&result);
                    let a = match result {
                        Ok(r) => UserDbAnswer::Found(r),
                        Err(e) => {
                            tracing::debug!(user = %l.username, "user database lookup failed: {e}");
                            UserDbAnswer::Unavailable
                        }
                    };
                    answer(l, a);
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coturn_connection_strings_and_urls() {
        assert_eq!(parse_target("redis://127.0.0.1:6379/2").unwrap(), ("redis://127.0.0.1:6379/2".to_string(), None));
        assert_eq!(
            parse_target("\"ip=10.0.0.5 dbname=3 password=s3 port=6380 connect_timeout=7\"").unwrap(),
            ("redis://:s3@10.0.0.5:6380/3".to_string(), Some(Duration::from_secs(7)))
        );
        assert_eq!(parse_target("ip=::1").unwrap().0, "redis://[::1]:6379/0");
        assert!(parse_target("ip=1.2.3.4 colour=red").is_err());
        assert!(parse_target("port=x").is_err());
        assert_eq!(redacted("redis://:s3@10.0.0.5:6380/3"), "redis://***@10.0.0.5:6380/3");
    }

    #[test]
    fn keys_are_32_hex_digits() {
        // turnadmin -a -u alice -r example.org -p secretpw
        let k = parse_key("4d9923d2f13ca67eb4014b95cc1d6bc1").unwrap();
        assert_eq!(k, crate::turn::credentials::long_term_key("alice", "example.org", "secretpw"));
        assert!(parse_key("4d9923d2").is_none());
        assert!(parse_key(&"ab".repeat(32)).is_none());
        assert!(parse_key("zz9923d2f13ca67eb4014b95cc1d6bc1").is_none());
    }
}
