//! Monthly quotas as a client sees them: the UTC calendar month (when a quota resets) and the
//! headers that tell a client where it stands — `Retry-After` (RFC 9110) on 429, and the IETF
//! `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers, revision 08
//! and later: structured-field lists of named policies with `q` quota and `w` window on the
//! policy, `r` remaining and `t` seconds until reset on the current state).
//!
//! Pure: the caller passes the time (Unix seconds).

use crate::portal::PortalApp;

/// The policy name used in both fields.
pub const POLICY_NAME: &str = "monthly";
/// `Retry-After`.
pub const HEADER_RETRY_AFTER: &str = "retry-after";
/// `RateLimit-Policy`.
pub const HEADER_POLICY: &str = "ratelimit-policy";
/// `RateLimit`.
pub const HEADER_RATELIMIT: &str = "ratelimit";

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month 1..=12) of a day count since 1970-01-01 (Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, u32::try_from(month).unwrap_or(1))
}

/// A UTC calendar month.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i64,
    /// 1..=12
    pub month: u32,
}

impl Month {
    /// The month containing `unix_secs`.
    pub fn of(unix_secs: i64) -> Month {
        let (year, month) = civil_from_days(unix_secs.div_euclid(86_400));
        Month { year, month }
    }

    /// The month after this one.
    pub fn next(self) -> Month {
        if self.month >= 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// Unix seconds of the first instant of the month.
    pub fn start(self) -> i64 {
        days_from_civil(self.year, self.month, 1) * 86_400
    }

    /// Length in seconds.
    pub fn seconds(self) -> i64 {
        self.next().start() - self.start()
    }

    /// `YYYY-MM-01`, the `month` column of the usage tables.
    pub fn first_day(self) -> String {
        format!("{:04}-{:02}-01", self.year, self.month)
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// Seconds from `unix_secs` until the next UTC month starts (at least 1).
pub fn seconds_until_reset(unix_secs: i64) -> u64 {
    let m = Month::of(unix_secs);
    u64::try_from(m.next().start() - unix_secs)
        .unwrap_or(1)
        .max(1)
}

/// Where an account stands against its monthly quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaState {
    /// The monthly limit (relays).
    pub limit: u64,
    /// Relays counted this month.
    pub used: u64,
    /// Seconds until the quota resets (the next UTC month).
    pub reset_secs: u64,
    /// Length of the current month in seconds (the policy window).
    pub window_secs: u64,
}

impl QuotaState {
    /// The quota of `app`'s account with `used` relays at `unix_secs`; `None` when the app's
    /// plan has no monthly limit.
    pub fn of(app: &PortalApp, used: Option<u64>, unix_secs: i64) -> Option<QuotaState> {
        let limit = app.monthly_limit()?;
        let month = Month::of(unix_secs);
        Some(QuotaState {
            limit,
            used: used.unwrap_or(0),
            reset_secs: seconds_until_reset(unix_secs),
            window_secs: u64::try_from(month.seconds()).unwrap_or(0),
        })
    }

    /// Relays left before the account is limited. An account is limited once its count
    /// *exceeds* the limit (PEAS's strict `>`), so a count equal to the limit still admits one
    /// more; `remaining` reports the conservative `limit - used`.
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    /// `RateLimit-Policy` and `RateLimit` (and `Retry-After` when `retry_after`), lower-case
    /// names, in that order.
    pub fn headers(&self, retry_after: bool) -> Vec<(&'static str, String)> {
        let remaining = if retry_after { 0 } else { self.remaining() };
        let mut h = vec![
            (
                HEADER_POLICY,
                format!("\"{POLICY_NAME}\";q={};w={}", self.limit, self.window_secs),
            ),
            (
                HEADER_RATELIMIT,
                format!("\"{POLICY_NAME}\";r={remaining};t={}", self.reset_secs),
            ),
        ];
        if retry_after {
            h.push((HEADER_RETRY_AFTER, self.reset_secs.to_string()));
        }
        h
    }
}

/// Which answers carry the quota headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaHeaders {
    /// Only 429 answers (with `Retry-After`).
    #[default]
    Denied,
    /// 429 answers, and allowed answers of accounts with a monthly limit.
    All,
}

impl std::str::FromStr for QuotaHeaders {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "denied" => Ok(QuotaHeaders::Denied),
            "all" => Ok(QuotaHeaders::All),
            other => Err(format!("'{other}' is not one of denied, all")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portal::{AppAuth, PLAN_FREE, PLAN_UNLIMITED};

    fn app(plan: &str, limit: u64) -> PortalApp {
        PortalApp {
            account_id: "acc".into(),
            plan: plan.into(),
            auth: AppAuth::Public,
            monthly_user_limit: limit,
            client_auth: crate::device::ClientAuth::Key,
        }
    }

    #[test]
    fn calendar() {
        // 2026-12-02T03:00:00Z
        let t = 1_796_180_400;
        assert_eq!(
            Month::of(t),
            Month {
                year: 2026,
                month: 12
            }
        );
        assert_eq!(Month::of(t).start(), 1_796_083_200); // 2026-12-01T00:00:00Z
        assert_eq!(Month::of(t).next().start(), 1_798_761_600); // 2027-01-01
        assert_eq!(Month::of(t).first_day(), "2026-12-01");
        assert_eq!(Month::of(t).seconds(), 31 * 86_400);
        assert_eq!(Month::of(1_798_761_599).month, 12);
        assert_eq!(Month::of(1_798_761_600).to_string(), "2027-01");
        assert_eq!(seconds_until_reset(1_798_761_599), 1);
        assert_eq!(seconds_until_reset(1_798_761_600), 31 * 86_400);
        // leap February, epoch, and every month start round-trips
        assert_eq!(
            Month {
                year: 2028,
                month: 2
            }
            .seconds(),
            29 * 86_400
        );
        assert_eq!(Month::of(0).to_string(), "1970-01");
        let mut m = Month::of(0);
        for _ in 0..2000 {
            assert_eq!(Month::of(m.start()), m);
            assert_eq!(Month::of(m.start() - 1).next(), m);
            m = m.next();
        }
    }

    #[test]
    fn quota_headers() {
        let t = 1_798_761_600 - 100; // 100 s before 2027
        assert_eq!(QuotaState::of(&app("PLAN_OTHER", 0), Some(5), t), None);
        assert_eq!(QuotaState::of(&app(PLAN_UNLIMITED, 0), Some(5), t), None);
        let q = QuotaState::of(&app(PLAN_UNLIMITED, 500), Some(120), t).unwrap();
        assert_eq!(q.remaining(), 380);
        assert_eq!(
            q.headers(false),
            vec![
                (
                    "ratelimit-policy",
                    "\"monthly\";q=500;w=2678400".to_string()
                ),
                ("ratelimit", "\"monthly\";r=380;t=100".to_string()),
            ]
        );
        let q = QuotaState::of(&app(PLAN_FREE, 7), Some(1_000_001), t).unwrap();
        assert_eq!(q.limit, 1_000_000);
        assert_eq!(q.remaining(), 0);
        assert_eq!(
            q.headers(true),
            vec![
                (
                    "ratelimit-policy",
                    "\"monthly\";q=1000000;w=2678400".to_string()
                ),
                ("ratelimit", "\"monthly\";r=0;t=100".to_string()),
                ("retry-after", "100".to_string()),
            ]
        );
        assert_eq!("ALL".parse::<QuotaHeaders>(), Ok(QuotaHeaders::All));
        assert!("sometimes".parse::<QuotaHeaders>().is_err());
    }
}
