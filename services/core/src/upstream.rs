//! [`Upstream`]: the transport of ragd's service-to-service clients (indexer → embedder,
//! generator → indexer). One static URL, or every instance discovered through etcd; requests go
//! round-robin over the members that are up. A member whose transport fails (connection refused
//! or reset: the instance died) is ejected for [`EJECT_FOR`], so the caller's retry goes to
//! another member at once instead of waiting for the instance's lease to expire; discovery
//! removes it for good when the lease does expire.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::body::Body;
use tonic::transport::Channel;

/// How long a member whose transport failed is skipped.
pub const EJECT_FOR: Duration = Duration::from_secs(2);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
struct Member {
    key: String,
    channel: Channel,
    down_until: Mutex<Option<Instant>>,
}

impl Member {
    fn up(&self, now: Instant) -> bool {
        self.down_until.lock().map(|d| d.is_none_or(|t| now >= t)).unwrap_or(true)
    }

    fn eject(&self) {
        if let Ok(mut d) = self.down_until.lock() {
            *d = Some(Instant::now() + EJECT_FOR);
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Members {
    members: RwLock<Vec<Arc<Member>>>,
    next: AtomicUsize,
    /// TLS for new members' connections and the credential sent with every call.
    pub(crate) security: crate::security::ClientSecurity,
}

impl Members {
    pub(crate) fn insert(&self, key: String, channel: Channel) {
        if let Ok(mut m) = self.members.write() {
            m.retain(|x| x.key != key);
            m.push(Arc::new(Member { key, channel, down_until: Mutex::new(None) }));
        }
    }

    pub(crate) fn remove(&self, key: &str) {
        if let Ok(mut m) = self.members.write() {
            m.retain(|x| x.key != key);
        }
    }

    /// Round-robin over the members that are up; if every member is ejected, over all of them
    /// (better a try than a certain failure).
    fn pick(&self) -> Option<Arc<Member>> {
        let m = self.members.read().ok()?;
        if m.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        (0..m.len())
            .map(|i| &m[(start + i) % m.len()])
            .find(|x| x.up(now))
            .or_else(|| m.get(start % m.len()))
            .cloned()
    }
}

/// A client transport over one or many members (see the module docs).
#[derive(Debug, Clone)]
pub struct Upstream {
    members: Arc<Members>,
}

impl Upstream {
    /// One static member.
    pub fn fixed(channel: Channel) -> Self {
        Self::fixed_with(channel, crate::security::ClientSecurity::default())
    }

    /// One static member, with the credential (and TLS, for the channel's connector) of `security`.
    pub fn fixed_with(channel: Channel, security: crate::security::ClientSecurity) -> Self {
        let members = Members { security, ..Members::default() };
        members.insert("static".into(), channel);
        Self { members: Arc::new(members) }
    }

    /// Several static members (e.g. the instances etcd listed once), balanced round-robin.
    pub fn many(channels: Vec<(String, Channel)>, security: crate::security::ClientSecurity) -> Self {
        let members = Members { security, ..Members::default() };
        for (key, channel) in channels {
            members.insert(key, channel);
        }
        Self { members: Arc::new(members) }
    }

    /// No members yet: discovery adds them.
    pub(crate) fn empty(security: crate::security::ClientSecurity) -> Self {
        Self { members: Arc::new(Members { security, ..Members::default() }) }
    }

    /// A handle that does not keep the upstream alive (the discovery task stops once every client
    /// is gone).
    pub(crate) fn downgrade(&self) -> Weak<Members> {
        Arc::downgrade(&self.members)
    }
}

impl tower_service::Service<http::Request<Body>> for Upstream {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call picks its member and waits for that member's readiness itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(c) = self.members.security.credential() {
            // The caller's own credential (the CLI's) stays; a service adds its own.
            request.headers_mut().entry(http::header::AUTHORIZATION).or_insert_with(|| c.header().clone());
        }
        let member = self.members.pick();
        Box::pin(async move {
            let Some(member) = member else {
                return Err(
                    Box::new(tonic::Status::unavailable("no instance of the service is known")) as BoxError
                );
            };
            let mut channel = member.channel.clone();
            let result = async {
                std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut channel, cx)).await?;
                tower_service::Service::call(&mut channel, request).await
            }
            .await;
            result.map_err(|e| {
                // A transport failure (not a gRPC status: those come in the response): skip it.
                tracing::debug!(member = %member.key, error = %e, "upstream member failed; ejecting it for a while");
                member.eject();
                Box::new(e) as BoxError
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lazy(port: u16) -> Channel {
        crate::client::endpoint(&format!("http://127.0.0.1:{port}")).expect("endpoint").connect_lazy()
    }

    #[tokio::test]
    async fn round_robin_skips_ejected_members() {
        let m = Members::default();
        m.insert("a".into(), lazy(1));
        m.insert("b".into(), lazy(2));
        let picks: Vec<String> = (0..4).filter_map(|_| m.pick()).map(|x| x.key.clone()).collect();
        assert_eq!(picks.iter().filter(|k| *k == "a").count(), 2, "{picks:?}");
        m.pick().into_iter().filter(|x| x.key == "a").for_each(|x| x.eject());
        if let Some(a) = m.members.read().expect("lock").iter().find(|x| x.key == "a") {
            a.eject();
        }
        assert!((0..4).filter_map(|_| m.pick()).all(|x| x.key == "b"));
        m.remove("b");
        // Only ejected members left: still tried rather than failing outright.
        assert_eq!(m.pick().map(|x| x.key.clone()).as_deref(), Some("a"));
        m.remove("a");
        assert!(m.pick().is_none());
    }
}
