//! Test servers a test starts, stops and restarts itself, for the scenarios that take the server
//! away (a restart on the same port and storage, an in-memory restart).
//!
//! The kind is the suite's (`MONGO_SERVER`, set by `scripts/with-mongo`): nx-27017 or SecantusDB,
//! each the binary `scripts/with-mongo` installs into the project's venv for it, so a restart
//! test runs on both servers. nx-27017 gets its own PID file per start (it refuses to start while
//! another instance's PID file exists, and a SIGKILLed instance leaves its file behind);
//! SecantusDB gets an empty config file, its own TMPDIR and, when file-backed, `--sync-on-commit`
//! (without it a SIGKILL can lose the last acknowledged writes). All files live in a
//! [`ScratchDir`] removed when the test ends. An instance still running when its [`OwnServer`] is
//! dropped is killed, so a failing test leaves no server behind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::doc;
use mongodb::options::ClientOptions;
use mongodb::Client;

/// The kind of server this suite runs on, and so the kind a test starts for itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Nx,
    Secantus,
}

impl Kind {
    /// The suite's server kind: SecantusDB when `MONGO_SERVER=secantus`, nx-27017 otherwise.
    pub fn of_suite() -> Kind {
        match std::env::var("MONGO_SERVER").as_deref() {
            Ok("secantus") => Kind::Secantus,
            _ => Kind::Nx,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Nx => "nx-27017",
            Kind::Secantus => "SecantusDB",
        }
    }

    /// The executable `scripts/with-mongo` installed for this kind.
    fn binary(self) -> PathBuf {
        let relative = match self {
            Kind::Nx => ".venv-nx/bin/nx-27017",
            Kind::Secantus => ".venv-secantus/bin/secantusd-py",
        };
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
        assert!(
            path.exists(),
            "{} does not exist: run the tests through scripts/with-mongo, which installs {}",
            path.display(),
            self.name()
        );
        path
    }
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
    /// In memory: everything is lost when the process ends.
    Memory,
    /// On disk under this path (nx-27017: an SQLite file in WAL mode; SecantusDB: a WiredTiger
    /// directory, synced on every commit): committed writes survive SIGTERM and SIGKILL.
    File(PathBuf),
}

/// How to stop an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: the server shuts down cleanly.
    Term,
    /// SIGKILL: the process dies at once (a crash).
    Kill,
}

/// One server of the suite's kind on a fixed loopback port, which can be stopped and started
/// again on the same port with the same storage.
pub struct OwnServer {
    kind: Kind,
    child: Option<Child>,
    port: u16,
    storage: Storage,
    dir: PathBuf,
    starts: u32,
}

impl OwnServer {
    /// Starts an instance on `port` with `storage`, keeping its PID and log files in `dir`,
    /// and waits until it answers `hello`.
    pub async fn start(storage: Storage, port: u16, dir: &Path) -> OwnServer {
        let mut server = OwnServer {
            kind: Kind::of_suite(),
            child: None,
            port,
            storage,
            dir: dir.to_owned(),
            starts: 0,
        };
        server.start_again().await;
        server
    }

    /// `mongodb://127.0.0.1:PORT/?directConnection=true`, with SecantusDB's 500 ms heartbeat.
    pub fn uri(&self) -> String {
        match self.kind {
            Kind::Nx => format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port),
            Kind::Secantus => format!(
                "mongodb://127.0.0.1:{}/?directConnection=true&heartbeatFrequencyMS=500",
                self.port
            ),
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
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
                    panic!(
                        "{} on port {} did not exit after {how:?}",
                        self.kind.name(),
                        self.port
                    );
                }
            }
        }
    }

    /// Starts the instance again on the same port with the same storage (a fresh PID file for
    /// nx-27017, since a killed instance leaves its own behind) and waits until it answers
    /// `hello`.
    pub async fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "{} is still running",
            self.kind.name()
        );
        self.starts += 1;
        let port = self.port.to_string();
        let log_file = self
            .dir
            .join(format!("server-{}-{}.log", self.port, self.starts));
        let mut command = Command::new(self.kind.binary());
        match self.kind {
            Kind::Nx => {
                let db = match &self.storage {
                    Storage::Memory => "memory".to_owned(),
                    Storage::File(path) => path.display().to_string(),
                };
                let pid_file = self
                    .dir
                    .join(format!("nx-{}-{}.pid", self.port, self.starts));
                command
                    .args(["--db", &db, "--host", "127.0.0.1", "-p", &port])
                    .arg("--pid-file")
                    .arg(&pid_file)
                    .arg("--log-file")
                    .arg(&log_file)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
            }
            Kind::Secantus => {
                let config = self.dir.join("secantusd.toml");
                let tmp = self.dir.join("tmp");
                std::fs::write(&config, "").expect("write an empty SecantusDB config");
                std::fs::create_dir_all(&tmp).expect("create SecantusDB's TMPDIR");
                command
                    .arg("--config")
                    .arg(&config)
                    .args(["--host", "127.0.0.1", "--port", &port])
                    .args(["--enable-test-commands", "--log-level", "WARNING"])
                    .env("TMPDIR", &tmp);
                match &self.storage {
                    Storage::Memory => {
                        command.args(["--storage-path", ":memory:"]);
                    }
                    Storage::File(path) => {
                        command
                            .arg("--storage-path")
                            .arg(path)
                            .arg("--sync-on-commit");
                    }
                }
                let log = std::fs::File::create(&log_file).expect("create the server log");
                command.stdout(Stdio::null()).stderr(log);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.kind.name()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if !self.is_running() {
                let log = std::fs::read_to_string(&log_file).unwrap_or_default();
                panic!(
                    "{} on port {} exited at start:\n{log}",
                    self.kind.name(),
                    self.port
                );
            }
            if hello(&self.uri()).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} on port {} did not answer hello within 30 s",
                self.kind.name(),
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OwnServer {
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
