//! How the reactive fast path reads a request: one normalisation shared by
//! the classifier, the tool table and the cache, so a keyword, a request
//! and a cache key are always cut into the same tokens.
//!
//! A token is a maximal run of alphanumeric characters (Unicode), lowercased;
//! everything else separates tokens. Keywords match whole tokens, and a
//! keyword of several words matches the same tokens in a row: `do` does not
//! match `document`, and `look up` matches `look up` but not `lookup`.

/// The lowercased alphanumeric runs of `text`, in order.
pub fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Whether `phrase` (already tokenised) occurs in `tokens` as consecutive
/// tokens. An empty phrase never matches.
pub fn contains_phrase(tokens: &[String], phrase: &[String]) -> bool {
    !phrase.is_empty()
        && tokens.len() >= phrase.len()
        && tokens.windows(phrase.len()).any(|w| w == phrase)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn tokens_are_lowercased_alphanumeric_runs() {
        assert_eq!(
            tokens("What is 2+3*4? Déjà-vu"),
            t(&["what", "is", "2", "3", "4", "déjà", "vu"])
        );
        assert!(tokens("  ?! ").is_empty());
    }

    #[test]
    fn phrases_match_whole_tokens_in_a_row() {
        let request = tokens("please look up the document");
        assert!(contains_phrase(&request, &t(&["look", "up"])));
        assert!(!contains_phrase(&request, &t(&["do"])));
        assert!(!contains_phrase(&request, &t(&["up", "look"])));
        assert!(!contains_phrase(&request, &[]));
    }
}
