//! edgeguard's PortalApp store: the data behind `edgeguard authz` (PEAS-compatible ext_authz)
//! and, through its versioned change log, the portal-auth wasm filter's local copy.
//!
//! # Sources
//!
//! - **Postgres** ([`Source::Postgres`]): a Grove Portal DB, read with PEAS's exact query
//!   ([`pg::SELECT_PORTAL_APPS`]) every `app_refresh` (PEAS `PORTAL_APP_STORE_REFRESH_INTERVAL`,
//!   default 30 s). On top, the store `LISTEN`s on `edgeguard_portal_changes`: the triggers of
//!   `migrations/0003_change_notify.sql` name the changed app or account, and within ~100 ms
//!   (debounce 75 ms) the store re-queries just those apps
//!   ([`pg::SELECT_PORTAL_APPS_BY_IDS`]; an id asked for but not returned is a deletion) and
//!   publishes them. The LISTEN connection reconnects by itself and each (re)connect triggers
//!   a full reload, since notifications may have been missed. Monthly usage comes from the
//!   `account_monthly_usage` table (`migrations/0002_account_monthly_usage.sql`) every
//!   `usage_refresh` (PEAS `RATE_LIMIT_STORE_REFRESH_INTERVAL`, default 5 m).
//! - **YAML** ([`Source::Yaml`]): DB-less mode. The file is watched (its directory, so
//!   rename-replace by editors and Kubernetes ConfigMaps is seen), read only once it has
//!   settled (size, modification time and inode unchanged for 250 ms and while it is read),
//!   reloaded 100 ms after a burst of changes and polled every `app_refresh` as a safety net.
//!   A bad file is rejected with a precise error (file, entry, line), logged and counted, and
//!   the last good data stays.
//!
//! # Row mapping (PEAS, with deliberate differences)
//!
//! NULL columns become `""`/`false`/`0`; a negative `monthly_user_limit` becomes 0 (one
//! warning per load with a count); an app's auth is [`AppAuth::ApiKey`] iff
//! `secret_key_required` and the key is non-empty, and only the key's SHA-256 digest is kept.
//! **Difference:** `secret_key_required` with a NULL/empty key is [`AppAuth::MissingKey`]
//! (every request denied, logged) where PEAS served the app as public. Values of unexpected
//! types never crash a load: an unreadable key or flag denies, other columns default. Rows
//! with `deleted = true` are not loaded. Every full load rebuilds everything, so deletions
//! and plan/limit changes take effect (PEAS's never-pruned account index is not copied).
//!
//! # Reading
//!
//! [`Store::snapshot`] returns the current [`Snapshot`] (an `Arc`; reads never wait for a
//! refresh, writers swap whole snapshots with `arc-swap`). `Snapshot` implements
//! [`PortalView`], the verdict crate's read trait. A snapshot is a base map plus a small
//! overlay of delta changes, so a NOTIFY on a store of 1M apps costs a copy of the overlay,
//! not of the store; full reloads fold the overlay away. Refreshes run on the store's own
//! low-priority thread (`edgeguard-store`), never on the caller's runtime, and replaced
//! snapshots are freed there too, so a reload does not stall the requests being answered.
//!
//! # Versions and changes
//!
//! Every snapshot has a `version`. It increases by one each time the data (apps, usage, or
//! loaded) changes, and stays the same otherwise; a full reload that changed nothing does not
//! bump it. The first version is the start time in microseconds since the Unix epoch, so a
//! restarted store's versions are above its predecessor's and never collide with them in
//! practice; version 0 is never used (consumers may use it for "nothing yet").
//! [`Store::changes_since`]`(v)` returns the changes from `v` to the current version (apps
//! upserted/deleted, usage set/cleared: [`ChangeKind`]), or `None` when `v` is older than the
//! bounded log (default 10,000 changes), is not one of this store's versions, or is the
//! not-loaded version: then send a full snapshot ([`Snapshot::apps`], [`Snapshot::usages`]).
//! Usage changes are versioned like app changes: a usage refresh that changed `n` accounts
//! publishes one version with `n` [`ChangeKind::Usage`] entries (`relays: None` = the account
//! has no usage row any more, e.g. after the month rolled over). A change set bigger than the
//! log (the first load, a bulk import) resets the log.
//!
//! # Faults
//!
//! [`start`] returns at once and never fails because the source is down. The snapshot is
//! *loaded* only once both the apps and this month's usage have been read
//! ([`Snapshot::apps_loaded`], [`Snapshot::usage_loaded`]): apps without usage would let
//! accounts over their quota through. Until then `loaded() == false` (the verdict answers
//! 503, `edgeguard authz` is not ready, the store feed answers 503) and the store retries
//! with backoff (1 s doubling to 30 s). With Postgres, a database without the usage table
//! (migration 0002) therefore never becomes ready. If `snapshot_file` is set and readable, it
//! stands in for what the source has not loaded: the whole file when no apps were read
//! ([`Origin::SnapshotFile`]), only its usage when the apps were read but the usage was not
//! (e.g. Postgres died between the two). The file is only written from a loaded snapshot (so
//! it always carries usage), atomically (key digests only, see [`mod@file`]), after each full
//! load or usage refresh that changed the data. When the source fails later, the last good
//! data stays; [`Store::status`] counts errors and [`Store::staleness`] grows until the
//! source is back.
//!
//! # Metrics
//!
//! The store does not depend on Prometheus: implement [`StoreObserver`] (PEAS's
//! `source_type`/`error_type` labels are [`SourceType`] and [`ErrorType`]).
//!
//! # The YAML format
//!
//! ```yaml
//! # accounts: plan and limits shared by their apps (PEAS's `accounts` table)
//! accounts:
//!   - id: acct_free            # required, unique
//!     plan: PLAN_FREE          # any string; PLAN_FREE / PLAN_UNLIMITED have limit rules
//!     monthly_user_limit: 0    # optional, default 0 (PLAN_UNLIMITED: the 429 threshold)
//!     monthly_usage: 1500000   # optional: relays this month (DB-less stand-in for the usage table)
//! # apps (PEAS's portal_applications + portal_application_settings); each says how it
//! # authenticates: a key, or public: true
//! apps:
//!   - id: app_public           # required, unique: the Portal-Application-ID
//!     account: acct_free       # optional; must name an account above (none: account "")
//!     public: true             # no key: public only when said so
//!   - id: app_keyed
//!     account: acct_free
//!     secret_key: demo-secret-key-0001   # or secret_key_sha256: <64 hex digits>
//!   - id: app_locked
//!     secret_key_required: true          # and no key: every request is denied (401)
//! ...                          # the end marker: a complete file ends with this line
//! ```
//!
//! **Half-written files.** A file edited in place can be read, or left, half written. None of
//! its cuts may open anything: the file must end with the YAML document end marker, a line
//! `...`, so every cut (a lost `secret_key` or `monthly_usage` line, a key cut mid-value) is
//! refused; an app with no key is public only with `public: true` (or PEAS's
//! `secret_key_required: false`), and an entry with neither is refused as incomplete; a file
//! still changing is not read before it settles. Edit by **atomic replacement**: write the new
//! file next to the old one and rename it over (`mv new.yaml apps.yaml`; editors that save
//! by rename and Kubernetes ConfigMaps do this).
//!
//! Unknown fields, duplicate ids, an unknown account, an empty id, a negative number, both
//! `secret_key` and `secret_key_sha256`, `public: true` with a key, an app with neither a key
//! nor `public: true` / `secret_key_required`, a missing end marker or content after it, an
//! empty file, a file over 64 MiB or nested more than 64 levels deep (checked before parsing)
//! are errors naming the entry (`apps[3] (id "x"): unknown account "y"`).
//! `secret_key_required: false` with a key makes the app public (as PEAS); `public: false` or
//! `secret_key_required: true` without a key locks it. An example is
//! `envoy/demo/portal-apps.yaml`.
//!
//! # Postgres migrations
//!
//! [`migrate`] runs `migrations/*.sql` (idempotent) in one transaction: 0001 PEAS's Grove
//! tables (only with `include_grove_schema`, for tests and demos), 0002 the usage table,
//! 0003 the NOTIFY triggers. Without 0003 the store still works, with interval refresh only.
//!
//! [`AppAuth::ApiKey`]: edgeguard_verdict::portal::AppAuth::ApiKey
//! [`AppAuth::MissingKey`]: edgeguard_verdict::portal::AppAuth::MissingKey
//! [`PortalView`]: edgeguard_verdict::portal::PortalView

mod background;
pub mod changes;
mod config;
pub mod file;
pub mod observer;
pub mod pg;
pub mod snapshot;
mod source_pg;
mod source_yaml;
mod store;
pub mod yaml;

pub use changes::{Change, ChangeKind, ChangeSet};
pub use config::{
    redact_url, Source, StoreConfig, StoreError, StoreOptions, DEFAULT_APP_REFRESH,
    DEFAULT_USAGE_REFRESH,
};
pub use file::SnapshotFileError;
pub use observer::{
    ErrorType, NoopObserver, NotifyApplied, RefreshKind, RefreshOk, SourceType, StoreObserver,
};
pub use pg::{migrate, migrate_with};
pub use snapshot::{AccountUsage, AppMap, Origin, Snapshot, UsageMap};
pub use store::{start, start_with_options, Store, StoreStatus};
pub use yaml::{load_yaml, parse_yaml, YamlData, YamlError};

/// Re-exported so callers need not depend on the verdict crate for the app type.
pub use edgeguard_verdict::portal::{AppAuth, PortalApp, PortalView};
