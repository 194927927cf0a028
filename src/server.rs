//! Which server a manager talks to, read from its `buildInfo` answer, and whether a lock on it
//! can be safe.
//!
//! A lock is only as good as the server's atomicity: the grant is one conditional
//! `findOneAndUpdate`, and two of them racing must never both succeed. Some MongoDB-wire servers
//! do not keep that promise. FerretDB 1.x reads the documents an update matches, applies the
//! update in its own process and writes them back, and two such updates racing both read the
//! old document (measured, see `docs/compatibility.md`). Such a server is named in its
//! `buildInfo` answer, so a manager asks once at start and refuses one before it writes
//! anything ([`LockError::UnsafeServer`](crate::LockError::UnsafeServer)).
//!
//! The judgement is a pure function of the answer, [`judge`], so it is tested on answers shaped
//! like every server's.

use mongodb::bson::{Bson, Document};

/// What a server's `buildInfo` answer says about locking on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// MongoDB (or a server answering as MongoDB does), or a test server this crate's suite
    /// runs on.
    Trusted {
        /// The server, as it names itself.
        server: String,
    },
    /// A server whose atomicity this crate has not measured: a manager starts, with a warning.
    Unmeasured {
        /// The server, as it names itself.
        server: String,
        /// What is known about it.
        note: &'static str,
    },
    /// A server measured losing concurrent updates: a manager refuses to start on it unless
    /// told to ([`LockConfig::allow_unsafe_server`](crate::LockConfig::allow_unsafe_server)).
    Unsafe {
        /// The server, as it names itself.
        server: String,
        /// What was measured.
        reason: &'static str,
    },
}

/// Why FerretDB 1.x is refused: what was measured on FerretDB 1.24.
const FERRETDB_1_LOSES_UPDATES: &str = "FerretDB 1.x applies an update by reading the \
    document, changing it in its own process and writing it back, so concurrent updates of one \
    document are lost: on FerretDB 1.24 (SQLite and PostgreSQL backends) 8 clients making 200 \
    $inc each on one document left it at 211 to 470 instead of 1,600, and 4 managers racing for \
    one resource gave two grants the same fence about a hundred times in 3 s. A lock on it is \
    not safe";

/// What is known of FerretDB 2.x.
const FERRETDB_2_UNMEASURED: &str = "FerretDB 2.x (over PostgreSQL with DocumentDB) is not \
    measured by this crate (FerretDB 1.x lost concurrent updates); run its atomicity probe \
    against this server before relying on a lock (MONGODB_URI=... cargo test --test atomicity)";

/// Judges a server by its `buildInfo` answer:
///
/// - FerretDB 0.x and 1.x answer with a `ferretdbVersion` string: [`Verdict::Unsafe`];
/// - FerretDB 2.x answers with a `ferretdb` sub-document (`{version, package}`):
///   [`Verdict::Unmeasured`];
/// - SecantusDB answers with a `secantusVersion`, nx-27017 with `process: "nx_27017"`, and
///   MongoDB with neither: [`Verdict::Trusted`].
pub(crate) fn judge(build_info: &Document) -> Verdict {
    if let Some(version) = build_info.get("ferretdbVersion") {
        return Verdict::Unsafe {
            server: format!("FerretDB {}", text(Some(version))),
            reason: FERRETDB_1_LOSES_UPDATES,
        };
    }
    if let Some(Bson::Document(ferretdb)) = build_info.get("ferretdb") {
        return Verdict::Unmeasured {
            server: format!("FerretDB {}", text(ferretdb.get("version"))),
            note: FERRETDB_2_UNMEASURED,
        };
    }
    let compatible = text(build_info.get("version"));
    let server = if let Some(version) = build_info.get("secantusVersion") {
        format!(
            "SecantusDB {} (as MongoDB {compatible})",
            text(Some(version))
        )
    } else if build_info.get_str("process") == Ok("nx_27017") {
        format!("nx-27017 (as MongoDB {compatible})")
    } else {
        format!("MongoDB {compatible}")
    };
    Verdict::Trusted { server }
}

