//! "report-runner": an actix-web service in which each report runs on one instance at a time,
//! however many instances serve it, and which shuts down without dropping a report or making
//! the other instances wait for its backlog.
//!
//! ```text
//! scripts/with-mongo cargo run --example web                       # until Ctrl-C or SIGTERM
//! scripts/with-mongo cargo run --example web -- --demo-seconds 5  # fires requests at itself
//! curl -X POST localhost:8080/reports/daily/run; curl localhost:8080/reports/daily
//! ```
//!
//! `POST /reports/{name}/run` acquires the report's lock (waiting up to `--wait-ms`), runs the
//! report (`--run-ms` of work, written with the grant's fence), unlocks and answers 200 with
//! what ran. It answers 409 when another run held the report for the whole wait
//! (`LockError::is_busy`) and 503 when the lock service cannot answer or this instance is
//! shutting down (`LockError::is_unavailable`). `GET /reports/{name}` answers the lock's
//! `Status` as JSON (`null` when nobody holds it; never the lock id). The `Addr<LockManager>`
//! lives in `web::Data`, shared by every worker thread.
//!
//! Shutting down. Unless told otherwise, actix-web handles signals itself: SIGTERM starts its
//! graceful stop (the listener closes at once; requests in flight get `shutdown_timeout`, 30 s
//! by default, to finish, and that includes Acquires still waiting, which then run their
//! reports one after the other while the other instances wait), SIGINT and SIGQUIT a forced
//! stop (requests in flight are dropped mid-report, their connections closed without an
//! answer, their holds left to `Close` or their leases). Either way the application hears of it
//! only when `run()` returns, and actix then stops the System. So this service disables
//! actix-web's signals and, on SIGTERM or SIGINT alike, runs the recipe itself:
//!
//! 1. `StopGranting`: every new run and every waiting Acquire answers 503 (`Closing`) at once,
//!    so clients go to another instance, whose waiting Acquires take each report as soon as
//!    this one releases it. Unlock and Status keep working.
//! 2. `AwaitReleased::within(DRAIN_TIMEOUT)`: the manager answers once every hold it granted
//!    has ended (the runs in progress have finished and unlocked), or after `DRAIN_TIMEOUT`
//!    with how many are still held; then `LINGER` more. The listener stays open meanwhile, so
//!    a late request, or the next request of a client whose run just ended, gets a clean 503
//!    and goes elsewhere; closing the listener under it would reset its connection.
//! 3. `ServerHandle::stop(true)`: actix-web's graceful stop, with nothing left in flight
//!    (bounded by `shutdown_timeout`).
//! 4. `Close`: releases whatever is still held (nothing, normally), within the lock
//!    configuration's `close_timeout`, and answers a `CloseReport`.
//!
//! So a shutdown takes at most `DRAIN_TIMEOUT + LINGER + SHUTDOWN_TIMEOUT + close_timeout`
//! (20.5 s), inside Kubernetes' 30 s grace period.
//!
//! Flags (or the environment): `--port` (`PORT`, 8080; 0 picks a free one), `--instance`
//! (`INSTANCE`), `--family` (the lock family, "reports"), `--run-ms` (300), `--wait-ms` (1000),
//! `--demo-seconds` (0: serve until a signal); the database is `MONGODB_URI`. What the demo's
//! requests are answered, what the wait of step 2 saw and the closing report are printed to
//! stdout; tracing logs go to stderr when `RUST_LOG` is set.

#[path = "support/flags.rs"]
mod flags;

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::{Addr, MailboxError};
use actix_mongo_lock::{
    Acquire, AwaitReleased, Close, LockConfig, LockError, LockManager, Status, StopGranting,
    Unlock, UnlockOutcome,
};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse, HttpServer, ResponseError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USAGE: &str = "usage: web [--port N] [--instance NAME] [--family NAME] [--run-ms N] \
                     [--wait-ms N] [--demo-seconds N]";
/// How long the shutdown waits for the runs in progress to unlock (step 2).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the listener goes on answering 503 once the runs are done (step 2).
const LINGER: Duration = Duration::from_millis(500);
/// actix-web's own bound on its graceful stop (step 3), in whole seconds as it takes it.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// What every handler shares, through `web::Data`.
struct Runner {
    manager: Addr<LockManager>,
    instance: String,
    run_time: Duration,
    wait: Duration,
}

/// What one run did, as the 200 answer shows it. Times are Unix milliseconds on this machine.
#[derive(serde::Serialize)]
struct Ran {
    report: String,
    instance: String,
    fence: i64,
    started_at_ms: u128,
    finished_at_ms: u128,
}

/// A `LockError` as an HTTP answer: 409 busy, 503 unavailable (or shutting down), 400 for a
/// bad report name, 500 for anything else.
#[derive(Debug)]
struct HttpError(LockError);

impl From<LockError> for HttpError {
    fn from(e: LockError) -> Self {
        HttpError(e)
    }
}

