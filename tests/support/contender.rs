//! Runs `lock-contender` processes (tests/tools/lock-contender.rs, built as an example) and
//! reads what they print.
//!
//! Each contender prints one `HOLD` line per hold it saw (see the binary's docs), a `REFUSED`
//! line for each Acquire that ran out of time (and an `ASK` line before each Acquire if asked
//! to: tests that need it read those lines themselves), and a last
//! `DONE <process> <grants> <refusals>` line; with `--grant-lines 1`, a `GRANT` line at each
//! grant too. [`ContenderRun::record`] feeds the holds into a [`History`], so holds seen by
//! several processes are checked together, those of a killed process included.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::history::History;

/// The `lock-contender` executable, built (or found up to date) once per test process with
/// `cargo build --example lock-contender` in this test's profile, so a test run alone
/// (`cargo test --test NAME`, which builds no examples) runs the current source too. Panics
/// with cargo's output if it does not build.
pub fn binary() -> String {
    example_binary("lock-contender")
}

/// The executable of the example `name`, built (or found up to date) once per test process,
/// as [`binary`] builds `lock-contender`.
pub fn example_binary(name: &str) -> String {
    built_binary(name, &["--example", name], "examples")
}

/// The executable of the crate's binary `name`, built with `features` (or found up to date)
/// once per test process, as [`example_binary`] builds an example.
pub fn crate_binary(name: &str, features: &str) -> String {
    built_binary(name, &["--bin", name, "--features", features], "")
}

/// `cargo build --quiet TARGET` in this test's profile and target directory; the executable
/// `name` in `subdir` of the profile's directory.
fn built_binary(name: &str, target: &[&str], subdir: &str) -> String {
    static BUILT: OnceLock<std::sync::Mutex<BTreeMap<String, String>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    // This test runs as target/<profile>/deps/<test>-<hash>; examples go to
    // target/<profile>/examples/, binaries to target/<profile>/.
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from target/<profile>/deps");
    let mut build = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet"])
        .args(target);
    if profile_dir
        .file_name()
        .is_some_and(|profile| profile == "release")
    {
        build.arg("--release");
    }
    if let Some(target_dir) = profile_dir.parent() {
        build.env("CARGO_TARGET_DIR", target_dir);
    }
    let output = build.output().expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo build {} failed: {}",
        target.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    let path: PathBuf = profile_dir
        .join(subdir)
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} was not built", path.display());
    let path = path.to_string_lossy().into_owned();
    built.insert(name.to_owned(), path.clone());
    path
}

/// The `lock-contender` flags.
#[derive(Clone, Debug)]
pub struct Contender {
    pub name: String,
    pub process: String,
    pub workers: usize,
    pub resources: usize,
    pub seconds: u64,
    pub ttl_ms: u64,
    pub hold_ms: u64,
}

impl Contender {
    /// Starts a `lock-contender` ([`binary`]) against `uri`, with its
    /// stdout and stderr piped.
    pub fn spawn(&self, uri: &str) -> Child {
        self.spawn_with(uri, &[])
    }

    /// [`Self::spawn`] with more flags, such as `("--timeout-ms", "2000")`.
    pub fn spawn_with(&self, uri: &str, more: &[(&str, &str)]) -> Child {
        Command::new(binary())
            .args(["--name", &self.name, "--process", &self.process])
            .args(["--workers", &self.workers.to_string()])
            .args(["--resources", &self.resources.to_string()])
            .args(["--seconds", &self.seconds.to_string()])
            .args(["--ttl-ms", &self.ttl_ms.to_string()])
            .args(["--hold-ms", &self.hold_ms.to_string()])
            .args(more.iter().flat_map(|(flag, value)| [*flag, *value]))
            .env("MONGODB_URI", uri)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lock-contender")
    }
}

/// One hold as a contender printed it.
#[derive(Clone, Debug)]
pub struct HoldLine {
    pub process: String,
    pub resource: String,
    pub fence: i64,
    pub requested_ms: u64,
    pub granted_ms: u64,
    pub lease_expires_ms: u64,
    pub release_sent_ms: u64,
    pub released_ms: u64,
    /// `released`, `notheld` or `error`.
    pub outcome: String,
    /// A shared hold (the line ended with `shared`).
    pub shared: bool,
}

/// A grant as a contender printed it the moment it had it (`--grant-lines 1`).
#[derive(Clone, Debug)]
pub struct GrantLine {
    pub process: String,
    pub resource: String,
    pub fence: i64,
    pub requested_ms: u64,
    pub granted_ms: u64,
    pub lease_expires_ms: u64,
    pub shared: bool,
}

/// An Acquire that ran out of time, as a contender printed it.
#[derive(Clone, Debug)]
pub struct RefusedLine {
    pub process: String,
    pub resource: String,
    pub requested_ms: u64,
    pub answered_ms: u64,
}

/// Everything one finished contender printed.
#[derive(Clone, Debug, Default)]
pub struct ContenderRun {
    pub holds: Vec<HoldLine>,
    pub refused: Vec<RefusedLine>,
    /// Every `GRANT` line (none without `--grant-lines 1`).
    pub grants: Vec<GrantLine>,
    /// From the `DONE` line: grants and Acquires that ran out of retries.
    pub done: Option<(u64, u64)>,
    pub stderr: String,
}

