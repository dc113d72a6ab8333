//! DB-less mode: the YAML file, hot reload, bad edits, the demo file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use edgeguard_portal_store::{
    load_yaml, start_with_options, AppAuth, ChangeKind, ErrorType, Origin, PortalView, Source,
    SourceType, StoreConfig, StoreOptions,
};
use edgeguard_verdict::portal::{check, key_digest, CheckOptions, Headers};

/// The body of a file; [`doc`] adds the end marker.
const GOOD: &str = "
accounts:
  - {id: acc1, plan: PLAN_FREE, monthly_usage: 10}
  - {id: acc2, plan: PLAN_UNLIMITED, monthly_user_limit: 40000000}
apps:
  - {id: a1, account: acc1, public: true}
  - {id: a2, account: acc2, secret_key: s3cret}
";

/// A complete file: `body` and the end marker line.
fn doc(body: &str) -> String {
    format!("{body}...\n")
}

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
    std::fs::write(&path, doc(GOOD)).unwrap();
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
        doc(&GOOD
            .replace("s3cret", "n3w")
            .replace("monthly_usage: 10", "monthly_usage: 11")),
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
    replace(
        &path,
        &doc(&format!("{GOOD}  - {{id: a1, public: true}}\n")),
    );
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
    replace(
        &path,
        &doc(&GOOD.replace("  - {id: a1, account: acc1, public: true}\n", "")),
    );
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
    replace(
        &path,
        "apps:\n  - {id: x, account: ghost, public: true}\n...\n",
    );
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
    std::fs::write(&path, doc(GOOD)).unwrap();
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
    std::fs::write(&path, "apps: [{id: broken\n...\n").unwrap();
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
    std::fs::write(&path, doc(GOOD)).unwrap();
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
    assert_eq!(d.apps.len(), 7);
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
            &|| None,
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
    // the device app: no certificate, no entry, whatever key
    assert_eq!(verdict("/v1/demo_device", vec![]), Err(401));
    assert_eq!(
        verdict(
            "/v1/demo_device",
            vec![("authorization", "demo-secret-key-0001")]
        ),
        Err(401)
    );
    let limited: Vec<String> = s
        .usage_summary()
        .into_iter()
        .filter(|a| a.limited)
        .map(|a| a.account_id)
        .collect();
    assert_eq!(limited, vec!["acct_over"]);
}

/// Several keyed apps (one hashed, one flow style, one quoted), public apps, over-quota
/// accounts on both plans, a locked app; keys on their own lines.
const FULL: &str = r#"# portal apps
accounts:
  - id: acc_free
    plan: PLAN_FREE
    monthly_usage: 1500000
  - id: acc_unl
    plan: PLAN_UNLIMITED
    monthly_user_limit: 40000000
    monthly_usage: 10
  - id: acc_lim
    plan: PLAN_UNLIMITED
    monthly_user_limit: 100
    monthly_usage: 500
apps:
  - id: keyed_1
    account: acc_unl
    secret_key: k3y-one-0123456789abcdef
  - id: public_1
    account: acc_unl
    public: true
  - id: keyed_2
    secret_key: second-key-abcdefghijkl
  - id: over_free
    account: acc_free
    public: true
  - id: over_lim
    account: acc_lim
    secret_key: limited-key-zyxwvu
  - id: hashed
    account: acc_unl
    secret_key_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
  - id: locked
    account: acc_free
    secret_key_required: true
  - {id: keyed_flow, account: acc_unl, secret_key: flow-key-0123456789}
  - id: keyed_quoted
    secret_key: "quoted key: with # chars"
...
"#;

/// Plaintext keys of FULL (`test` is the preimage of the sha256 above).
const KEYS: [&str; 6] = [
    "k3y-one-0123456789abcdef",
    "second-key-abcdefghijkl",
    "limited-key-zyxwvu",
    "test",
    "flow-key-0123456789",
    "quoted key: with # chars",
];

const APPS: [&str; 9] = [
    "keyed_1",
    "public_1",
    "keyed_2",
    "over_free",
    "over_lim",
    "hashed",
    "locked",
    "keyed_flow",
    "keyed_quoted",
];

