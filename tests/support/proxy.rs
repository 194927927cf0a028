//! A fault-injecting TCP proxy for the reliability suite.
//!
//! Lock managers must stay safe when the network to MongoDB misbehaves, so tests put a
//! [`FaultProxy`] on loopback between the driver and the server and flip it between faults
//! (latency, cut connections, a black hole, refused connects) while the managers work.
//!
//! Design: the fault settings live in a `tokio::sync::watch` channel whose sender belongs to the
//! proxy handle. The accept loop and every connection task hold receivers, so a change reaches a
//! connection at once, even one idle-waiting on a read (each connection task `select!`s its
//! forwarding against "my epoch was bumped"). Dropping the last handle drops the sender, which
//! every task sees as "closed": the accept loop stops (the listener is closed) and every
//! connection is closed. Tasks are started with `tokio::spawn`, so the proxy works on a
//! multi-thread runtime and on actix's single-thread one (`#[actix_rt::test]`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The fault settings every task watches. All faults are independent, except that
/// [`FaultProxy::restore`] clears them all at once.
#[derive(Clone, Debug, Default)]
struct Faults {
    /// Delay added to each chunk, in both directions.
    latency: Duration,
    /// Forward nothing: bytes read are held and never delivered (see [`FaultProxy::black_hole`]).
    black_hole: bool,
    /// Close new connections right after accept.
    refuse_new: bool,
    /// Bumping this closes every connection opened under an older value.
    epoch: u64,
}

#[derive(Default)]
struct Counters {
    opened: AtomicU64,
    refused: AtomicU64,
    open: AtomicUsize,
}

/// Decrements the open-connection count when a connection task ends, however it ends.
struct OpenGuard(Arc<Counters>);

impl OpenGuard {
    fn new(counters: &Arc<Counters>) -> Self {
        counters.opened.fetch_add(1, Ordering::SeqCst);
        counters.open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(Arc::clone(counters))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Inner {
    local_addr: SocketAddr,
    upstream: SocketAddr,
    /// Dropped with the last handle: every task sees the channel closed and ends.
    faults: watch::Sender<Faults>,
    counters: Arc<Counters>,
}

/// A loopback TCP proxy to `upstream` whose faults tests switch at run time.
///
/// Cheap to clone; all clones control the same proxy, which stops (listener and every
/// connection closed) when the last clone is dropped.
#[derive(Clone)]
pub struct FaultProxy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("local_addr", &self.inner.local_addr)
            .field("upstream", &self.inner.upstream)
            .field("faults", &*self.inner.faults.borrow())
            .finish()
    }
}

impl FaultProxy {
    /// Binds `127.0.0.1:0` and starts forwarding every accepted connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let local_addr = listener.local_addr()?;
        let (faults, rx) = watch::channel(Faults::default());
        let counters = Arc::new(Counters::default());
        tokio::spawn(accept_loop(listener, upstream, rx, Arc::clone(&counters)));
        tracing::debug!(%local_addr, %upstream, "fault proxy started");
        Ok(FaultProxy {
            inner: Arc::new(Inner {
                local_addr,
                upstream,
                faults,
                counters,
            }),
        })
    }

    /// The loopback address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The address the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.inner.upstream
    }

    /// `mongodb://127.0.0.1:PORT/?directConnection=true` for this proxy (no credentials).
    pub fn uri(&self) -> String {
        format!("mongodb://{}/?directConnection=true", self.inner.local_addr)
    }

    /// `MONGODB_URI` with its host list replaced by this proxy, keeping credentials, database
    /// and options, and forcing `directConnection=true`. Use it when the server needs auth.
    /// Panics if `MONGODB_URI` is unset or unparsable.
    pub fn uri_from_env(&self) -> String {
        let uri = env_uri();
        proxied_uri(&uri, self.inner.local_addr)
            .unwrap_or_else(|e| panic!("MONGODB_URI={uri:?} is not usable here: {e}"))
    }

    /// Back to normal forwarding with no fault: no latency, new connections accepted,
    /// black hole lifted. Connections that were black-holed are closed (see [`Self::black_hole`]).
    pub fn pass_through(&self) {
        tracing::debug!(proxy = %self.inner.local_addr, "fault proxy: pass through");
        self.inner.faults.send_modify(|f| {
            if f.black_hole {
                f.epoch += 1;
            }
            f.latency = Duration::ZERO;
            f.black_hole = false;
            f.refuse_new = false;
        });
    }

    /// Same as [`Self::pass_through`]: every fault cleared.
    pub fn restore(&self) {
        self.pass_through();
    }

    /// Delays each chunk forwarded, in both directions, by `d` (replacing any earlier latency;
    /// `Duration::ZERO` removes it). The delay is measured from when the proxy read the chunk,
    /// and chunks keep their order, so a request/reply round trip takes at least `2 * d` more.
    /// Chunks already read keep the delay they were read with.
    pub fn add_latency(&self, d: Duration) {
        tracing::debug!(proxy = %self.inner.local_addr, ?d, "fault proxy: latency");
        self.inner.faults.send_modify(|f| f.latency = d);
    }

    /// Closes every open connection now, on both sides (bytes not yet forwarded are lost).
    /// New connections are still accepted, subject to the other faults.
    pub fn drop_connections(&self) {
        tracing::debug!(proxy = %self.inner.local_addr, "fault proxy: drop connections");
        self.inner.faults.send_modify(|f| f.epoch += 1);
    }

    /// Forwards nothing in either direction until [`Self::restore`]: open connections stay
    /// open and new ones are accepted (without connecting upstream), but every byte read is
    /// held and never delivered.
    ///
    /// On restore every connection that lived through the black hole is closed rather than
    /// resumed: a peer has long timed out by then, and resuming could deliver a stale request
    /// or reply. The driver sees a network error and reconnects, which is what it would see
    /// after a real partition anyway.
    pub fn black_hole(&self) {
        tracing::debug!(proxy = %self.inner.local_addr, "fault proxy: black hole");
        self.inner.faults.send_modify(|f| f.black_hole = true);
    }

    /// New connections are closed right after accept (the client sees the connection close
    /// before any reply); open ones keep working.
    pub fn refuse_new(&self) {
        tracing::debug!(proxy = %self.inner.local_addr, "fault proxy: refuse new");
        self.inner.faults.send_modify(|f| f.refuse_new = true);
    }

    /// Connections accepted and served so far (refused ones not counted).
    pub fn connections_opened(&self) -> u64 {
        self.inner.counters.opened.load(Ordering::SeqCst)
    }

    /// Connections closed right after accept because of [`Self::refuse_new`].
    pub fn connections_refused(&self) -> u64 {
        self.inner.counters.refused.load(Ordering::SeqCst)
    }

    /// Connections currently open through the proxy.
    pub fn open_connections(&self) -> usize {
        self.inner.counters.open.load(Ordering::SeqCst)
    }
}

