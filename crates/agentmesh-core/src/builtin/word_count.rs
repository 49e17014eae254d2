//! Text statistics behind the `text.word_count` tool.
//!
//! Counts follow the definitions of the Rust standard library
//! (`split_whitespace`, `chars`, `lines`) so that results are predictable
//! and identical on every node, whatever the platform's line endings.

use std::collections::HashMap;

/// How many frequent words a report lists when the caller does not say.
pub const DEFAULT_TOP_N: usize = 5;

/// Statistics about a piece of text.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WordCount {
    /// Whitespace-separated tokens, punctuation included.
    pub words: u64,
    /// Unicode scalar values, not bytes and not grapheme clusters.
    pub chars: u64,
    /// Lines as [`str::lines`] counts them: a trailing newline does not
    /// start a new line, and empty text has none.
    pub lines: u64,
    /// The most frequent normalised words, most frequent first, ties broken
    /// alphabetically so that the order is deterministic.
    pub top_words: Vec<WordFrequency>,
}

/// One entry of [`WordCount::top_words`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WordFrequency {
    /// The word, lower-cased and stripped of surrounding punctuation.
    pub word: String,
    /// How many tokens normalised to this word.
    pub count: u64,
}

/// Computes [`WordCount`] statistics for `text`, listing at most `top_n`
/// frequent words.
///
/// For frequencies, tokens are lower-cased and stripped of leading and
/// trailing non-alphanumeric characters, so that `"Fox,"` and `"fox"` count
/// as the same word; tokens made only of punctuation are left out of the
/// frequencies but still count as words.
#[must_use]
pub fn count_words(text: &str, top_n: usize) -> WordCount {
    WordCount {
        words: text.split_whitespace().count() as u64,
        chars: text.chars().count() as u64,
        lines: text.lines().count() as u64,
        top_words: top_words(text, top_n),
    }
}

fn top_words(text: &str, top_n: usize) -> Vec<WordFrequency> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for word in text.split_whitespace().filter_map(normalize) {
        *counts.entry(word).or_default() += 1;
    }
    let mut frequencies: Vec<WordFrequency> = counts
        .into_iter()
        .map(|(word, count)| WordFrequency { word, count })
        .collect();
    frequencies.sort_unstable_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    frequencies.truncate(top_n);
    frequencies
}

fn normalize(token: &str) -> Option<String> {
    let word = token.trim_matches(|c: char| !c.is_alphanumeric());
    (!word.is_empty()).then(|| word.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn freq(word: &str, count: u64) -> WordFrequency {
        WordFrequency {
            word: word.into(),
            count,
        }
    }

    #[test]
    fn first_example_sentence() {
        let result = count_words("the quick brown fox", DEFAULT_TOP_N);
        assert_eq!(result.words, 4);
        assert_eq!(result.chars, 19);
        assert_eq!(result.lines, 1);
        assert_eq!(
            result.top_words,
            vec![
                freq("brown", 1),
                freq("fox", 1),
                freq("quick", 1),
                freq("the", 1)
            ]
        );
    }

    #[test]
    fn second_example_sentence() {
        let result = count_words("jumps over the lazy dog again", DEFAULT_TOP_N);
        assert_eq!(result.words, 6);
        assert_eq!(result.chars, 29);
        assert_eq!(result.lines, 1);
        let words: Vec<_> = result.top_words.iter().map(|f| f.word.as_str()).collect();
        assert_eq!(words, ["again", "dog", "jumps", "lazy", "over"]);
    }

    #[test]
    fn empty_text() {
        let result = count_words("", DEFAULT_TOP_N);
        assert_eq!(
            result,
            WordCount {
                words: 0,
                chars: 0,
                lines: 0,
                top_words: vec![]
            }
        );
    }

    #[test]
    fn whitespace_only_text() {
        let result = count_words("  \n\t\n", DEFAULT_TOP_N);
        assert_eq!(result.words, 0);
        assert_eq!(result.chars, 5);
        assert_eq!(result.lines, 2);
        assert!(result.top_words.is_empty());
    }

    #[test]
    fn lines_follow_str_lines() {
        assert_eq!(count_words("a\nb", 0).lines, 2);
        assert_eq!(count_words("a\nb\n", 0).lines, 2);
        assert_eq!(count_words("a\r\nb\r\n", 0).lines, 2);
        assert_eq!(count_words("\n\n", 0).lines, 2);
    }

    #[test]
    fn frequencies_sort_by_count_then_word() {
        let result = count_words("b a c b a b d", 3);
        assert_eq!(
            result.top_words,
            vec![freq("b", 3), freq("a", 2), freq("c", 1)]
        );
    }

    #[test]
    fn punctuation_and_case_are_normalised() {
        let result = count_words("The fox! \"the\" FOX, (fox) -- ... don't", DEFAULT_TOP_N);
        assert_eq!(result.words, 8);
        assert_eq!(
            result.top_words,
            vec![freq("fox", 3), freq("the", 2), freq("don't", 1)]
        );
    }

    #[test]
    fn unicode_counts_scalar_values() {
        let result = count_words("Größe größe naïve 日本語 — café", DEFAULT_TOP_N);
        assert_eq!(result.words, 6);
        assert_eq!(result.chars, 28);
        assert_eq!(
            result.top_words,
            vec![
                freq("größe", 2),
                freq("café", 1),
                freq("naïve", 1),
                freq("日本語", 1)
            ]
        );
    }

    #[test]
    fn top_n_truncates_and_zero_lists_nothing() {
        assert!(count_words("a b c", 0).top_words.is_empty());
        assert_eq!(count_words("a b c", 2).top_words.len(), 2);
        assert_eq!(count_words("a b c", 100).top_words.len(), 3);
    }

    #[test]
    fn serialises_with_field_names() {
        let json = serde_json::to_value(count_words("hi hi", 1)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "words": 2, "chars": 5, "lines": 1,
                "top_words": [{"word": "hi", "count": 2}]
            })
        );
    }

    proptest! {
        #[test]
        fn counts_are_consistent(text in "\\PC{0,300}", top_n in 0usize..20) {
            let result = count_words(&text, top_n);
            prop_assert_eq!(result.words, text.split_whitespace().count() as u64);
            prop_assert_eq!(result.chars, text.chars().count() as u64);
            prop_assert!(result.top_words.len() <= top_n);
            let listed: u64 = result.top_words.iter().map(|f| f.count).sum();
            prop_assert!(listed <= result.words);
            for pair in result.top_words.windows(2) {
                prop_assert!((pair[0].count, &pair[1].word) >= (pair[1].count, &pair[0].word));
            }
        }

        #[test]
        fn counts_are_consistent_on_any_text(text in ".{0,300}") {
            let result = count_words(&text, usize::MAX);
            prop_assert_eq!(result.words, text.split_whitespace().count() as u64);
            let listed: u64 = result.top_words.iter().map(|f| f.count).sum();
            prop_assert!(listed <= result.words);
        }
    }
}
