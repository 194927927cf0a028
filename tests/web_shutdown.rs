//! The shutdown recipe of `examples/web.rs`, with two instances as processes against one server.
//!
//! Instance `a` runs every report, with a second request per report waiting behind each run;
//! instance `b` has a request per report waiting for `a`'s holds. Then `a` gets SIGTERM. The
//! clients act as a load balancer would: once `a` answers 503 or refuses a connection, they
//! send to `b`. The test checks that every request got a whole HTTP answer (no reset, no
//! connection closed without one), that `a`'s waiting requests were answered 503 rather than run,
//! that `b` took each report over soon after `a`'s last run of it ended (and never during it),
//! that `a`'s `AwaitReleased` saw every run unlock before its bound and after the last run
//! ended, that `a` stopped within its stated bound having left nothing for `Close`, and that no
//! hold is left once both have stopped. It prints the takeover times.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_mongo_lock::{ListHolds, LockConfig, LockManager};
use support::server::{client, unique_name, uri};

const REPORTS: [&str; 3] = ["r0", "r1", "r2"];
/// How long a report runs, and how long a request waits for its lock.
const RUN_MS: u64 = 600;
const WAIT_MS: u64 = 1500;
/// How long after SIGTERM a run may still start in `a`: a grant already on its way when the
/// signal came. Far shorter than a run, so a backlog served after the signal cannot hide in it.
const STOP_GRANTING_MARGIN_MS: u128 = 200;
/// The example's stated bound on a shutdown (drain 10 s, actix-web's stop 5 s, `Close` 5 s),
/// with a margin for a loaded machine.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(30);
/// How soon after `a`'s last run of a report ends `b` must have started it: waiters ask every
/// 100 ms at most, so a few hundred milliseconds is expected; this is the generous bound.
const TAKEOVER_BOUND_MS: u128 = 1500;

/// Cargo builds examples for a plain `cargo test` but not for `cargo test --test web_shutdown`,
/// and tells a test no path to them; so the test builds the example itself (at once when it is
/// up to date) and takes its path from cargo's report.
fn build_example() -> PathBuf {
    let mut cargo = Command::new(env!("CARGO"));
    // Cargo runs this test with the package's variables set (CARGO_PKG_NAME, OUT_DIR, ...).
    // Build scripts that watch them (ring's does) would see them changed and rebuild, here and
    // again in the next `cargo test`; so the build runs without them, as from a shell.
    const SET_FOR_TESTS: [&str; 8] = [
        "CARGO_MANIFEST_",
        "CARGO_PKG_",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if SET_FOR_TESTS.iter().any(|set| name.starts_with(set)) {
            cargo.env_remove(name.as_ref());
        }
    }
    cargo
        .args([
            "build",
            "--example",
            "web",
            "--message-format=json-render-diagnostics",
        ])
        .args([
            "--manifest-path",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        ])
        .stderr(Stdio::inherit());
    if !cfg!(debug_assertions) {
        cargo.arg("--release");
    }
    let built = cargo.output().expect("run cargo build --example web");
    assert!(built.status.success(), "cargo build --example web failed");
    String::from_utf8_lossy(&built.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == "web")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no executable for the web example")
}

/// One instance of the example, and the lines it printed, each with when it was read.
struct Instance {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<(SystemTime, String)>>>,
}