/// Resolves once the proxy handle is gone (the watch sender dropped).
async fn proxy_dropped(mut rx: watch::Receiver<Faults>) {
    while rx.changed().await.is_ok() {}
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    rx: watch::Receiver<Faults>,
    counters: Arc<Counters>,
) {
    let local_addr = listener.local_addr().ok();
    let mut stopped = std::pin::pin!(proxy_dropped(rx.clone()));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stopped => break,
            accepted = listener.accept() => accepted,
        };
        let (client, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(?local_addr, error = %e, "fault proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if rx.borrow().refuse_new {
            counters.refused.fetch_add(1, Ordering::SeqCst);
            tracing::debug!(%peer, "fault proxy: refusing new connection");
            drop(client);
            continue;
        }
        let guard = OpenGuard::new(&counters);
        tokio::spawn(serve(client, upstream, rx.clone(), guard));
    }
    tracing::debug!(?local_addr, "fault proxy stopped");
}

/// One client connection: forwards until either side is done, or until the epoch it was opened
/// under is bumped (drop_connections, restore after a black hole) or the proxy is dropped.
async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    mut rx: watch::Receiver<Faults>,
    _open: OpenGuard,
) {
    let (epoch, black_holed) = {
        let f = rx.borrow_and_update();
        (f.epoch, f.black_hole)
    };
    let mut killed_rx = rx.clone();
    let killed = async move {
        // Ok: epoch bumped; Err: proxy dropped. Either way the connection must close.
        let _ = killed_rx.wait_for(|f| f.epoch != epoch).await;
    };
    let work = async move {
        if black_holed {
            // Accepted inside a black hole: never connect upstream, swallow what the client
            // sends. The epoch bump on restore closes it.
            hold(client).await;
            return;
        }
        let server = match TcpStream::connect(upstream).await {
            Ok(server) => server,
            Err(e) => {
                tracing::warn!(%upstream, error = %e, "fault proxy: upstream connect failed");
                return;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        futures::future::join(
            pump(client_read, server_write, rx.clone(), epoch),
            pump(server_read, client_write, rx, epoch),
        )
        .await;
    };
    // Biased so a kill wins over a write that the same watch update (a restore) unblocked:
    // black-holed bytes must never be delivered.
    tokio::select! {
        biased;
        _ = killed => tracing::trace!(%upstream, "fault proxy: connection closed by fault"),
        _ = work => {}
    }
    // Both sockets are dropped here, which closes them.
}

/// Reads and discards until the client closes.
async fn hold(mut client: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// One direction: a reader stamps each chunk with its due time and queues it; a writer
/// delivers chunks in order once due and not black-holed. On EOF the write side is shut down
/// (half-close); on any error the direction ends.
async fn pump<R, W>(mut from: R, mut to: W, rx: watch::Receiver<Faults>, epoch: u64)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut queue) = mpsc::channel::<(Instant, Vec<u8>)>(32);
    let read_rx = rx.clone();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = Instant::now() + read_rx.borrow().latency;
                    if tx.send((due, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping `tx` tells the writer that no more chunks come.
    };
    let mut write_rx = rx;
    let writer = async move {
        while let Some((due, chunk)) = queue.recv().await {
            tokio::time::sleep_until(due).await;
            let open = write_rx
                .wait_for(|f| f.epoch != epoch || !f.black_hole)
                .await
                .map(|f| f.epoch == epoch)
                .unwrap_or(false);
            if !open || to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    futures::future::join(reader, writer).await;
}

/// A fault proxy in front of the suite's server (`MONGODB_URI`).
pub async fn to_the_server() -> FaultProxy {
    FaultProxy::start(upstream_from_env())
        .await
        .expect("start the fault proxy")
}

/// A lock manager whose client goes through `proxy`, with the driver's default 30 s server
/// selection, so a bound it keeps with the server gone is the library's, not the driver's.
pub async fn manager_through(
    proxy: &FaultProxy,
    config: &actix_mongo_lock::LockConfig,
) -> actix::Addr<actix_mongo_lock::LockManager> {
    let options = mongodb::options::ClientOptions::parse(proxy.uri())
        .await
        .expect("the proxy's URI parses");
    let client = mongodb::Client::with_options(options).expect("client options are valid");
    actix_mongo_lock::LockManager::with_client(client, config.clone())
        .await
        .expect("start a manager through the proxy")
}

/// The value of `MONGODB_URI`; panics with a clear message if it is unset.
pub fn env_uri() -> String {
    match std::env::var("MONGODB_URI") {
        Ok(uri) if !uri.trim().is_empty() => uri,
        _ => panic!(
            "MONGODB_URI is not set: these tests need a MongoDB-wire server. \
             Run them through `scripts/with-mongo cargo test ...`, which starts one, \
             or export MONGODB_URI=mongodb://HOST:PORT/"
        ),
    }
}

/// The `host:port` in `MONGODB_URI` to forward to (the first host if it lists several).
/// Panics with a clear message if `MONGODB_URI` is unset or unusable: tests must fail, not
/// skip, when there is no server.
pub fn upstream_from_env() -> SocketAddr {
    let uri = env_uri();
    parse_upstream(&uri).unwrap_or_else(|e| panic!("MONGODB_URI={uri:?}: {e}"))
}

/// The pieces of a `mongodb://` URI: (userinfo, host list, rest starting at `/` or `?`).
fn split_uri(uri: &str) -> Result<(Option<&str>, &str, &str), String> {
    let uri = uri.trim();
    if uri.starts_with("mongodb+srv://") {
        return Err("mongodb+srv:// URIs need DNS; give a mongodb://host:port URI".into());
    }
    let after_scheme = uri
        .strip_prefix("mongodb://")
        .ok_or_else(|| "expected a mongodb:// URI".to_string())?;
    let authority_end = after_scheme.find(['/', '?']).unwrap_or(after_scheme.len());
    let (authority, rest) = after_scheme.split_at(authority_end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    if hosts.is_empty() {
        return Err("no host in the URI".into());
    }
    Ok((userinfo, hosts, rest))
}

/// The first `host:port` of a `mongodb://` URI, resolved (port 27017 if none is given).
pub fn parse_upstream(uri: &str) -> Result<SocketAddr, String> {
    let (_, hosts, _) = split_uri(uri)?;
    let first = hosts.split(',').next().unwrap_or(hosts);
    let with_port = if first.starts_with('[') {
        // [v6] or [v6]:port
        if first.ends_with(']') {
            format!("{first}:27017")
        } else {
            first.to_string()
        }
    } else if first.contains(':') {
        first.to_string()
    } else {
        format!("{first}:27017")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {with_port:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{with_port:?} resolves to no address"))
}

/// `uri` with its host list replaced by `addr`, keeping credentials, database and options,
/// and with `directConnection=true` (replacing any value given).
pub fn proxied_uri(uri: &str, addr: SocketAddr) -> Result<String, String> {
    let (userinfo, _, rest) = split_uri(uri)?;
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, query),
        None => (rest, ""),
    };
    let path = if path.is_empty() { "/" } else { path };
    let mut options: Vec<&str> = query
        .split('&')
        .filter(|o| !o.is_empty())
        .filter(|o| {
            !o.split('=')
                .next()
                .unwrap_or("")
                .eq_ignore_ascii_case("directConnection")
        })
        .collect();
    options.push("directConnection=true");
    let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    Ok(format!(
        "mongodb://{userinfo}{addr}{path}?{}",
        options.join("&")
    ))
}
