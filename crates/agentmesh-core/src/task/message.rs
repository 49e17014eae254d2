//! Error messages stay short whatever the document holds.
//!
//! A refusal travels back in gRPC status metadata and into logs; a message
//! that quotes a 200 KB key or lists a thousand ids in a cycle would exceed
//! other clients' metadata limits (a 1,024-id cycle message was 14 KB).
//! Text taken from the document is clipped where it is quoted, lists name
//! their first entries and count the rest, and every error of a task file
//! is held to [`MAX_ERROR_BYTES`] as a last resort
//! (`TaskFileError::bounded`).

use std::fmt::Display;

/// Longest error message, in bytes, a task file can cause.
pub const MAX_ERROR_BYTES: usize = 1024;

/// Bytes of one name, key or reference from the document quoted in a
/// message: ids are at most 128 bytes, and a name longer than this is
/// recognisable from its start.
pub const MAX_QUOTED: usize = 64;

/// Entries of a list named in a message before the rest are counted.
pub const MAX_LISTED: usize = 5;

/// `text` cut to at most `max` bytes (at a character boundary), saying how
/// much was left out.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end)
}

/// The first [`MAX_LISTED`] items joined with `separator`, each clipped to
/// [`MAX_QUOTED`], then how many more there are.
pub fn list<T: Display>(items: &[T], separator: &str) -> String {
    let mut shown: Vec<String> = items
        .iter()
        .take(MAX_LISTED)
        .map(|item| clip(&item.to_string(), MAX_QUOTED))
        .collect();
    if items.len() > MAX_LISTED {
        shown.push(format!("… {} more", items.len() - MAX_LISTED));
    }
    shown.join(separator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lists_name_the_first_entries_and_count_the_rest() {
        let ids: Vec<String> = (0..1024).map(|i| format!("t{i}")).collect();
        assert_eq!(
            list(&ids, " -> "),
            "t0 -> t1 -> t2 -> t3 -> t4 -> … 1019 more"
        );
        assert_eq!(list(&ids[..2], ", "), "t0, t1");
    }

    proptest! {
        #[test]
        fn clipped_text_stays_within_its_bound(text in ".{0,300}", max in 1usize..100) {
            let clipped = clip(&text, max);
            prop_assert!(clipped.len() <= max + 32, "{} bytes", clipped.len());
            match clipped.rsplit_once("… (") {
                Some((kept, _)) if clipped != text => prop_assert!(text.starts_with(kept)),
                _ => prop_assert_eq!(&clipped, &text),
            }
        }
    }
}