impl ContenderRun {
    /// Parses a contender's stdout and stderr; panics on a malformed line.
    pub fn parse(stdout: &str, stderr: &str) -> ContenderRun {
        let mut run = ContenderRun {
            stderr: stderr.to_owned(),
            ..ContenderRun::default()
        };
        for line in stdout.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ms = |s: &str| -> u64 {
                s.parse()
                    .unwrap_or_else(|e| panic!("bad time {s:?} in {line}: {e}"))
            };
            match fields.first() {
                Some(&"HOLD") => {
                    let shared = fields.len() == 11 && fields[10] == "shared";
                    let hold = if shared { &fields[..10] } else { &fields[..] };
                    let &[_, process, resource, fence, requested, granted, expires, sent, replied, outcome] =
                        hold
                    else {
                        panic!("malformed HOLD line: {line}");
                    };
                    run.holds.push(HoldLine {
                        process: process.to_owned(),
                        resource: resource.to_owned(),
                        fence: fence.parse().expect("fence"),
                        requested_ms: ms(requested),
                        granted_ms: ms(granted),
                        lease_expires_ms: ms(expires),
                        release_sent_ms: ms(sent),
                        released_ms: ms(replied),
                        outcome: outcome.to_owned(),
                        shared,
                    });
                }
                Some(&"GRANT") => {
                    let [_, process, resource, fence, requested, granted, expires, mode] =
                        fields[..]
                    else {
                        panic!("malformed GRANT line: {line}");
                    };
                    run.grants.push(GrantLine {
                        process: process.to_owned(),
                        resource: resource.to_owned(),
                        fence: fence.parse().expect("fence"),
                        requested_ms: ms(requested),
                        granted_ms: ms(granted),
                        lease_expires_ms: ms(expires),
                        shared: match mode {
                            "shared" => true,
                            "exclusive" => false,
                            _ => panic!("malformed GRANT line: {line}"),
                        },
                    });
                }
                Some(&"REFUSED") => {
                    let [_, process, resource, requested, answered] = fields[..] else {
                        panic!("malformed REFUSED line: {line}");
                    };
                    run.refused.push(RefusedLine {
                        process: process.to_owned(),
                        resource: resource.to_owned(),
                        requested_ms: ms(requested),
                        answered_ms: ms(answered),
                    });
                }
                Some(&"DONE") => {
                    let [_, _, grants, refusals] = fields[..] else {
                        panic!("malformed DONE line: {line}");
                    };
                    run.done = Some((grants.parse().unwrap(), refusals.parse().unwrap()));
                }
                _ => {}
            }
        }
        run
    }

    /// Records every hold in `history`: `released` as a release, anything else as lost when
    /// its Unlock was sent (the holder stopped relying on the hold then). A grant with a
    /// `GRANT` line and no `HOLD` line (its process was killed holding it) is recorded as held
    /// until its lease could end.
    pub fn record(&self, history: &History) {
        self.record_with_leases(history, &BTreeMap::new());
    }

    /// [`Self::record`], with the lease ends of unfinished grants (by resource and fence) as
    /// the server stored them, where known: a takeover before one of them is then an overlap.
    pub fn record_with_leases(
        &self,
        history: &History,
        leases: &BTreeMap<(String, i64), SystemTime>,
    ) {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        for h in &self.holds {
            let id = history.granted_mode(
                &h.process,
                &h.resource,
                h.fence,
                at(h.requested_ms),
                at(h.granted_ms),
                at(h.lease_expires_ms),
                h.shared,
            );
            if h.outcome == "released" {
                history.released(id, at(h.release_sent_ms), at(h.released_ms));
            } else {
                history.lost(id, at(h.release_sent_ms));
            }
        }
        for g in self.unfinished() {
            let lease_end = leases
                .get(&(g.resource.clone(), g.fence))
                .copied()
                .unwrap_or_else(|| at(g.lease_expires_ms));
            history.granted_mode(
                &g.process,
                &g.resource,
                g.fence,
                at(g.requested_ms),
                at(g.granted_ms),
                lease_end,
                g.shared,
            );
        }
    }

    /// The grants with a `GRANT` line and no `HOLD` line: held when the process ended.
    pub fn unfinished(&self) -> Vec<&GrantLine> {
        let ended: BTreeSet<(&str, i64)> = self
            .holds
            .iter()
            .map(|h| (h.resource.as_str(), h.fence))
            .collect();
        self.grants
            .iter()
            .filter(|g| !ended.contains(&(g.resource.as_str(), g.fence)))
            .collect()
    }
}

/// `child`'s stdout, line by line as it prints them (read on a thread of its own, so a child
/// never blocks on a full pipe).
pub fn lines_of(child: &mut Child) -> mpsc::UnboundedReceiver<String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (lines, receiver) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// The first line starting with `prefix` within `within`; panics naming `what` otherwise.
pub async fn line_starting(
    lines: &mut mpsc::UnboundedReceiver<String>,
    prefix: &str,
    within: Duration,
    what: &str,
) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, lines.recv()).await {
            Ok(Some(line)) if line.starts_with(prefix) => return line,
            Ok(Some(_)) => {}
            Ok(None) => panic!("{what}: the process ended first"),
            Err(_) => panic!("{what}: nothing within {within:?}"),
        }
    }
}