/// Every request the test tries: each app without a key, with each key, with every prefix of
/// each key (what a key cut mid-value would accept), and with a wrong one.
fn requests() -> Vec<(&'static str, Option<String>)> {
    let mut keys: Vec<Option<String>> = vec![None, Some("wrong".into())];
    for k in KEYS {
        for end in 1..=k.len() {
            keys.push(Some(k[..end].to_string()));
        }
    }
    APPS.iter()
        .flat_map(|a| keys.iter().map(move |k| (*a, k.clone())))
        .collect()
}

/// Which of `requests` the verdict allows on `view`.
fn allowed(view: &dyn PortalView, requests: &[(&str, Option<String>)]) -> Vec<bool> {
    struct Auth<'a>(Option<&'a str>);
    impl Headers for Auth<'_> {
        fn get(&self, name: &str) -> Option<&str> {
            name.eq_ignore_ascii_case("authorization")
                .then_some(self.0)
                .flatten()
        }
    }
    requests
        .iter()
        .map(|(app, key)| {
            let path = format!("/v1/{app}");
            check(
                Some((path.as_str(), &Auth(key.as_deref()))),
                view,
                CheckOptions::default(),
                &|| None,
            )
            .is_ok()
        })
        .collect()
}

/// Where the test cuts FULL: at every line boundary, and inside every key's value.
fn cut_points() -> Vec<usize> {
    let mut cuts: Vec<usize> = FULL
        .char_indices()
        .filter(|(_, c)| *c == '\n')
        .map(|(i, _)| i + 1)
        .collect();
    for line_start in std::iter::once(0).chain(cuts.clone()) {
        let line = &FULL[line_start..];
        let line = &line[..line.find('\n').unwrap_or(line.len())];
        for key in KEYS
            .iter()
            .chain(["9f86d081884c7d659a2feaa0c55ad015"].iter())
        {
            if let Some(at) = line.find(key) {
                let start = line_start + at;
                cuts.extend(start + 1..start + key.len());
            }
        }
    }
    cuts.retain(|c| *c < FULL.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// Writes `text` over the file in place (truncate, then write: what `cat > file` does) and
/// waits until the store has looked at it (refused it or loaded it).
async fn publish_in_place(
    path: &Path,
    text: &str,
    store: &edgeguard_portal_store::Store,
    rec: &Recorder,
) {
    let errors = rec.count_errors(SourceType::PortalAppStore, ErrorType::FileError);
    let success = store.status().last_success;
    std::fs::write(path, text).unwrap();
    wait_until(Duration::from_secs(10), || {
        rec.count_errors(SourceType::PortalAppStore, ErrorType::FileError) > errors
            || store.status().last_success != success
    })
    .await
    .unwrap_or_else(|| panic!("the store never looked at the cut {:?}", text.len()));
}

/// A file written in place is cut at every line boundary and inside every key; each cut is
/// published (as a slow `cat >` would leave it, or a writer that died). No app is ever more
/// open than in the complete file: a keyed app is never public and never takes a cut key, an
/// over-quota account is never let through. Every cut is refused, logged and counted; the
/// last good data stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cut_of_the_file_opens_anything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apps.yaml");
    let requests = requests();
    let full = load_yaml_text(FULL);
    let full_allowed = allowed(&full, &requests);
    assert!(full_allowed.iter().any(|a| *a) && !full_allowed.iter().all(|a| *a));
    let options = StoreOptions {
        file_debounce: Duration::from_millis(10),
        file_settle: Duration::from_millis(30),
        ..StoreOptions::default()
    };
    let cuts = cut_points();
    assert!(cuts.len() > 100, "{}", cuts.len());

    // a file written for the first time: nothing may load before it is complete
    std::fs::write(&path, "").unwrap();
    let rec = Recorder::new();
    let store = start_with_options(cfg(&path), options.clone(), rec.clone())
        .await
        .unwrap();
    for &cut in &cuts {
        publish_in_place(&path, &FULL[..cut], &store, &rec).await;
        let now = allowed(&*store.snapshot(), &requests);
        for ((request, a), f) in requests.iter().zip(&now).zip(&full_allowed) {
            assert!(
                !a || *f,
                "cut at byte {cut} allows {request:?}, the complete file does not:\n{}",
                &FULL[..cut]
            );
        }
        assert!(!store.snapshot().loaded(), "cut at {cut} loaded");
    }
    let err = store.status().last_error.unwrap();
    assert!(
        err.contains("does not end with the end marker line `...`"),
        "{err}"
    );
    publish_in_place(&path, FULL, &store, &rec).await;
    assert!(store.snapshot().loaded());
    assert_eq!(allowed(&*store.snapshot(), &requests), full_allowed);

    // editing a loaded file in place: every cut is refused, the complete data stays
    let v = store.version();
    let errors = rec.count_errors(SourceType::PortalAppStore, ErrorType::FileError);
    for &cut in cuts.iter().rev() {
        publish_in_place(&path, &FULL[..cut], &store, &rec).await;
        assert_eq!(store.version(), v, "cut at {cut} was published");
    }
    assert_eq!(
        rec.count_errors(SourceType::PortalAppStore, ErrorType::FileError),
        errors + cuts.len()
    );
    assert_eq!(allowed(&*store.snapshot(), &requests), full_allowed);
    // the complete file without its final line break is complete too
    publish_in_place(&path, FULL.trim_end(), &store, &rec).await;
    assert_eq!(store.status().consecutive_errors, 0);
    assert_eq!(store.version(), v);
}

/// The complete file's data as a snapshot.
fn load_yaml_text(text: &str) -> edgeguard_portal_store::Snapshot {
    let d = edgeguard_portal_store::parse_yaml(text, Path::new("full.yaml")).unwrap();
    edgeguard_portal_store::Snapshot::from_parts(1, d.apps, d.usage)
}

/// A file written slowly in place (a byte every few milliseconds, far less than the settle
/// interval apart) is not read until it has settled: no refusal is counted while it is
/// being written, and then it loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_being_written_is_read_once_it_settles() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apps.yaml");
    std::fs::write(&path, doc(GOOD)).unwrap();
    let rec = Recorder::new();
    let options = StoreOptions {
        file_debounce: Duration::from_millis(10),
        file_settle: Duration::from_secs(1),
        ..StoreOptions::default()
    };
    let store = start_with_options(cfg(&path), options, rec.clone())
        .await
        .unwrap();
    assert!(store.wait_loaded(Duration::from_secs(5)).await);
    let v = store.version();
    let writer = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::create(&path).unwrap();
            for chunk in FULL.as_bytes().chunks(16) {
                f.write_all(chunk).unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    writer.await.unwrap();
    assert_eq!(
        rec.count_errors(SourceType::PortalAppStore, ErrorType::FileError),
        0,
        "a file still being written was read: {:?}",
        store.status().last_error
    );
    assert_eq!(store.version(), v, "nothing published while writing");
    wait_until(Duration::from_secs(10), || {
        store.snapshot().app("over_lim").is_some()
    })
    .await
    .expect("the settled file was not loaded");
    assert_eq!(
        rec.count_errors(SourceType::PortalAppStore, ErrorType::FileError),
        0
    );
}

/// Deeply nested and oversized files are refused before parsing, with a clear error, and the
/// last good data keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_files_are_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apps.yaml");
    std::fs::write(&path, doc(GOOD)).unwrap();
    let rec = Recorder::new();
    let store = start_with_options(cfg(&path), StoreOptions::default(), rec.clone())
        .await
        .unwrap();
    assert!(store.wait_loaded(Duration::from_secs(5)).await);
    let v = store.version();
    let refused = |n| {
        let rec = rec.clone();
        move || rec.count_errors(SourceType::PortalAppStore, ErrorType::FileError) == n
    };
    for (n, text) in [
        doc(&format!("apps: {}\n", "[".repeat(100_000))),
        doc(&format!("apps: {}\n", "{a: ".repeat(100_000))),
        doc(&format!(
            "apps:\n{}",
            (0..2_000)
                .map(|i| format!("{}- a:\n", " ".repeat(i)))
                .collect::<String>()
        )),
    ]
    .iter()
    .enumerate()
    {
        replace(&path, text);
        wait_until(Duration::from_secs(5), refused(n + 1))
            .await
            .expect("not refused");
        let err = store.status().last_error.unwrap();
        assert!(
            err.starts_with("portal apps file ")
                && err.contains("nested more than 64 levels deep at line"),
            "{err}"
        );
        assert_eq!(store.version(), v);
        assert_eq!(
            store.snapshot().app("a2").map(|a| a.auth.clone()),
            Some(AppAuth::ApiKey {
                digest: key_digest("s3cret")
            })
        );
    }
    // over 64 MiB (a sparse file): refused from its size, without reading it
    let big = dir.path().join("big.tmp");
    std::fs::File::create(&big)
        .unwrap()
        .set_len((64 << 20) + 1)
        .unwrap();
    std::fs::rename(&big, &path).unwrap();
    wait_until(Duration::from_secs(5), refused(4))
        .await
        .expect("not refused");
    let err = store.status().last_error.unwrap();
    assert!(
        err.contains("the file is 67108865 bytes, more than the limit of 67108864 bytes"),
        "{err}"
    );
    assert!(store.snapshot().app("a1").is_some());
    // and a good file afterwards is loaded
    replace(&path, &doc(&GOOD.replace("s3cret", "fixed")));
    wait_until(Duration::from_secs(5), || {
        store.snapshot().app("a2").map(|a| a.auth.clone())
            == Some(AppAuth::ApiKey {
                digest: key_digest("fixed"),
            })
    })
    .await
    .expect("good file not loaded");
}

