//! I-Regexp (RFC 9485), the pattern language of `match()` and `search()`,
//! checked against its grammar and translated into `regex` crate syntax.
//!
//! The `regex` crate accepts much more than I-Regexp (`\d`, lazy
//! quantifiers, flags, set operations in classes), and reads `.`
//! differently: there it excludes only `\n`, in I-Regexp `\n` and `\r`.
//! Translating through the grammar gives the RFC's answer in both
//! directions: a pattern outside I-Regexp makes the function false
//! (RFC 9535 §2.4.6), and every character means what RFC 9485 says. The
//! `regex` crate then matches in time linear in the subject, so no
//! pattern can backtrack catastrophically.
//!
//! One reading follows practice over the letter: RFC 9485's grammar
//! counts `^` and `$` among the normal characters, yet its own mappings to
//! ECMAScript and PCRE (§5) pass them through, where they anchor. The
//! compliance suite expects the anchors (`match(@, '^ab.*')` matches
//! `"ab"`), so they anchor here too.

use std::fmt::Write as _;

use regex::{Regex, RegexBuilder};

use super::JsonQueryError;

/// Deepest accepted nesting of groups; translation recurses once per group.
const MAX_GROUP_DEPTH: usize = 32;

/// Compiles `pattern` for `match()` (`anchored`, the whole subject) or
/// `search()` (any substring). `Ok(None)` when it is not an I-Regexp.
///
/// # Errors
///
/// [`JsonQueryError::RegexTooLarge`] when the pattern is an I-Regexp but
/// nests groups too deeply or compiles beyond `max_bytes`.
pub(super) fn compile(
    pattern: &str,
    anchored: bool,
    max_bytes: usize,
) -> Result<Option<Regex>, JsonQueryError> {
    let too_large = JsonQueryError::RegexTooLarge { max: max_bytes };
    let translated = match translate(pattern) {
        Ok(translated) => translated,
        Err(Refusal::Invalid) => return Ok(None),
        Err(Refusal::TooDeep) => return Err(too_large),
    };
    let source = if anchored {
        format!(r"\A(?:{translated})\z")
    } else {
        translated
    };
    match RegexBuilder::new(&source)
        .size_limit(max_bytes)
        .dfa_size_limit(max_bytes)
        .build()
    {
        Ok(regex) => Ok(Some(regex)),
        Err(regex::Error::CompiledTooBig(_)) => Err(too_large),
        // A syntax error here comes from what the I-Regexp grammar leaves
        // to the engine, such as a reversed range `[z-a]` or `a{3,2}`.
        Err(_) => Ok(None),
    }
}

#[derive(Debug, PartialEq)]
enum Refusal {
    Invalid,
    TooDeep,
}

/// Translates an I-Regexp into `regex` syntax that matches the same
/// strings.
fn translate(pattern: &str) -> Result<String, Refusal> {
    let mut translator = Translator {
        chars: pattern.chars().collect(),
        pos: 0,
        out: String::with_capacity(pattern.len() * 2),
        depth: 0,
    };
    translator.regexp()?;
    if translator.pos == translator.chars.len() {
        Ok(translator.out)
    } else {
        Err(Refusal::Invalid)
    }
}

struct Translator {
    chars: Vec<char>,
    pos: usize,
    out: String,
    depth: usize,
}

/// Characters escapable with a backslash (`SingleCharEsc` without `n`,
/// `r`, `t`, which stand for control characters).
fn is_escapable(ch: char) -> bool {
    matches!(
        ch,
        '(' | ')' | '*' | '+' | '-' | '.' | '?' | '[' | '\\' | ']' | '^' | '{' | '|' | '}'
    )
}

/// The general categories `\p{..}` may name.
/// I-Regexp's `Others` lists Cc, Cf, Cn and Co but not Cs: surrogates
/// never occur in a string.
const CATEGORIES: [&str; 36] = [
    "L", "Ll", "Lm", "Lo", "Lt", "Lu", "M", "Mc", "Me", "Mn", "N", "Nd", "Nl", "No", "P", "Pc",
    "Pd", "Pe", "Pf", "Pi", "Po", "Ps", "Z", "Zl", "Zp", "Zs", "S", "Sc", "Sk", "Sm", "So", "C",
    "Cc", "Cf", "Cn", "Co",
];