impl Instance {
    fn start(binary: &PathBuf, name: &'static str, family: &str) -> Instance {
        let mut child = Command::new(binary)
            .args(["--port", "0", "--instance", name, "--family", family])
            .args([
                "--run-ms",
                &RUN_MS.to_string(),
                "--wait-ms",
                &WAIT_MS.to_string(),
            ])
            .env("MONGODB_URI", uri())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the web example");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut first = String::new();
        stdout.read_line(&mut first).expect("read the first line");
        let addr = first
            .trim()
            .rsplit_once("http://")
            .and_then(|(_, addr)| addr.parse().ok())
            .unwrap_or_else(|| panic!("{name} did not say where it listens: {first:?}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let read = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                read.lock().unwrap().push((SystemTime::now(), line));
            }
        });
        Instance {
            name,
            child,
            addr,
            lines,
        }
    }

    fn sigterm(&self) -> SystemTime {
        let sent = SystemTime::now();
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -TERM {} failed", self.name);
        sent
    }

    /// Waits at most `bound` for the process to exit; answers its status and when it exited.
    fn exit_within(&mut self, bound: Duration) -> (ExitStatus, SystemTime) {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the instance") {
                return (status, SystemTime::now());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{} did not exit within {bound:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn printed(&self, starting: &str) -> Option<(SystemTime, String)> {
        let lines = self.lines.lock().unwrap();
        let prefix = format!("{}: {starting}", self.name);
        lines
            .iter()
            .find(|(_, line)| line.starts_with(&prefix))
            .cloned()
    }
}

/// A failed test leaves no instance serving.
impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What became of one request.
#[derive(Debug, Clone)]
enum Outcome {
    Http(u16, String),
    /// The instance's listener was closed: a load balancer sends elsewhere.
    Refused,
    /// A reset, or a connection closed or timed out without an answer.
    Broken(String),
}

#[derive(Debug, Clone)]
struct Answer {
    report: &'static str,
    to: usize,
    sent: SystemTime,
    outcome: Outcome,
}

/// A run as a 200 answer reports it.
#[derive(Debug, Clone)]
struct Run {
    report: String,
    instance: String,
    fence: i64,
    started_ms: u128,
    finished_ms: u128,
}

impl Answer {
    fn run(&self) -> Option<Run> {
        let Outcome::Http(200, body) = &self.outcome else {
            return None;
        };
        let ran: serde_json::Value = serde_json::from_str(body).expect("a 200 answer is JSON");
        let ms = |field: &str| ran[field].as_u64().expect("a time in ms") as u128;
        Some(Run {
            report: ran["report"].as_str().expect("report").to_owned(),
            instance: ran["instance"].as_str().expect("instance").to_owned(),
            fence: ran["fence"].as_i64().expect("fence"),
            started_ms: ms("started_at_ms"),
            finished_ms: ms("finished_at_ms"),
        })
    }
}

/// One HTTP/1.1 request on its own connection.
fn request(addr: SocketAddr, method: &str, path: &str) -> Outcome {
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Outcome::Refused,
        Err(e) => return Outcome::Broken(format!("connect: {e}")),
    };
    // Far longer than any answer takes (a wait, a run and an unlock).
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("set a read timeout");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = stream.write_all(head.as_bytes()) {
        return Outcome::Broken(format!("write: {e}"));
    }
    let mut response = String::new();
    if let Err(e) = stream.read_to_string(&mut response) {
        return Outcome::Broken(format!("read: {e}"));
    }
    match response.get(9..12).and_then(|code| code.parse().ok()) {
        Some(status) => {
            let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
            Outcome::Http(status, body.to_owned())
        }
        None => Outcome::Broken(format!("no answer: {response:?}")),
    }
}

/// A client posting runs of `report`, first to instance `to`, until `stop`; after instance 0
/// answers 503 or refuses a connection, it sends to instance 1, as a load balancer would.
fn poster(
    report: &'static str,
    mut to: usize,
    addrs: [SocketAddr; 2],
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let sent = SystemTime::now();
            let outcome = request(addrs[to], "POST", &format!("/reports/{report}/run"));
            let elsewhere = matches!(outcome, Outcome::Http(503, _) | Outcome::Refused);
            answers.lock().unwrap().push(Answer {
                report,
                to,
                sent,
                outcome,
            });
            if elsewhere {
                if to == 1 {
                    // Instance 1 never shuts down while clients run; the test fails on this.
                    std::thread::sleep(Duration::from_millis(100));
                }
                to = 1;
            }
        }
    })
}

fn unix_ms(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis()
}

