//! Bad input never reaches the database as anything but a literal value: resource ids and lock
//! ids that are empty, huge, hold NUL, or look like query operators, field paths or SQL get a
//! typed error or act on exactly the resource they name, and leave every other lock document
//! byte-for-byte as it was.
//!
//! Run with `scripts/with-mongo cargo test --test bad_input`.

mod support;

use std::time::Duration;

use actix_mongo_lock::{Acquire, Lock, LockError, LockId, Renew, Status, Unlock, UnlockOutcome};
use mongodb::bson::{Bson, Document};
use support::server::{fast_config, manager, snapshot, stored};

/// The documents of `all` whose `resource` is one of `before`'s, in order.
fn same_resources(before: &[Document], all: &[Document]) -> Vec<Document> {
    let names: Vec<&str> = before
        .iter()
        .map(|d| d.get_str("resource").unwrap())
        .collect();
    all.iter()
        .filter(|d| names.contains(&d.get_str("resource").unwrap_or("")))
        .cloned()
        .collect()
}

/// Resource ids the manager refuses before touching the database.
fn rejected_resource_ids() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("10 KiB", "x".repeat(10 * 1024)),
        ("513 bytes", "y".repeat(513)),
        ("NUL only", "\0".to_owned()),
        ("NUL inside", "vic\0tim".to_owned()),
        ("NUL at the end", "victim\0".to_owned()),
        ("10 KiB of $", "$".repeat(10 * 1024)),
    ]
}

/// Resource ids that are valid, however odd: each must lock exactly the resource it names.
fn literal_resource_ids() -> Vec<(&'static str, String)> {
    vec![
        ("$where", "$where".to_owned()),
        (
            "$where with code",
            "$where: function() { return true }".to_owned(),
        ),
        ("{\"$ne\": null} as text", "{\"$ne\": null}".to_owned()),
        ("{\"$gt\": \"\"} as text", "{\"$gt\": \"\"}".to_owned()),
        ("$or as text", "{\"$or\": [{}, {\"a\": 1}]}".to_owned()),
        ("$$NOW", "$$NOW".to_owned()),
        ("$", "$".to_owned()),
        ("dot", ".".to_owned()),
        ("dots", "..".to_owned()),
        ("dotted path", "exclusive.lockId".to_owned()),
        ("$-dotted path", "$exclusive.$lockId.$$".to_owned()),
        ("field name", "resource".to_owned()),
        ("regex", "^.*$".to_owned()),
        ("prefix of another", "vic".to_owned()),
        ("another with a space", "victim ".to_owned()),
        ("another in capitals", "VICTIM".to_owned()),
        ("SQL quote", "' OR '1'='1".to_owned()),
        ("SQL comment", "victim' --".to_owned()),
        ("SQL statement", "x\"); DROP TABLE locks; --".to_owned()),
        ("SQL LIKE wildcards", "%_%".to_owned()),
        ("JSON path", "$.exclusive[0]".to_owned()),
        ("backslashes", "\\\\\\".to_owned()),
        ("newline and tab", "a\nb\tc".to_owned()),
        ("non-ASCII", "verrou-🔒-ß".to_owned()),
        ("512 bytes", "z".repeat(512)),
    ]
}

#[actix_rt::test]
async fn bad_resource_ids_get_a_typed_error_or_lock_exactly_what_they_name() {
    let config = fast_config("bad_resources").acquire_retries(Duration::from_millis(20), 2);
    let locks = manager(&config).await;
    let other = manager(&config).await;
    // Documents that must not change: a live hold and a released resource of another manager.
    let victim = other.send(Lock::new("victim")).await.unwrap().unwrap();
    let released = other.send(Lock::new("released")).await.unwrap().unwrap();
    other
        .send(Unlock::new(released.lock_id))
        .await
        .unwrap()
        .unwrap();
    let before = snapshot(&config).await;
    assert_eq!(before.len(), 2);

    for (what, id) in rejected_resource_ids() {
        let lock = locks.send(Lock::new(id.clone())).await.unwrap();
        let acquire = locks.send(Acquire::new(id.clone())).await.unwrap();
        let status = locks.send(Status::new(id.clone())).await.unwrap();
        for (message, answer) in [
            ("Lock", lock.map(|_| ())),
            ("Acquire", acquire.map(|_| ())),
            ("Status", status.map(|_| ())),
        ] {
            assert!(
                matches!(answer, Err(LockError::InvalidResourceId { .. })),
                "{message} of a resource id that is {what} answered {answer:?}"
            );
        }
        assert_eq!(
            snapshot(&config).await,
            before,
            "a resource id that is {what} changed the collection"
        );
    }

    let literal = literal_resource_ids();
    for (what, id) in &literal {
        let grant = locks
            .send(Lock::new(id.clone()))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("Lock of a resource id that is {what} answered {e:?}"));
        assert_eq!(grant.resource_id.as_str(), id);
        let document = stored(&config, id)
            .await
            .unwrap_or_else(|| panic!("{what}: no document stored under its literal name"));
        assert_eq!(
            document.get_str("resource").unwrap(),
            format!("{}-{id}", config.name),
            "{what}"
        );
        let exclusive = document.get_document("exclusive").unwrap();
        assert_eq!(exclusive.get_str("lockId").unwrap(), grant.lock_id.as_str());
        let again = locks.send(Lock::new(id.clone())).await.unwrap();
        assert!(
            matches!(again, Err(LockError::AlreadyLocked { .. })),
            "{what}: a second Lock answered {again:?}"
        );
        let status = locks
            .send(Status::new(id.clone()))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("Status of a resource id that is {what} answered {e:?}"));
        assert!(status.is_some_and(|s| s.fence == grant.fence), "{what}");
        let outcome = locks.send(Unlock::new(grant.lock_id)).await.unwrap();
        assert_eq!(outcome.unwrap(), UnlockOutcome::Released, "{what}");
        let regrant = locks
            .send(Acquire::new(id.clone()))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("Acquire of a resource id that is {what} answered {e:?}"));
        assert!(regrant.fence > grant.fence, "{what}");
        let outcome = locks.send(Unlock::new(regrant.lock_id)).await.unwrap();
        assert_eq!(outcome.unwrap(), UnlockOutcome::Released, "{what}");

        let now = snapshot(&config).await;
        assert_eq!(
            same_resources(&before, &now),
            before,
            "working on a resource id that is {what} changed other resources' documents"
        );
    }

    // Exactly one document more per odd resource id, each under its literal name.
    let after = snapshot(&config).await;
    assert_eq!(after.len(), before.len() + literal.len());
    let still = other.send(Unlock::new(victim.lock_id)).await.unwrap();
    assert_eq!(
        still.unwrap(),
        UnlockOutcome::Released,
        "the victim's hold survived"
    );
    println!(
        "bad resource ids: {} rejected (InvalidResourceId, collection unchanged), {} odd but \
         valid ones each locked exactly their literal name; other documents unchanged",
        rejected_resource_ids().len(),
        literal.len()
    );
}

