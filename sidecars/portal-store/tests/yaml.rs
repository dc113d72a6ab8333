//! DB-less mode: the YAML file, hot reload, bad edits, the demo file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use edgeguard_portal_store::{
    load_yaml, start_with_options, AppAuth, ChangeKind, ErrorType, Origin, PortalView, Source,
    SourceType, StoreConfig, StoreOptions,
};
use edgeguard_verdict::portal::{check, key_digest, CheckOptions, Headers};

const GOOD: &str = "
accounts:
  - {id: acc1, plan: PLAN_FREE, monthly_usage: 10}
  - {id: acc2, plan: PLAN_UNLIMITED, monthly_user_limit: 40000000}
apps:
  - {id: a1, account: acc1}
  - {id: a2, account: acc2, secret_key: s3cret}
";

fn cfg(path: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(Source::Yaml {
        path: path.to_path_buf(),
    });
    // an hour: what reloads the file in these tests is the watcher
    c.app_refresh = Duration::from_secs(3600);
    c
}

/// Replaces the file the way editors and Kubernetes do: write elsewhere, rename over.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_hot_reloads_and_keeps_the_last_good_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apps.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let rec = Recorder::new();
    let store = start_with_options(cfg(&path), StoreOptions::default(), rec.clone())
        .await
        .unwrap();
    assert!(store.wait_loaded(Duration::from_secs(5)).await);
    let s = store.snapshot();
    assert_eq!(s.origin(), Origin::Yaml);
    assert_eq!(s.app_count(), 2);
    assert_eq!(s.usage("acc1"), Some(10));
    assert_eq!(
        s.app("a2").unwrap().auth,
        AppAuth::ApiKey {
            digest: key_digest("s3cret")
        }
    );
    let v0 = s.version();

    // an in-place edit
    std::fs::write(
        &path,
        GOOD.replace("s3cret", "n3w")
            .replace("monthly_usage: 10", "monthly_usage: 11"),
    )
    .unwrap();
    let took = wait_until(Duration::from_secs(2), || {
        store.snapshot().app("a2").map(|a| a.auth.clone())
            == Some(AppAuth::ApiKey {
                digest: key_digest("n3w"),
            })
    })
    .await
    .expect("edit not picked up");
    println!("in-place edit visible after {took:?}");
    let c = store.changes_since(v0).unwrap();
    assert_eq!(c.to_version, v0 + 1, "one edit, one version");
    assert_eq!(c.changes.len(), 2);
    assert!(c
        .changes
        .iter()
        .any(|c| matches!(&c.kind, ChangeKind::App { id, app: Some(_) } if &**id == "a2")));
    assert!(c.changes.iter().any(|c| c.kind
        == ChangeKind::Usage {
            account_id: "acc1".into(),
            relays: Some(11)
        }));

    // a bad edit: precise error, last good data kept
    let v1 = store.version();
    replace(&path, &format!("{GOOD}  - {{id: a1}}\n"));
    wait_until(Duration::from_secs(2), || {
        rec.count_errors(SourceType::PortalAppStore, ErrorType::FileError) == 1
    })
    .await
    .expect("bad file not reported");
    let err = store.status().last_error.unwrap();
    assert!(
        err.contains("apps.yaml")
            && err.contains(r#"apps[2]: duplicate app id "a1" (first defined at apps[0])"#),
        "{err}"
    );
    assert_eq!(store.version(), v1);
    assert_eq!(store.snapshot().app_count(), 2);
    // reported once, not at every event or poll
    store.refresh_now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.snapshot().app_count(), 2);

    // a renamed-over fix recovers; deleting an app is a change
    replace(&path, &GOOD.replace("  - {id: a1, account: acc1}\n", ""));
    wait_until(Duration::from_secs(2), || {
        store.snapshot().app("a1").is_none()
    })
    .await
    .expect("fix not picked up");
    let c = store.changes_since(v1).unwrap();
    // a1 deleted, a2's key back to s3cret, acc1's usage back to 10
    assert_eq!(c.changes.len(), 3, "{:?}", c.changes);
    assert!(c.changes.iter().any(|c| c.kind
        == ChangeKind::App {
            id: "a1".into(),
            app: None
        }));
    assert_eq!(store.status().consecutive_errors, 0);

    // an unknown account names the entry
    replace(&path, "apps:\n  - {id: x, account: ghost}\n");
    wait_until(Duration::from_secs(2), || {
        rec.count_errors(SourceType::PortalAppStore, ErrorType::FileError) == 2
    })
    .await
    .unwrap();
    let err = store.status().last_error.unwrap();
    assert!(
        err.contains(r#"apps[0] (id "x"): unknown account "ghost""#),
        "{err}"
    );
    assert_eq!(store.snapshot().app_count(), 1);

    // the file disappears: an error, data kept
    std::fs::remove_file(&path).unwrap();
    wait_until(Duration::from_secs(2), || {
        rec.count_errors(SourceType::PortalAppStore, ErrorType::FileError) == 3
    })
    .await
    .unwrap();
    assert!(store.snapshot().loaded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_at_start_serves_the_snapshot_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apps.yaml");
    let snap = dir.path().join("last-good.json");
    std::fs::write(&path, GOOD).unwrap();
    let mut c = cfg(&path);
    c.snapshot_file = Some(snap.clone());
    let first = start_with_options(c.clone(), StoreOptions::default(), Recorder::new())
        .await
        .unwrap();
    assert!(first.wait_loaded(Duration::from_secs(5)).await);
    wait_until(Duration::from_secs(5), || snap.exists())
        .await
        .unwrap();
    drop(first);
    std::fs::write(&path, "apps: [{id: broken").unwrap();
    let rec = Recorder::new();
    let store = start_with_options(c, StoreOptions::default(), rec.clone())
        .await
        .unwrap();
    assert!(store.wait_loaded(Duration::from_secs(5)).await);
    let s = store.snapshot();
    assert!(s.from_file());
    assert_eq!(s.app_count(), 2);
    assert_eq!(s.usage("acc1"), Some(10));
    assert_eq!(
        rec.count_errors(SourceType::PortalAppStore, ErrorType::FileError),
        1
    );
    let err = store.status().last_error.unwrap();
    assert!(
        err.contains("line 1"),
        "parse errors carry the position: {err}"
    );
    // fixed: the source takes over, same data, same version
    let v = s.version();
    std::fs::write(&path, GOOD).unwrap();
    wait_until(Duration::from_secs(2), || {
        store.snapshot().origin() == Origin::Yaml
    })
    .await
    .unwrap();
    assert_eq!(store.version(), v);
}

fn demo_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../envoy/demo/portal-apps.yaml")
}

