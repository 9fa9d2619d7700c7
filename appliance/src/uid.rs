//! DICOM UIDs from peers: the syntax check every received UID passes before it is stored
//! (PS3.5 §9.1), and the redaction that keeps them out of what operators see.
//!
//! Study, series and instance UIDs link to a patient; logs, the status page and queue reasons
//! name them by [`crate::store::uid_hash`] only. [`redact`] applies that to free text (an
//! assembler's refusal, a peer's error comment) so that a message written with a full UID
//! cannot carry it there. UIDs of the standard itself (`1.2.840.10008.…`: SOP classes,
//! transfer syntaxes) name no patient and are kept.

use std::fmt;

use crate::store::uid_hash;

/// The longest UID (PS3.5 §9.1).
pub const MAX_UID_LEN: usize = 64;

/// Why a UID is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UidError {
    #[error("empty")]
    Empty,
    #[error("longer than 64 characters")]
    TooLong,
    #[error("holds a character other than digits and dots")]
    Character,
    #[error("has an empty component (leading, trailing or double dot)")]
    EmptyComponent,
}

/// Checks a UID's syntax: 1–64 characters, digits in dot-separated non-empty components.
/// Trailing NUL or space padding is ignored. A component with a leading zero (`1.02`) is
/// accepted: the standard forbids it, but older scanners write such UIDs and refusing their
/// studies would lose data without protecting any.
pub fn check(uid: &str) -> Result<(), UidError> {
    let uid = uid.trim_end_matches(['\0', ' ']);
    if uid.is_empty() {
        return Err(UidError::Empty);
    }
    if uid.len() > MAX_UID_LEN {
        return Err(UidError::TooLong);
    }
    if !uid.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(UidError::Character);
    }
    if uid.split('.').any(str::is_empty) {
        return Err(UidError::EmptyComponent);
    }
    Ok(())
}

/// Text with every UID-like token replaced by `uid:<hash>`, the hash the status page shows for
/// series and studies. UID-like: digits and dots, at least five components or three and more
/// than 15 characters (`2.25.<uuid>`), not under the standard's own root `1.2.840.10008.`;
/// so versions (`1.4.0`), IPv4 addresses and decimals stay as they are.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let is_uid_char = |b: u8| b.is_ascii_digit() || b == b'.';
        // A token starts at a digit not preceded by a word character.
        let starts = bytes[i].is_ascii_digit()
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.'));
        if !starts {
            let ch = text[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8().max(1);
            continue;
        }
        let mut j = i;
        while j < bytes.len() && is_uid_char(bytes[j]) {
            j += 1;
        }
        // A sentence's full stop is not part of the UID.
        let mut end = j;
        while end > i && bytes[end - 1] == b'.' {
            end -= 1;
        }
        let token = &text[i..end];
        let components = token.split('.').count();
        let followed_by_word = j < bytes.len() && bytes[j].is_ascii_alphabetic();
        let uid_like = components >= 5 || (components >= 3 && token.len() > 15);
        if uid_like && !followed_by_word && !token.starts_with("1.2.840.10008.") {
            out.push_str(&format!("uid:{}", uid_hash(token)));
        } else {
            out.push_str(token);
        }
        out.push_str(&text[end..j]);
        i = j;
    }
    out
}

/// A UID for a log line: its hash.
pub struct Hashed<'a>(pub &'a str);

impl fmt::Display for Hashed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&uid_hash(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_syntax() {
        assert_eq!(check("1.2.840.10008.5.1.4.1.1.2"), Ok(()));
        assert_eq!(check("1.2.3\0"), Ok(()));
        assert_eq!(check("1.02.3"), Ok(()), "leading zeros are tolerated");
        assert_eq!(check(""), Err(UidError::Empty));
        assert_eq!(check("\0"), Err(UidError::Empty));
        assert_eq!(check("."), Err(UidError::EmptyComponent));
        assert_eq!(check("1..2"), Err(UidError::EmptyComponent));
        assert_eq!(check("1.2."), Err(UidError::EmptyComponent));
        assert_eq!(check(".1.2"), Err(UidError::EmptyComponent));
        assert_eq!(check("1.2.a"), Err(UidError::Character));
        assert_eq!(check("../etc"), Err(UidError::Character));
        let long = format!("1.{}", "2".repeat(63));
        assert_eq!(long.len(), 65);
        assert_eq!(check(&long), Err(UidError::TooLong));
        assert_eq!(check(&long[..64]), Ok(()));
    }

    #[test]
    fn redaction_hides_identifiers_and_keeps_the_rest() {
        let series = "1.2.826.0.1.3680043.8.498.12345";
        let text = format!(
            "series {series} has 12 slices; at least 16 are needed (SOP class \
             1.2.840.10008.5.1.4.1.1.2, spacing 2.5 mm, version 1.4.0)."
        );
        let r = redact(&text);
        assert!(!r.contains(series), "{r}");
        assert!(
            r.contains(&format!("series uid:{} has 12", uid_hash(series))),
            "{r}"
        );
        assert!(r.contains("1.2.840.10008.5.1.4.1.1.2"), "{r}");
        assert!(r.contains("2.5 mm") && r.contains("1.4.0)."), "{r}");
        assert_eq!(redact("gap of 2.50 mm"), "gap of 2.50 mm");
        assert_eq!(
            redact("ü 1.2.3.4.5 ü"),
            format!("ü uid:{} ü", uid_hash("1.2.3.4.5"))
        );
        let uuid = "2.25.329800735698586629295641978511506172918";
        assert_eq!(redact(uuid), format!("uid:{}", uid_hash(uuid)));
        assert_eq!(redact("v1.2.3"), "v1.2.3", "a version is not a UID");
        assert_eq!(
            redact("RECV@127.0.0.1:104: refused"),
            "RECV@127.0.0.1:104: refused"
        );
    }
}