#[actix_rt::test]
async fn sigterm_lets_running_reports_finish_while_the_other_instance_takes_over() {
    let binary = build_example();
    let family = unique_name("web");
    let mut a = Instance::start(&binary, "a", &family);
    let mut b = Instance::start(&binary, "b", &family);
    let addrs = [a.addr, b.addr];
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let mut clients = Vec::new();

    // Two clients per report at `a`: one runs it while the other waits in `a`.
    for report in REPORTS {
        for _ in 0..2 {
            clients.push(poster(report, 0, addrs, stop.clone(), answers.clone()));
        }
    }
    // Once `a` runs every report (as `b`'s Status shows), a client per report at `b`, waiting.
    for report in REPORTS {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Outcome::Http(200, body) = request(b.addr, "GET", &format!("/reports/{report}"))
            {
                let hold: serde_json::Value = serde_json::from_str(&body).expect("Status as JSON");
                assert!(
                    hold.get("lock_id").is_none(),
                    "Status shows the lock id: {body}"
                );
                if hold["owner"] == "a" && hold["live"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "a never ran {report}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for report in REPORTS {
        clients.push(poster(report, 1, addrs, stop.clone(), answers.clone()));
    }
    std::thread::sleep(Duration::from_millis(300));

    let sigterm_at = a.sigterm();
    let (a_status, a_exited_at) = a.exit_within(SHUTDOWN_BOUND);
    assert!(a_status.success(), "a exited with {a_status}");
    // `b` goes on until it has run every report since the signal.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !REPORTS.iter().all(|report| {
        answers
            .lock()
            .unwrap()
            .iter()
            .filter_map(Answer::run)
            .any(|run| {
                run.report == *report && run.instance == "b" && run.started_ms > unix_ms(sigterm_at)
            })
    }) {
        assert!(
            Instant::now() < deadline,
            "b did not take every report over"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("a client panicked");
    }
    b.sigterm();
    let (b_status, _) = b.exit_within(SHUTDOWN_BOUND);
    assert!(b_status.success(), "b exited with {b_status}");

    let answers = answers.lock().unwrap().clone();
    let broken: Vec<String> = answers
        .iter()
        .filter_map(|answer| match &answer.outcome {
            Outcome::Broken(why) => Some(format!("{} at {}: {why}", answer.report, answer.to)),
            _ => None,
        })
        .collect();
    assert!(broken.is_empty(), "requests without an answer: {broken:#?}");
    for answer in &answers {
        if let Outcome::Refused = answer.outcome {
            assert!(
                answer.to == 0 && answer.sent > sigterm_at,
                "a connection refused other than by a after its signal: {answer:?}"
            );
        }
        if let Outcome::Http(status, body) = &answer.outcome {
            assert!(
                [200, 409].contains(status) || (*status == 503 && answer.to == 0),
                "unexpected answer from instance {}: {status} {body}",
                answer.to
            );
        }
    }
    let waits_ended = answers
        .iter()
        .filter(|answer| {
            answer.to == 0
                && answer.sent < sigterm_at
                && matches!(answer.outcome, Outcome::Http(503, _))
        })
        .count();
    assert!(waits_ended > 0, "no request waiting in a was answered 503");

    let (done_at, done) = a
        .printed("runs done")
        .expect("a printed what AwaitReleased answered");
    assert!(
        done.contains("still held 0,"),
        "a's runs did not all unlock within its bound: {done}"
    );
    let (_, closed) = a.printed("closed").expect("a printed its CloseReport");
    assert!(
        closed.ends_with("released 0, unreleased 0"),
        "a left holds for Close: {closed}"
    );

    let runs: Vec<Run> = answers.iter().filter_map(Answer::run).collect();
    // `a` grants nothing once it has the signal: no waiting request and no new one runs there.
    // The margin covers the signal's delivery and a grant already on its way at that moment.
    let late: Vec<&Run> = runs
        .iter()
        .filter(|run| {
            run.instance == "a" && run.started_ms > unix_ms(sigterm_at) + STOP_GRANTING_MARGIN_MS
        })
        .collect();
    assert!(late.is_empty(), "a started runs after its signal: {late:?}");
    println!(
        "a's AwaitReleased answered {} ms after SIGTERM; a stopped {} ms after SIGTERM; \
         {} requests, {} runs, {waits_ended} waits in a ended with 503",
        unix_ms(done_at) - unix_ms(sigterm_at),
        unix_ms(a_exited_at) - unix_ms(sigterm_at),
        answers.len(),
        runs.len()
    );
    for report in REPORTS {
        let mut of_report: Vec<&Run> = runs.iter().filter(|run| run.report == report).collect();
        of_report.sort_by_key(|run| run.started_ms);
        for pair in of_report.windows(2) {
            assert!(
                pair[1].started_ms >= pair[0].finished_ms && pair[1].fence > pair[0].fence,
                "runs of {report} overlapped or fences did not rise: {pair:?}"
            );
        }
        let last_in_a = of_report
            .iter()
            .rfind(|run| run.instance == "a")
            .expect("a ran every report");
        let first_in_b = of_report
            .iter()
            .find(|run| run.instance == "b" && run.started_ms > last_in_a.started_ms)
            .expect("b ran every report after a");
        // The run ends, then it unlocks, then AwaitReleased answers: never before.
        assert!(
            unix_ms(done_at) >= last_in_a.finished_ms,
            "a's AwaitReleased answered before its last run of {report} ended: {done}"
        );
        let takeover = first_in_b.started_ms - last_in_a.finished_ms;
        println!(
            "{report}: a's last run ended {} ms after SIGTERM; b took over {takeover} ms after that \
             ({} ms after SIGTERM)",
            last_in_a.finished_ms as i128 - unix_ms(sigterm_at) as i128,
            first_in_b.started_ms - unix_ms(sigterm_at)
        );
        assert!(
            takeover <= TAKEOVER_BOUND_MS,
            "b took {report} over {takeover} ms after a's last run ended"
        );
    }

    let manager = LockManager::with_client(client().await, LockConfig::new(&family))
        .await
        .expect("start a manager to look at the holds");
    let holds = manager.send(ListHolds).await.unwrap().unwrap();
    assert!(holds.is_empty(), "holds left behind: {holds:?}");
}
