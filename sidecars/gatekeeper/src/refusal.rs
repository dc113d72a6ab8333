//! Why a request gets no token: a bounded set of reasons (they label the refusal counter),
//! each with its HTTP status, and a message for the caller.

use std::fmt;

/// The reason a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// 401: no credentials at all.
    MissingCredentials,
    /// 401: an OpenID Connect token that does not verify (signature, issuer, audience, time).
    InvalidToken,
    /// 401: an API key that matches none.
    InvalidApiKey,
    /// 401: the issuer's keys could not be loaded, so no token can be checked.
    KeysUnavailable,
    /// 400: a malformed request (body, query, where clause, params).
    BadRequest,
    /// 401: tokens must be bound to a client certificate and the caller presented none.
    ClientCertificateRequired,
    /// 400: `x-forwarded-client-cert` cannot be read, so no token is bound to it.
    BadClientCertificate,
    /// 403: no rule is about this table.
    TableNotCovered,
    /// 403: rules are about this table, but their claim conditions do not hold for the caller.
    ConditionsNotMet,
    /// 403: a column the rule does not allow.
    ColumnNotAllowed,
    /// 403: a `replica` mode the rule does not allow.
    ReplicaNotAllowed,
    /// 403: a `log` mode the rule does not allow.
    LogNotAllowed,
    /// 403: a client `where` where the rule refuses one.
    WhereNotAllowed,
    /// 403: `params` that differ from the ones the policy sets.
    ParamsMismatch,
    /// 403: the policy's `where` needs a claim the caller does not have.
    ClaimMissing,
    /// 503: no policy loaded, or no key signing yet.
    NotReady,
    /// 500: the claim could not be minted (should not happen: rules are checked at load).
    Internal,
}

impl Reason {
    pub const ALL: [Reason; 17] = [
        Reason::MissingCredentials,
        Reason::InvalidToken,
        Reason::InvalidApiKey,
        Reason::KeysUnavailable,
        Reason::BadRequest,
        Reason::ClientCertificateRequired,
        Reason::BadClientCertificate,
        Reason::TableNotCovered,
        Reason::ConditionsNotMet,
        Reason::ColumnNotAllowed,
        Reason::ReplicaNotAllowed,
        Reason::LogNotAllowed,
        Reason::WhereNotAllowed,
        Reason::ParamsMismatch,
        Reason::ClaimMissing,
        Reason::NotReady,
        Reason::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingCredentials => "missing_credentials",
            Reason::InvalidToken => "invalid_token",
            Reason::InvalidApiKey => "invalid_api_key",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::BadRequest => "bad_request",
            Reason::ClientCertificateRequired => "client_certificate_required",
            Reason::BadClientCertificate => "bad_client_certificate",
            Reason::TableNotCovered => "table_not_covered",
            Reason::ConditionsNotMet => "conditions_not_met",
            Reason::ColumnNotAllowed => "column_not_allowed",
            Reason::ReplicaNotAllowed => "replica_not_allowed",
            Reason::LogNotAllowed => "log_not_allowed",
            Reason::WhereNotAllowed => "where_not_allowed",
            Reason::ParamsMismatch => "params_mismatch",
            Reason::ClaimMissing => "claim_missing",
            Reason::NotReady => "not_ready",
            Reason::Internal => "internal",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Reason::MissingCredentials
            | Reason::InvalidToken
            | Reason::InvalidApiKey
            | Reason::KeysUnavailable
            | Reason::ClientCertificateRequired => 401,
            Reason::BadRequest | Reason::BadClientCertificate => 400,
            Reason::NotReady => 503,
            Reason::Internal => 500,
            _ => 403,
        }
    }
}

/// A refusal: the reason and what to tell the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
        }
    }

    /// The JSON body: `{"code": 403, "reason": "column_not_allowed", "message": "..."}`.
    pub fn body(&self) -> String {
        serde_json::json!({
            "code": self.reason.status(),
            "reason": self.reason.as_str(),
            "message": self.message,
        })
        .to_string()
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.message)
    }
}