impl Translator {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let ch = self.peek()?;
        self.pos += 1;
        Some(ch)
    }

    fn eat(&mut self, ch: char) -> bool {
        let matched = self.peek() == Some(ch);
        if matched {
            self.pos += 1;
        }
        matched
    }

    /// Writes one character as a hex escape unless it is an ASCII letter or
    /// digit, so no character of the pattern reaches the engine as syntax.
    fn literal(&mut self, ch: char) {
        if ch.is_ascii_alphanumeric() {
            self.out.push(ch);
        } else {
            let _ = write!(self.out, r"\x{{{:X}}}", u32::from(ch));
        }
    }

    /// `i-regexp = branch *( "|" branch )`.
    fn regexp(&mut self) -> Result<(), Refusal> {
        self.branch()?;
        while self.eat('|') {
            self.out.push('|');
            self.branch()?;
        }
        Ok(())
    }

    /// `branch = *piece`, `piece = atom [ quantifier ]`.
    fn branch(&mut self) -> Result<(), Refusal> {
        while !matches!(self.peek(), None | Some('|' | ')')) {
            self.atom()?;
            self.quantifier()?;
        }
        Ok(())
    }

    fn quantifier(&mut self) -> Result<(), Refusal> {
        match self.peek() {
            Some(ch @ ('*' | '+' | '?')) => {
                self.pos += 1;
                self.out.push(ch);
            }
            Some('{') => {
                self.pos += 1;
                let min = self.digits().ok_or(Refusal::Invalid)?;
                self.out.push('{');
                self.out.push_str(&min);
                if self.eat(',') {
                    self.out.push(',');
                    if let Some(max) = self.digits() {
                        self.out.push_str(&max);
                    }
                }
                if !self.eat('}') {
                    return Err(Refusal::Invalid);
                }
                self.out.push('}');
            }
            _ => {}
        }
        Ok(())
    }

    fn digits(&mut self) -> Option<String> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        (self.pos > start).then(|| self.chars[start..self.pos].iter().collect())
    }

    fn atom(&mut self) -> Result<(), Refusal> {
        match self.bump().ok_or(Refusal::Invalid)? {
            '(' => {
                if self.depth >= MAX_GROUP_DEPTH {
                    return Err(Refusal::TooDeep);
                }
                self.depth += 1;
                self.out.push_str("(?:");
                self.regexp()?;
                if !self.eat(')') {
                    return Err(Refusal::Invalid);
                }
                self.out.push(')');
                self.depth -= 1;
            }
            // Any character but the two line terminators RFC 9485 names.
            '.' => self.out.push_str(r"[^\n\r]"),
            // Start and end of the subject, never of a line.
            '^' => self.out.push_str(r"\A"),
            '$' => self.out.push_str(r"\z"),
            '\\' => self.escape()?,
            '[' => self.class()?,
            ')' | '*' | '+' | '?' | ']' | '{' | '|' | '}' => return Err(Refusal::Invalid),
            ch => self.literal(ch),
        }
        Ok(())
    }

    /// What follows a backslash: a single escaped character, or a
    /// category `\p{..}` / `\P{..}`.
    fn escape(&mut self) -> Result<(), Refusal> {
        match self.bump().ok_or(Refusal::Invalid)? {
            'n' => self.literal('\n'),
            'r' => self.literal('\r'),
            't' => self.literal('\t'),
            ch @ ('p' | 'P') => self.category(ch)?,
            ch if is_escapable(ch) => self.literal(ch),
            _ => return Err(Refusal::Invalid),
        }
        Ok(())
    }

    fn category(&mut self, kind: char) -> Result<(), Refusal> {
        if !self.eat('{') {
            return Err(Refusal::Invalid);
        }
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
            self.pos += 1;
        }
        let name: String = self.chars[start..self.pos].iter().collect();
        if !CATEGORIES.contains(&name.as_str()) || !self.eat('}') {
            return Err(Refusal::Invalid);
        }
        let _ = write!(self.out, r"\{kind}{{{name}}}");
        Ok(())
    }

    /// `charClassExpr = "[" [ "^" ] ( "-" / CCE1 ) *CCE1 [ "-" ] "]"`.
    fn class(&mut self) -> Result<(), Refusal> {
        self.out.push('[');
        if self.eat('^') {
            self.out.push('^');
        }
        let mut first = true;
        loop {
            match self.peek().ok_or(Refusal::Invalid)? {
                ']' if !first => {
                    self.pos += 1;
                    self.out.push(']');
                    return Ok(());
                }
                '-' if first || self.chars.get(self.pos + 1) == Some(&']') => {
                    self.pos += 1;
                    self.literal('-');
                }
                '\\' if matches!(self.chars.get(self.pos + 1), Some('p' | 'P')) => {
                    self.pos += 1;
                    self.escape()?;
                }
                _ => {
                    let low = self.class_char()?;
                    self.literal(low);
                    if self.peek() == Some('-') && self.chars.get(self.pos + 1) != Some(&']') {
                        self.pos += 1;
                        let high = self.class_char()?;
                        self.out.push('-');
                        self.literal(high);
                    }
                }
            }
            first = false;
        }
    }

    /// `CCchar`: a character other than `-`, `[`, `\` and `]`, or a single
    /// escaped character.
    fn class_char(&mut self) -> Result<char, Refusal> {
        match self.bump().ok_or(Refusal::Invalid)? {
            '\\' => match self.bump().ok_or(Refusal::Invalid)? {
                'n' => Ok('\n'),
                'r' => Ok('\r'),
                't' => Ok('\t'),
                ch if is_escapable(ch) => Ok(ch),
                _ => Err(Refusal::Invalid),
            },
            '-' | '[' | ']' => Err(Refusal::Invalid),
            ch => Ok(ch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, subject: &str) -> Option<bool> {
        compile(pattern, true, 1 << 20)
            .unwrap()
            .map(|regex| regex.is_match(subject))
    }

    #[test]
    fn dot_excludes_only_line_terminators() {
        assert_eq!(matches(".", "\u{2028}"), Some(true));
        assert_eq!(matches(".", "𝄞"), Some(true));
        assert_eq!(matches(".", "\n"), Some(false));
        assert_eq!(matches(".", "\r"), Some(false));
    }

    #[test]
    fn caret_and_dollar_anchor_at_the_ends_of_the_subject() {
        assert_eq!(matches("^ab", "ab"), Some(true));
        assert_eq!(matches("^ab", "^ab"), Some(false));
        assert_eq!(matches("a$", "a"), Some(true));
        assert_eq!(matches(r"a\$", "a$"), None, "'$' is not escapable");
        assert_eq!(matches("[$^]+", "$^"), Some(true), "plain inside a class");
        let search = compile("^b", false, 1 << 20).unwrap().unwrap();
        assert!(!search.is_match("ab\nb"), "not at a line start");
        assert!(search.is_match("bc"));
    }

    #[test]
    fn match_is_anchored_and_search_is_not() {
        assert_eq!(matches("a|b", "b"), Some(true));
        assert_eq!(matches("a|bc", "ab"), Some(false));
        let search = compile("b", false, 1 << 20).unwrap().unwrap();
        assert!(search.is_match("abc"));
    }

    #[test]
    fn classes_escapes_categories_and_quantifiers() {
        assert_eq!(matches("[a-c]+", "abcab"), Some(true));
        assert_eq!(matches("[^a-c]", "d"), Some(true));
        assert_eq!(matches("[-a]*", "-a-"), Some(true));
        assert_eq!(matches("[a-]", "-"), Some(true));
        assert_eq!(matches(r"[\]\\]", "]"), Some(true));
        assert_eq!(matches("[&&~~]", "&"), Some(true), "no set operations");
        assert_eq!(matches(r"\p{Lu}\P{Lu}", "Ab"), Some(true));
        assert_eq!(matches(r"[\p{Nd}x]{2,3}", "1x"), Some(true));
        assert_eq!(matches(r"\n\t\.", "\n\t."), Some(true));
        assert_eq!(matches("a{2}", "aa"), Some(true));
        assert_eq!(matches("a{2,}", "aaaa"), Some(true));
        assert_eq!(matches("(ab)?c", "c"), Some(true));
        assert_eq!(matches("", ""), Some(true));
        assert_eq!(matches("a|", ""), Some(true));
    }

    #[test]
    fn patterns_outside_i_regexp_are_invalid() {
        for pattern in [
            r"\d", r"\w", r"\s", "a*?", "a**", "(?i)a", "(", ")", "[", "[]", "[^]", "a{", "a{,2}",
            "{", "}", "]", r"\p{Xx}", r"\p{Cs}", r"\pL", r"\", "[a-b-c]", "[z-a]", "a{3,2}", r"\b",
            r"\1",
        ] {
            assert_eq!(matches(pattern, "a"), None, "{pattern:?}");
        }
    }

    #[test]
    fn unicode_categories_fit_the_default_limit() {
        for pattern in [
            r"\p{L}+",
            r"[\p{L}\p{N}\p{P}]*",
            r"\p{L}{1,20}",
            r"(\p{Lu}\p{Ll}*)+",
        ] {
            assert!(
                compile(pattern, false, crate::builtin::json_query::MAX_REGEX_BYTES)
                    .unwrap()
                    .is_some(),
                "{pattern}"
            );
        }
    }

    #[test]
    fn limits_are_errors_not_false() {
        let deep = format!("{}a{}", "(".repeat(40), ")".repeat(40));
        assert_eq!(
            compile(&deep, true, 1 << 20).unwrap_err(),
            JsonQueryError::RegexTooLarge { max: 1 << 20 }
        );
        assert_eq!(
            compile(r"\p{L}{500}", true, 1 << 16).unwrap_err(),
            JsonQueryError::RegexTooLarge { max: 1 << 16 }
        );
    }
}