struct H(Vec<(&'static str, &'static str)>);
impl Headers for H {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_file() {
    let d = load_yaml(&demo_file()).unwrap();
    assert_eq!(d.apps.len(), 5);
    let store = start_with_options(cfg(&demo_file()), StoreOptions::default(), Recorder::new())
        .await
        .unwrap();
    assert!(store.wait_loaded(Duration::from_secs(5)).await);
    let s = store.snapshot();
    let verdict = |path: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let h = H(headers);
        check(
            Some((path, &h)),
            &*s,
            CheckOptions {
                rate_limit_headers: true,
            },
        )
        .map(|a| a.headers)
        .map_err(|d| d.http_status())
    };
    assert!(verdict("/v1/demo_public", vec![]).is_ok());
    assert_eq!(verdict("/v1/demo_keyed", vec![]), Err(401));
    assert!(verdict(
        "/v1/demo_keyed",
        vec![("authorization", "Bearer demo-secret-key-0001")]
    )
    .is_ok());
    let ok = verdict("/v1/demo_unlimited", vec![]).unwrap();
    assert_eq!(
        ok[2],
        ("Rl-User-Limit-40".to_string(), "acct_unlim".to_string())
    );
    assert_eq!(verdict("/v1/demo_over_quota", vec![]), Err(429));
    assert_eq!(
        verdict("/v1/demo_locked", vec![("authorization", "anything")]),
        Err(401)
    );
    assert_eq!(s.app("demo_locked").unwrap().auth, AppAuth::MissingKey);
    let limited: Vec<String> = s
        .usage_summary()
        .into_iter()
        .filter(|a| a.limited)
        .map(|a| a.account_id)
        .collect();
    assert_eq!(limited, vec!["acct_over"]);
}