impl From<MailboxError> for HttpError {
    fn from(e: MailboxError) -> Self {
        HttpError(e.into())
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl ResponseError for HttpError {
    fn status_code(&self) -> StatusCode {
        if self.0.is_busy() {
            StatusCode::CONFLICT
        } else if self.0.is_unavailable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else if matches!(self.0, LockError::InvalidResourceId { .. }) {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

async fn run(
    runner: web::Data<Runner>,
    report: web::Path<String>,
) -> Result<HttpResponse, HttpError> {
    let report = report.into_inner();
    let acquire = Acquire::new(report.as_str()).timeout(runner.wait);
    let grant = runner.manager.send(acquire).await??;

    let started_at_ms = unix_ms();
    write_report(&report, grant.fence, runner.run_time).await;
    let finished_at_ms = unix_ms();

    // The report is written whatever the Unlock answers: a hold it cannot release ends with
    // its lease, so a failed Unlock is logged, not turned into a failed run.
    match runner.manager.send(Unlock::new(grant.lock_id)).await? {
        Ok(UnlockOutcome::Released) => {}
        Ok(outcome) => tracing::warn!(%report, ?outcome, "the lease ended during the run"),
        Err(e) => tracing::warn!(%report, error = %e, "could not unlock; the lease will end it"),
    }
    Ok(HttpResponse::Ok().json(Ran {
        report,
        instance: runner.instance.clone(),
        fence: grant.fence,
        started_at_ms,
        finished_at_ms,
    }))
}

async fn status(
    runner: web::Data<Runner>,
    report: web::Path<String>,
) -> Result<HttpResponse, HttpError> {
    let hold = runner
        .manager
        .send(Status::new(report.into_inner()))
        .await??;
    Ok(HttpResponse::Ok().json(hold))
}

/// Stands in for the report's work. A real store would take the write only if `fence` is at
/// least the last fence it accepted for this report (see `examples/fencing.rs`), so a run whose
/// lease ended under it cannot overwrite its successor's output.
async fn write_report(report: &str, fence: i64, run_time: Duration) {
    tracing::info!(report, fence, "running");
    actix_rt::time::sleep(run_time).await;
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Waits for SIGTERM or SIGINT and says which.
async fn stop_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => Ok("SIGTERM"),
        _ = interrupt.recv() => Ok("SIGINT"),
    }
}

/// The demo: clients post runs of two reports at this instance for `seconds`, printing every
/// answer, and on into the shutdown that follows, until each is answered 503 and leaves, as
/// it would for another instance.
async fn demo(addr: SocketAddr, seconds: u64) -> &'static str {
    for client in 0..4 {
        let path = format!("/reports/{}/run", ["daily", "weekly"][client % 2]);
        actix_rt::spawn(async move {
            while let Ok((status, body)) = request(addr, "POST", &path).await {
                println!("POST {path} -> {status} {body}");
                if status == 503 {
                    break;
                }
            }
        });
    }
    actix_rt::time::sleep(Duration::from_secs(seconds)).await;
    if let Ok((status, body)) = request(addr, "GET", "/reports/daily").await {
        println!("GET /reports/daily -> {status} {body}");
    }
    "the end of the demo"
}

/// One HTTP/1.1 request on its own connection; answers the status code and the body.
async fn request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, body.to_owned()))
}

struct Args {
    port: u16,
    instance: String,
    family: String,
    run_time: Duration,
    wait: Duration,
    demo_seconds: u64,
}

fn parse_args() -> Args {
    flags::read("web", USAGE, |flags| {
        let port = flags.text("--port").or_else(|| std::env::var("PORT").ok());
        let instance = flags
            .text("--instance")
            .or_else(|| std::env::var("INSTANCE").ok());
        Ok(Args {
            port: match port {
                None => 8080,
                Some(port) => port.parse().map_err(|e| format!("port {port}: {e}"))?,
            },
            instance: instance.unwrap_or_else(|| format!("report-runner-{}", std::process::id())),
            family: flags
                .text("--family")
                .unwrap_or_else(|| "reports".to_owned()),
            run_time: Duration::from_millis(flags.number("--run-ms", 300)?),
            wait: Duration::from_millis(flags.number("--wait-ms", 1000)?),
            demo_seconds: flags.number("--demo-seconds", 0)?,
        })
    })
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args = parse_args();
    let uri = std::env::var("MONGODB_URI")
        .map_err(|_| "MONGODB_URI is not set: run `scripts/with-mongo cargo run --example web`")?;
    // A waiter asks again at least every 100 ms, so a report released by another instance is
    // taken over within about that.
    let config = LockConfig::new(&args.family)
        .owner(&args.instance)
        .acquire_retries(Duration::from_millis(100), 10);
    let runner = web::Data::new(Runner {
        manager: LockManager::connect(&uri, config).await?,
        instance: args.instance.clone(),
        run_time: args.run_time,
        wait: args.wait,
    });

    let server = HttpServer::new({
        let runner = runner.clone();
        move || {
            App::new()
                .app_data(runner.clone())
                .route("/reports/{name}/run", web::post().to(run))
                .route("/reports/{name}", web::get().to(status))
        }
    })
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_TIMEOUT.as_secs())
    .bind(("127.0.0.1", args.port))?;
    let addr = server.addrs()[0];
    println!("{}: listening on http://{addr}", args.instance);
    let server = server.run();
    let http = server.handle();
    let serving = actix_rt::spawn(server);

    let why = if args.demo_seconds > 0 {
        demo(addr, args.demo_seconds).await
    } else {
        stop_signal().await?
    };
    println!("{}: {why}: stopping", args.instance);
    runner.manager.send(StopGranting).await?;
    let released = runner
        .manager
        .send(AwaitReleased::within(DRAIN_TIMEOUT))
        .await?;
    println!(
        "{}: runs done: still held {}, waited {} ms",
        args.instance,
        released.still_held,
        released.waited.as_millis()
    );
    if !released.all_released() {
        tracing::warn!(
            still_held = released.still_held,
            "runs still hold reports after {DRAIN_TIMEOUT:?}; stopping anyway"
        );
    }
    actix_rt::time::sleep(LINGER).await;
    http.stop(true).await;
    serving.await??;
    let closed = runner.manager.send(Close).await?;
    println!(
        "{}: closed: released {}, unreleased {}",
        args.instance, closed.released, closed.unreleased
    );
    Ok(())
}