/// A version as text: a string as it is, anything else (a missing field included) as what it is.
fn text(value: Option<&Bson>) -> String {
    match value {
        Some(Bson::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "(version unknown)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{doc, Document};

    use super::{judge, Verdict};

    /// MongoDB 7.0's answer (a standalone `mongod`, Linux build; the build environment cut short).
    fn mongodb_7() -> Document {
        doc! {
            "version": "7.0.14",
            "gitVersion": "ce59cfc6a3c5e5c067dca0d30697edd68d4f5188",
            "modules": [],
            "allocator": "tcmalloc",
            "javascriptEngine": "mozjs",
            "sysInfo": "deprecated",
            "versionArray": [7, 0, 14, 0],
            "openssl": { "running": "OpenSSL 3.0.2 15 Mar 2022", "compiled": "OpenSSL 3.0.2 15 Mar 2022" },
            "buildEnvironment": { "distmod": "ubuntu2204", "distarch": "x86_64", "target_os": "linux" },
            "bits": 64,
            "debug": false,
            "maxBsonObjectSize": 16777216,
            "storageEngines": ["devnull", "inMemory", "wiredTiger"],
            "ok": 1.0,
        }
    }

    /// FerretDB 1.24.0's answer, as captured (SQLite backend; the PostgreSQL backend answers the
    /// same), its build environment cut short.
    fn ferretdb_1_24() -> Document {
        doc! {
            "version": "7.0.42",
            "gitVersion": "unknown",
            "modules": [],
            "sysInfo": "deprecated",
            "versionArray": [7, 0, 42, 0],
            "bits": 64,
            "debug": false,
            "maxBsonObjectSize": 16777216,
            "buildEnvironment": { "-compiler": "gc", "GOARCH": "amd64", "GOOS": "linux" },
            "ferretdbVersion": "v1.24.0",
            "ferretdbFeatures": { "aggregationStages": [
                "$addFields", "$collStats", "$count", "$group", "$limit", "$match", "$project",
                "$set", "$skip", "$sort", "$unset", "$unwind",
            ] },
            "ok": 1.0,
        }
    }

    /// FerretDB 2.x's answer, shaped as its `buildInfo` handler builds it (not captured: it needs
    /// PostgreSQL with the DocumentDB extension): its own fields moved into a `ferretdb`
    /// sub-document.
    fn ferretdb_2() -> Document {
        doc! {
            "version": "7.0.77",
            "gitVersion": "0d5eb3343",
            "modules": [],
            "sysInfo": "deprecated",
            "versionArray": [7, 0, 77, 0],
            "bits": 64,
            "debug": false,
            "maxBsonObjectSize": 16777216,
            "buildEnvironment": {},
            "ferretdb": { "version": "v2.7.0", "package": "docker" },
            "ok": 1.0,
        }
    }

    /// SecantusDB 0.7.0b3's answer, as captured (without `$clusterTime` and `operationTime`).
    fn secantus() -> Document {
        doc! {
            "version": "8.2.11",
            "gitVersion": "0000000000000000000000000000000000000000",
            "versionArray": [8, 2, 11, 0],
            "bits": 64,
            "debug": false,
            "maxBsonObjectSize": 16777216,
            "secantusVersion": "0.7.0b3",
            "ok": 1.0,
        }
    }

    /// nx-27017 0.8.1's answer, as captured: a `serverStatus`-like document.
    fn nx() -> Document {
        doc! {
            "ok": 1,
            "version": "7.0.0",
            "process": "nx_27017",
            "pid": 28738,
            "host": "vm",
            "uptime": 1,
            "uptimeMillis": 1032,
            "uptimeEstimate": 1,
            "localTime": mongodb::bson::DateTime::now(),
            "connections": { "current": 2, "available": 1000 },
            "mem": { "bits": 64, "resident": 31723520, "virtual": 113319936 },
            "globalLock": { "totalTime": 0 },
            "asserts": { "regular": 0, "warning": 0, "msg": 0, "user": 0, "rollovers": 0 },
        }
    }

    #[test]
    fn mongodb_and_the_test_servers_are_trusted() {
        assert_eq!(
            judge(&mongodb_7()),
            Verdict::Trusted {
                server: "MongoDB 7.0.14".to_owned()
            }
        );
        assert_eq!(
            judge(&secantus()),
            Verdict::Trusted {
                server: "SecantusDB 0.7.0b3 (as MongoDB 8.2.11)".to_owned()
            }
        );
        assert_eq!(
            judge(&nx()),
            Verdict::Trusted {
                server: "nx-27017 (as MongoDB 7.0.0)".to_owned()
            }
        );
    }

    #[test]
    fn ferretdb_1_is_unsafe_whatever_version_it_names() {
        match judge(&ferretdb_1_24()) {
            Verdict::Unsafe { server, reason } => {
                assert_eq!(server, "FerretDB v1.24.0");
                assert!(reason.contains("1,600"), "{reason}");
            }
            other => panic!("FerretDB 1.24 judged {other:?}"),
        }
        // A build without version information, and one with a version that is not text.
        for version in [
            mongodb::bson::Bson::from("unknown"),
            mongodb::bson::Bson::Null,
        ] {
            let mut answer = ferretdb_1_24();
            answer.insert("ferretdbVersion", version);
            assert!(
                matches!(judge(&answer), Verdict::Unsafe { .. }),
                "{answer:?}"
            );
        }
    }

    #[test]
    fn ferretdb_2_is_unmeasured() {
        match judge(&ferretdb_2()) {
            Verdict::Unmeasured { server, note } => {
                assert_eq!(server, "FerretDB v2.7.0");
                assert!(note.contains("--test atomicity"), "{note}");
            }
            other => panic!("FerretDB 2 judged {other:?}"),
        }
    }

    #[test]
    fn a_field_of_another_kind_named_ferretdb_is_not_ferretdb() {
        // Only a sub-document counts as FerretDB 2's mark.
        let mut answer = mongodb_7();
        answer.insert("ferretdb", "no");
        assert!(matches!(judge(&answer), Verdict::Trusted { .. }));
        // A missing version does not hide MongoDB.
        answer.remove("version");
        assert_eq!(
            judge(&answer),
            Verdict::Trusted {
                server: "MongoDB (version unknown)".to_owned()
            }
        );
    }
}
