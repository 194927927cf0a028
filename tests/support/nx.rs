//! nx-27017 instances a test starts, stops and restarts itself, for the scenarios that take the
//! server away (a restart on the same port and database file, an in-memory restart).
//!
//! The binary is the one `scripts/with-mongo` installs into the project's `.venv-nx`. Every
//! start gets its own PID file (nx-27017 refuses to start while another instance's PID file
//! exists, and a SIGKILLed instance leaves its file behind) and its own log file, all in a
//! [`ScratchDir`] that is removed when the test ends. An instance still running when its
//! [`NxServer`] is dropped is killed, so a failing test leaves no server behind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::doc;
use mongodb::options::ClientOptions;
use mongodb::Client;

/// The nx-27017 executable installed by `scripts/with-mongo`.
pub fn binary() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-nx/bin/nx-27017");
    assert!(
        path.exists(),
        "{} does not exist: run the tests through scripts/with-mongo, which installs nx-27017",
        path.display()
    );
    path
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// A directory under the system temp dir, removed (with everything in it) when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(prefix: &str) -> ScratchDir {
        let path = std::env::temp_dir().join(format!(
            "actix-mongo-lock-{prefix}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path).expect("create a scratch directory");
        ScratchDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where an instance keeps its data.
#[derive(Clone, Debug)]
pub enum Storage {
    /// `--db memory`: everything is lost when the process ends.
    Memory,
    /// `--db <file>`: SQLite in WAL mode; committed writes survive SIGTERM and SIGKILL.
    File(PathBuf),
}

/// How to stop an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: nx-27017 shuts down and removes its PID file.
    Term,
    /// SIGKILL: the process dies at once (a crash).
    Kill,
}

/// One nx-27017 server on a fixed loopback port, which can be stopped and started again on the
/// same port with the same storage.
pub struct NxServer {
    child: Option<Child>,
    port: u16,
    storage: Storage,
    dir: PathBuf,
    starts: u32,
}

impl NxServer {
    /// Starts an instance on `port` with `storage`, keeping its PID and log files in `dir`,
    /// and waits until it answers `hello`.
    pub async fn start(storage: Storage, port: u16, dir: &Path) -> NxServer {
        let mut server = NxServer {
            child: None,
            port,
            storage,
            dir: dir.to_owned(),
            starts: 0,
        };
        server.start_again().await;
        server
    }

    /// `mongodb://127.0.0.1:PORT/?directConnection=true`.
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the instance with `how` and waits until the process has exited.
    pub fn stop(&mut self, how: Stop) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        match how {
            Stop::Kill => {
                let _ = child.kill();
            }
            Stop::Term => {
                let status = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status()
                    .expect("run kill -TERM");
                assert!(status.success(), "kill -TERM {} failed", child.id());
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("nx-27017 on port {} did not exit after {how:?}", self.port);
                }
            }
        }
    }

    /// Starts the instance again on the same port with the same storage (a fresh PID file,
    /// since a killed instance leaves its own behind) and waits until it answers `hello`.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "nx-27017 is still running");
        self.starts += 1;
        let db = match &self.storage {
            Storage::Memory => "memory".to_owned(),
            Storage::File(path) => path.display().to_string(),
        };
        let pid_file = self
            .dir
            .join(format!("nx-{}-{}.pid", self.port, self.starts));
        let log_file = self
            .dir
            .join(format!("nx-{}-{}.log", self.port, self.starts));
        let child = Command::new(binary())
            .args([
                "--db",
                &db,
                "--host",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
            ])
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("--log-file")
            .arg(&log_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nx-27017");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if !self.is_running() {
                let log = std::fs::read_to_string(&log_file).unwrap_or_default();
                panic!("nx-27017 on port {} exited at start:\n{log}", self.port);
            }
            if hello(&self.uri()).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nx-27017 on port {} did not answer hello within 30 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NxServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether a server at `uri` answers `hello` within half a second.
pub async fn hello(uri: &str) -> bool {
    let Ok(mut options) = ClientOptions::parse(uri).await else {
        return false;
    };
    options.server_selection_timeout = Some(Duration::from_millis(500));
    options.connect_timeout = Some(Duration::from_millis(500));
    let Ok(client) = Client::with_options(options) else {
        return false;
    };
    client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
        .is_ok()
}
