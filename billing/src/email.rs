//! The one rule for e-mail addresses: what the API accepts is what the mailer can send to.
//! It is the mail library's own address check (RFC 5321 local part and domain), plus the limits
//! a recipient list needs (at most 254 characters, no spaces or control characters).

use std::str::FromStr;

/// The address, checked; or why it is not one.
pub fn parse_address(s: &str) -> Result<lettre::Address, String> {
    if s.len() > 254 {
        return Err("an e-mail address has at most 254 characters".into());
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("an e-mail address holds no spaces or control characters".into());
    }
    lettre::Address::from_str(s).map_err(|e| format!("`{s}` is not an e-mail address: {e}"))
}

pub fn is_valid(s: &str) -> bool {
    parse_address(s).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mailers_rule() {
        for ok in ["a@example.com", "billing+ops@sub.example.co", "x@localhost"] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "@example.com",
            "a@",
            "a b@example.com",
            "a@exa mple.com",
            "a@@example.com",
            "a@example..com",
            "a\n@example.com",
            "Name <a@example.com>",
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
        assert!(!is_valid(&format!("{}@example.com", "a".repeat(250))));
    }
}