#[actix_rt::test]
async fn bad_lock_ids_are_refused_and_a_changed_character_releases_nothing() {
    let config = fast_config("bad_lock_ids");
    let locks = manager(&config).await;
    let other = manager(&config).await;
    let victim = other.send(Lock::new("victim")).await.unwrap().unwrap();
    let original = victim.lock_id.to_string();
    let before = snapshot(&config).await;

    let invalid: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("short number", "1234".to_owned()),
        ("$where", "$where".to_owned()),
        ("{\"$ne\": null} as text", "{\"$ne\": null}".to_owned()),
        (
            "{\"$exists\": true} as text",
            "{\"$exists\": true}".to_owned(),
        ),
        ("null", "null".to_owned()),
        ("dotted path", "exclusive.lockId".to_owned()),
        ("$ and dots", "$.$.$".to_owned()),
        ("SQL", "' OR '1'='1".to_owned()),
        ("10 KiB", "a".repeat(10 * 1024)),
        ("NUL", "\0".to_owned()),
        ("the id with a NUL after it", format!("{original}\0")),
        (
            "the id with a NUL inside",
            format!("{}\0{}", &original[..8], &original[9..]),
        ),
        ("the id in capitals", original.to_uppercase()),
        ("the id in braces", format!("{{{original}}}")),
        ("the id as a URN", format!("urn:uuid:{original}")),
        ("the id without hyphens", original.replace('-', "")),
        ("the id with a space", format!("{original} ")),
        ("the id twice", format!("{original}{original}")),
        ("the id cut short", original[..35].to_owned()),
        (
            "a version 1 UUID",
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8".to_owned(),
        ),
        (
            "the nil UUID",
            "00000000-0000-0000-0000-000000000000".to_owned(),
        ),
        (
            "the max UUID",
            "ffffffff-ffff-ffff-ffff-ffffffffffff".to_owned(),
        ),
    ];
    for (what, text) in &invalid {
        let parsed = LockId::parse(text);
        assert!(
            matches!(parsed, Err(LockError::InvalidLockId { .. })),
            "LockId::parse of {what} answered {parsed:?}"
        );
    }

    // Another manager's id with one character changed, at every position, to several others.
    let (mut parsed_ok, mut refused) = (0, 0);
    for position in 0..original.len() {
        for replacement in ['0', '4', '8', 'a', 'f', 'g', 'A', '-', '$', '.'] {
            let mut changed: Vec<char> = original.chars().collect();
            if changed[position] == replacement {
                continue;
            }
            changed[position] = replacement;
            let changed: String = changed.into_iter().collect();
            match LockId::parse(&changed) {
                Ok(id) => {
                    parsed_ok += 1;
                    let outcome = locks.send(Unlock::new(id.clone())).await.unwrap();
                    assert_eq!(
                        outcome.unwrap(),
                        UnlockOutcome::NotHeld,
                        "position {position} changed to {replacement:?} released something"
                    );
                    let renew = locks.send(Renew::new(id)).await.unwrap();
                    assert!(
                        matches!(renew, Err(LockError::LockLost)),
                        "Renew of a changed id answered {renew:?}"
                    );
                }
                Err(LockError::InvalidLockId { .. }) => refused += 1,
                Err(e) => panic!("LockId::parse answered {e:?}"),
            }
        }
    }
    assert_eq!(
        snapshot(&config).await,
        before,
        "a bad or changed lock id changed the collection"
    );
    let exclusive = stored(&config, "victim").await.unwrap();
    assert_eq!(
        exclusive.get_document("exclusive").unwrap().get("lockId"),
        Some(&Bson::String(original.clone()))
    );
    let outcome = other.send(Unlock::new(victim.lock_id)).await.unwrap();
    assert_eq!(outcome.unwrap(), UnlockOutcome::Released);
    println!(
        "bad lock ids: {} invalid-looking ids refused by LockId::parse; one character of a live \
         id changed: {parsed_ok} parsed (Unlock NotHeld, Renew LockLost), {refused} refused \
         (InvalidLockId); collection unchanged",
        invalid.len()
    );
}
