//! Error bodies: `{"code": <http status>, "message": "<text>"}`, the shape PEAS answers with,
//! but always valid JSON (the message is escaped).

/// Renders the JSON error body.
pub fn json_body(code: u16, message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 32);
    out.push_str("{\"code\": ");
    out.push_str(&code.to_string());
    out.push_str(", \"message\": ");
    out.push_str(&serde_json::Value::String(message.to_string()).to_string());
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_parses() {
        let body = json_body(401, "bad \"token\"\n");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["code"], 401);
        assert_eq!(v["message"], "bad \"token\"\n");
        assert_eq!(
            json_body(404, "portal app not found"),
            r#"{"code": 404, "message": "portal app not found"}"#
        );
    }
}
