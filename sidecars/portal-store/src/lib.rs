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
//!   `account_monthly_usage` table (`migrations/0002_account_monthly_usage.sql`, and
//!   `0004_metering.sql`'s `metered_relays`): see [Monthly usage](#monthly-usage).
//! - **YAML** ([`Source::Yaml`]): DB-less mode. The file is watched (its directory, so
//!   rename-replace by editors and Kubernetes ConfigMaps is seen), read only once it has
//!   settled (size, modification time and inode unchanged for 250 ms and while it is read),
//!   reloaded 100 ms after a burst of changes and polled every `app_refresh` as a safety net.
//!   A bad file is rejected with a precise error (file, entry, line), logged and counted, and
//!   the last good data stays. Usage is the file's `monthly_usage` plus the relays added
//!   through [`Store::add_metered`] (see [Monthly usage](#monthly-usage)).
//!
//! # Monthly usage
//!
//! Usage is per UTC calendar month ([`Month`]). The store's clock is [`Store::now_unix`]:
//! the system clock plus [`StoreOptions::usage_clock_offset_secs`] (default 0; a test knob
//! that lets a test start a store seconds before a month ends). [`Store::usage_month`] (and
//! [`Snapshot::usage_month`]) is the month of the usage currently loaded.
//!
//! - **Postgres, full reload** every `usage_refresh` (PEAS `RATE_LIMIT_STORE_REFRESH_INTERVAL`,
//!   default 5 m): [`pg::SELECT_USAGE`] with the store clock's month as a parameter (not the
//!   database's `now()`), enforcing `relays + metered_relays` — the operator's count plus
//!   edgeguard's metered count (migration 0004). On a database without 0004 (SQLSTATE 42703)
//!   it falls back to `relays` alone and warns that metered relays are not counted until
//!   `edgeguard migrate` applies 0004; every full reload tries the column again. A full
//!   reload replaces the whole month: totals may go down, accounts without a row lose their
//!   usage (`relays: None`).
//! - **Postgres, incremental poll** ([`StoreOptions::usage_poll`], default `None` = off; ~1 s
//!   with metering): between full reloads, the store reads only the rows of the loaded month
//!   whose `updated_at` is at least the previous read's database time (`SELECT now()` on the
//!   same connection just before it; the first poll after a full reload uses that reload's)
//!   minus 5 s — `updated_at = now()` is its transaction's *start*, so the overlap catches
//!   writes that committed late — and publishes those accounts' totals. Polls only **raise**
//!   totals (a lower one waits for the next full reload), so a poll that read a row just
//!   before a metering flush committed cannot undo [`Store::publish_usage_totals`]. Polls,
//!   full reloads, the rollover and NOTIFY deltas run in one serialized loop, never at once.
//!   Polls do not rewrite the snapshot file (full usage reloads do).
//! - **Month rollover**: at least once a second (every poll, or a 1 s tick) the store
//!   compares the month of its clock with the loaded usage's; when it changed it reloads
//!   the usage of the new month at once, without a restart: accounts without a row in the
//!   new month get `relays: None` (they are open again). If that reload fails, the old
//!   month's usage stays (fail closed) and the reload is retried with the usage backoff.
//!   In YAML mode the metered counts are dropped and the file's `monthly_usage` (which has
//!   no month) is republished.
//! - **Metering** (`edgeguard authz` counting the relays it allows): with Postgres, its
//!   flusher adds batched counts to `metered_relays` and hands the new totals (`RETURNING
//!   relays + metered_relays`) to [`Store::publish_usage_totals`]: a partial, versioned
//!   update of those accounts, monotonic within the month, ignored for any month other than
//!   [`Store::usage_month`] or before usage is loaded. Other replicas see the totals through
//!   their polls. Without a database (YAML), [`Store::add_metered`] keeps the counts in
//!   memory per account for the month (**lost on restart**: a restarted store starts again
//!   from the file's `monthly_usage`) and enforces file usage + metered, also across file
//!   reloads; with Postgres it drops the deltas and returns nothing (the flusher writes them
//!   to the database instead). Both may be called from any thread; they serialize with the
//!   store's own publishes.
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
//! Usage changes are versioned like app changes: a usage refresh, poll, or
//! [`Store::publish_usage_totals`] / [`Store::add_metered`] call that changed `n` accounts
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
//!   - id: app_devices
//!     account: acct_free
//!     client_auth: certificate  # key (default) | certificate | either: devices of the
//!                               # account (client certificates edgeguard enroll issued);
//!                               # `certificate` needs no key line
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
//! 0003 the NOTIFY triggers, 0004 metering (`metered_relays`, the per-app usage table, the
//! applied-report ids, the `(month, updated_at)` index the poll uses), 0005 the device
//! registry of `edgeguard enroll` (devices, enrollment tokens, revoked certificates, and a
//! NOTIFY trigger on the same channel, whose payloads the store ignores: it does not hold
//! devices yet). Without 0003 the
//! store still works, with interval refresh only; without 0004 it enforces `relays` alone.
//!
//! [`Month`]: edgeguard_verdict::quota::Month
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
mod source_devices;
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
pub use snapshot::{AccountUsage, AppMap, DeviceMap, Origin, Snapshot, UsageMap};
pub use store::{start, start_with_options, Store, StoreStatus};
pub use yaml::{load_yaml, parse_yaml, YamlData, YamlError};

/// Re-exported so callers need not depend on the verdict crate for the app type.
pub use edgeguard_verdict::portal::{AppAuth, PortalApp, PortalView};
