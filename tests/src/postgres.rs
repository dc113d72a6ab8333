//! A throwaway Postgres per test: `initdb` into a temporary folder, a server on a free port
//! of 127.0.0.1 (unix socket inside the folder too), trust authentication, fsync off, and a
//! database `edgeguard`. Dropping it stops the server and removes the folder.
//!
//! Binaries come from `EDGEGUARD_PG_BIN` or the highest `/usr/lib/postgresql/<N>/bin`
//! (`make postgres` installs Debian's `postgresql`). initdb refuses to run as root, so as
//! root the folder is given to the `postgres` user and the server tools run through
//! `runuser -u postgres --`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::process::{free_port, wait_for_port};

/// The Postgres `bin` folder, if Postgres is installed.
pub fn bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("EDGEGUARD_PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").exists().then_some(dir);
    }
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let Some(major) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.split('.').next()?.parse::<u32>().ok())
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if bin.join("initdb").exists() && best.as_ref().is_none_or(|(m, _)| major > *m) {
            best = Some((major, bin));
        }
    }
    best.map(|(_, b)| b)
}

/// Whether a throwaway Postgres can be started here.
pub fn available() -> bool {
    bin_dir().is_some()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A running (or stopped) throwaway Postgres.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres_user: bool,
    running: bool,
}

/// The database every instance has.
pub const DATABASE: &str = "edgeguard";

impl Postgres {
    /// initdb + start on a free port + `CREATE DATABASE edgeguard`. Panics with the server
    /// log when something fails.
    pub fn start() -> Postgres {
        Postgres::start_on(free_port())
    }

    /// The same on a given port (e.g. one a store was already pointed at).
    pub fn start_on(port: u16) -> Postgres {
        let bin = bin_dir()
            .expect("Postgres is not installed (run `make postgres`, or set EDGEGUARD_PG_BIN)");
        let dir = tempfile::Builder::new()
            .prefix("edgeguard-pg-")
            .tempdir()
            .expect("tempdir");
        let as_postgres_user = is_root();
        let mut pg = Postgres {
            dir,
            bin,
            port,
            as_postgres_user,
            running: false,
        };
        if as_postgres_user {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "cannot chown {} to postgres", pg.dir.path().display());
        }
        let data = pg.data_dir();
        let out = pg
            .tool("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb failed: {}", text(&out));
        let conf = format!(
            "\n# edgeguard test instance\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
             unix_socket_directories = '{sock}'\nfsync = off\nsynchronous_commit = off\n\
             full_page_writes = off\nshared_buffers = 16MB\nmax_connections = 40\n\
             max_wal_size = 256MB\nlog_min_messages = warning\n",
            sock = pg.dir.path().display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("postgresql.conf");
        f.write_all(conf.as_bytes()).expect("postgresql.conf");
        drop(f);
        pg.start_again();
        pg.psql_db("postgres", &format!("CREATE DATABASE {DATABASE}"));
        pg.psql_db("postgres", "ALTER USER postgres PASSWORD 'postgres'");
        pg
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    fn tool(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        let mut cmd = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        cmd
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder holding the data directory, the socket and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `postgres://postgres@127.0.0.1:PORT/edgeguard` (trust auth, no password). Note PEAS's
    /// connection-string regex requires `user:password@`; see [`Postgres::peas_url`].
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// `postgres://postgres:postgres@127.0.0.1:PORT/edgeguard`: the form PEAS accepts (the
    /// password is set, though trust auth does not ask for it).
    pub fn peas_url(&self) -> String {
        format!(
            "postgres://postgres:postgres@127.0.0.1:{}/{DATABASE}",
            self.port
        )
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// (Re)starts the server on the same data directory and port.
    pub fn start_again(&mut self) {
        let out = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            text(&out),
            self.log()
        );
        assert!(
            wait_for_port(self.port, Duration::from_secs(20)),
            "Postgres does not accept connections on {}: {}",
            self.port,
            self.log()
        );
        self.running = true;
    }

    /// Stops the server (fast shutdown: open connections are terminated).
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let _ = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode, "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
    }

    /// Runs SQL with `psql` in database `edgeguard`; returns the unaligned, tuples-only
    /// output (`|`-separated columns, one row a line). Panics on SQL errors.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db(DATABASE, sql)
    }

    /// The same, returning the error instead of panicking.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.try_psql_db(DATABASE, sql)
    }

    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        self.try_psql_db(db, sql)
            .unwrap_or_else(|e| panic!("psql failed: {e}\nSQL: {sql}"))
    }

    pub fn try_psql_db(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut child = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db, "-f", "-"])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(sql.as_bytes())
                .map_err(|e| format!("psql stdin: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
        } else {
            Err(text(&out))
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.pg_ctl_stop("immediate");
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
