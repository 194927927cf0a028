//! A loopback TCP proxy to the test server that changes one thing: the reply to `buildInfo`,
//! into which it merges fields a test chooses (say, FerretDB's `ferretdbVersion`). Every other
//! byte passes unchanged, so a manager behind it talks to the real server in every other
//! request, its grants and releases included; only what the server says it is changes.
//!
//! It reads the MongoDB wire protocol one message at a time: a client's `OP_MSG` whose command
//! is `buildInfo` is noted by its request id, and the server's `OP_MSG` that answers it is
//! decoded, given the fields, encoded again (its checksum, if any, dropped) and sent on. The
//! driver sends commands as `OP_MSG` and compresses nothing unless asked to.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mongodb::bson::Document;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The wire protocol's `OP_MSG` op code.
const OP_MSG: i32 = 2013;
/// `OP_MSG`'s flag saying a CRC-32C checksum ends the message.
const CHECKSUM_PRESENT: u32 = 1;

/// A proxy that merges `extra` into every `buildInfo` reply. Stops (listener and connections)
/// when dropped.
pub struct BuildInfoProxy {
    local_addr: SocketAddr,
    rewritten: Arc<AtomicUsize>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl BuildInfoProxy {
    /// Binds `127.0.0.1:0` and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr, extra: Document) -> io::Result<BuildInfoProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let local_addr = listener.local_addr()?;
        let rewritten = Arc::new(AtomicUsize::new(0));
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let extra = Arc::new(extra);
        let accept = {
            let (rewritten, tasks) = (Arc::clone(&rewritten), Arc::clone(&tasks));
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let connection = tokio::spawn(serve(
                        client,
                        upstream,
                        Arc::clone(&extra),
                        Arc::clone(&rewritten),
                    ));
                    tasks.lock().unwrap().push(connection);
                }
            })
        };
        tasks.lock().unwrap().push(accept);
        Ok(BuildInfoProxy {
            local_addr,
            rewritten,
            tasks,
        })
    }

    /// `MONGODB_URI` with its host replaced by this proxy (credentials and options kept,
    /// `directConnection=true`).
    pub fn uri_from_env(&self) -> String {
        let uri = super::proxy::env_uri();
        super::proxy::proxied_uri(&uri, self.local_addr)
            .unwrap_or_else(|e| panic!("MONGODB_URI={uri:?} is not usable here: {e}"))
    }

    /// How many `buildInfo` replies it has rewritten.
    pub fn rewritten(&self) -> usize {
        self.rewritten.load(Ordering::SeqCst)
    }
}

impl Drop for BuildInfoProxy {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// One connection: client to server as it is (noting `buildInfo` requests), server to client
/// with `buildInfo` replies rewritten.
async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    extra: Arc<Document>,
    rewritten: Arc<AtomicUsize>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let asked: Arc<Mutex<HashSet<i32>>> = Arc::default();
    let requests = {
        let asked = Arc::clone(&asked);
        async move {
            while let Ok(message) = read_message(&mut client_read).await {
                if is_build_info_request(&message) {
                    asked.lock().unwrap().insert(request_id(&message));
                }
                if server_write.write_all(&message).await.is_err() {
                    break;
                }
            }
            let _ = server_write.shutdown().await;
        }
    };
    let replies = async move {
        while let Ok(mut message) = read_message(&mut server_read).await {
            let answers = response_to(&message);
            if asked.lock().unwrap().remove(&answers) {
                message = with_fields(&message, &extra);
                rewritten.fetch_add(1, Ordering::SeqCst);
            }
            if client_write.write_all(&message).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    futures::future::join(requests, replies).await;
}

/// One whole message: its 4-byte little-endian length (which counts itself), then the rest.
async fn read_message(from: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    from.read_exact(&mut length).await?;
    let total = i32::from_le_bytes(length);
    if !(16..=64 * 1024 * 1024).contains(&total) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad length"));
    }
    let mut message = vec![0u8; total as usize];
    message[..4].copy_from_slice(&length);
    from.read_exact(&mut message[4..]).await?;
    Ok(message)
}

fn int_at(message: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(message[at..at + 4].try_into().unwrap())
}

fn request_id(message: &[u8]) -> i32 {
    int_at(message, 4)
}

fn response_to(message: &[u8]) -> i32 {
    int_at(message, 8)
}

/// The body (section of kind 0) of an `OP_MSG`, with where it ends; `None` for anything else.
fn body(message: &[u8]) -> Option<(Document, usize)> {
    if int_at(message, 12) != OP_MSG || message.len() < 26 || message[20] != 0 {
        return None;
    }
    let length = int_at(message, 21) as usize;
    let end = 21 + length;
    let document = Document::from_reader(message.get(21..end)?).ok()?;
    Some((document, end))
}

fn is_build_info_request(message: &[u8]) -> bool {
    body(message).is_some_and(|(command, _)| {
        command
            .keys()
            .next()
            .is_some_and(|name| name.eq_ignore_ascii_case("buildInfo"))
    })
}

/// `reply` with `extra`'s fields set in its body; sections after the body kept, the checksum
/// dropped. A reply that is not an `OP_MSG` with a body is returned as it is.
fn with_fields(reply: &[u8], extra: &Document) -> Vec<u8> {
    let Some((mut document, body_end)) = body(reply) else {
        return reply.to_vec();
    };
    for (key, value) in extra {
        document.insert(key.clone(), value.clone());
    }
    let flags = u32::from_le_bytes(reply[16..20].try_into().unwrap());
    let sections_end = if flags & CHECKSUM_PRESENT != 0 {
        reply.len() - 4
    } else {
        reply.len()
    };
    let mut encoded = Vec::new();
    document.to_writer(&mut encoded).unwrap();
    let mut message = Vec::with_capacity(reply.len() + encoded.len());
    message.extend_from_slice(&[0; 4]);
    message.extend_from_slice(&reply[4..16]);
    message.extend_from_slice(&(flags & !CHECKSUM_PRESENT).to_le_bytes());
    message.push(0);
    message.extend_from_slice(&encoded);
    message.extend_from_slice(&reply[body_end..sections_end]);
    let total = message.len() as i32;
    message[..4].copy_from_slice(&total.to_le_bytes());
    message
}