fn deltas(list: &[(&str, u64)]) -> Vec<(std::sync::Arc<str>, u64)> {
    list.iter()
        .map(|(a, n)| (std::sync::Arc::from(*a), *n))
        .collect()
}

fn unix_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metered_relays_add_to_the_file_usage_and_survive_reloads() {
    use edgeguard_verdict::quota::Month;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apps.yaml");
    std::fs::write(&path, doc(GOOD)).unwrap();
    let store = start_with_options(cfg(&path), StoreOptions::default(), Recorder::new())
        .await
        .unwrap();
    assert!(store.wait_loaded(Duration::from_secs(5)).await);
    let month = store.usage_month();
    assert_eq!(month, Month::of(unix_now()));
    assert_eq!(store.snapshot().usage_month(), Some(month));
    let v = store.version();

    // acc1 has monthly_usage 10 in the file; acc2 none; repeated accounts add up
    let totals = store.add_metered(
        month,
        deltas(&[("acc1", 5), ("acc2", 3), ("acc1", 2), ("nobody", 0)]),
    );
    assert_eq!(totals, deltas(&[("acc1", 17), ("acc2", 3)]));
    let s = store.snapshot();
    assert_eq!((s.usage("acc1"), s.usage("acc2")), (Some(17), Some(3)));
    assert_eq!(store.version(), v + 1, "one call, one version");
    let c = store.changes_since(v).unwrap();
    assert_eq!(c.changes.len(), 2);
    assert!(c.changes.iter().any(|c| c.kind
        == ChangeKind::Usage {
            account_id: "acc1".into(),
            relays: Some(17)
        }));
    // another month: dropped
    assert!(store
        .add_metered(month.next(), deltas(&[("acc1", 1)]))
        .is_empty());
    assert_eq!(store.snapshot().usage("acc1"), Some(17));

    // the file changes (acc1's monthly_usage 10 → 11, a2's key): the metered relays stay
    let v = store.version();
    replace(
        &path,
        &doc(&GOOD
            .replace("s3cret", "n3w")
            .replace("monthly_usage: 10", "monthly_usage: 11")),
    );
    wait_until(Duration::from_secs(3), || {
        store.snapshot().usage("acc1") == Some(18)
    })
    .await
    .expect("file reload keeps the metered relays");
    assert_eq!(store.snapshot().usage("acc2"), Some(3));
    assert_eq!(store.version(), v + 1);
    // and keep adding on top of the new file usage
    assert_eq!(
        store.add_metered(month, deltas(&[("acc1", 1_000_000)])),
        deltas(&[("acc1", 1_000_018)])
    );
    let a1 = store.snapshot();
    assert_eq!(a1.usage("acc1"), Some(1_000_018));
    // acc1 is PLAN_FREE: over 1,000,000 → 429
    struct NoHeaders;
    impl edgeguard_verdict::portal::Headers for NoHeaders {
        fn get(&self, _: &str) -> Option<&str> {
            None
        }
    }
    let d = check(
        Some(("/v1/a1", &NoHeaders)),
        &*a1,
        CheckOptions::default(),
        &|| None,
    )
    .unwrap_err();
    assert_eq!(d.http_status(), 429);

    // from several threads at once, concurrently with file reloads: nothing is lost
    let mut threads = Vec::new();
    for _ in 0..4 {
        let s = store.clone();
        threads.push(std::thread::spawn(move || {
            for _ in 0..250 {
                s.add_metered(month, deltas(&[("acc2", 1)]));
            }
        }));
    }
    replace(&path, &doc(GOOD));
    store.refresh_now();
    tokio::task::spawn_blocking(move || {
        for t in threads {
            t.join().unwrap();
        }
    })
    .await
    .unwrap();
    wait_until(Duration::from_secs(3), || {
        store.snapshot().usage("acc1") == Some(1_000_017)
    })
    .await
    .expect("reloaded: file usage 10 + metered 1,000,007");
    assert_eq!(store.snapshot().usage("acc2"), Some(1_003));
    store.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metered_relays_reset_when_the_month_rolls_over() {
    use edgeguard_verdict::quota::Month;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apps.yaml");
    std::fs::write(&path, doc(GOOD)).unwrap();
    // the store's clock reaches the end of the month 3 s from now
    let now = unix_now();
    let month = Month::of(now);
    let options = StoreOptions {
        usage_clock_offset_secs: month.next().start() - 3 - now,
        ..StoreOptions::default()
    };
    let store = start_with_options(cfg(&path), options, Recorder::new())
        .await
        .unwrap();
    assert!(store.wait_loaded(Duration::from_secs(2)).await);
    assert_eq!(store.usage_month(), month);
    store.add_metered(month, deltas(&[("acc1", 2_000_000), ("acc2", 5)]));
    let v = store.version();
    assert_eq!(store.snapshot().usage("acc1"), Some(2_000_010));
    wait_until(Duration::from_secs(6), || {
        store.usage_month() == month.next()
    })
    .await
    .expect("rolled over");
    let s = store.snapshot();
    assert_eq!(s.usage("acc1"), Some(10), "the file's usage alone");
    assert_eq!(s.usage("acc2"), None);
    let c = store.changes_since(v).unwrap();
    assert_eq!(c.changes.len(), 2, "{:?}", c.changes);
    // the old month's deltas are dropped, the new month's count from zero
    assert!(store.add_metered(month, deltas(&[("acc1", 1)])).is_empty());
    assert_eq!(
        store.add_metered(month.next(), deltas(&[("acc1", 1)])),
        deltas(&[("acc1", 11)])
    );
    store.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_does_not_wake_itself_by_reading_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apps.yaml");
    std::fs::write(&path, doc(GOOD)).unwrap();
    let store = start_with_options(cfg(&path), StoreOptions::default(), Recorder::new())
        .await
        .unwrap();
    assert!(store.wait_loaded(Duration::from_secs(5)).await);
    // every read (even of an unchanged file) confirms the data: last_success moves on.
    // Opening the file to read it must not count as a change to read it again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let first = store.last_success();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        store.last_success(),
        first,
        "the file was read again unchanged"
    );
    // a real change still is
    replace(
        &path,
        &doc(&GOOD.replace("monthly_usage: 10", "monthly_usage: 12")),
    );
    wait_until(Duration::from_secs(3), || {
        store.snapshot().usage("acc1") == Some(12)
    })
    .await
    .expect("change picked up");
    store.shutdown();
}
