//! Reading a tool's input out of a request by pattern matching. Each
//! extractor either finds what its tool needs or returns `None`, so the
//! router can try the next candidate tool instead of running a tool on
//! nonsense. The request is already within `max_request_bytes`, and each
//! extractor is one or two passes over it.

use serde_json::{Value, json};

use super::table::Extractor;

/// The tool input `extractor` reads out of `request`, if it finds one.
pub fn extract(extractor: Extractor, request: &str) -> Option<Value> {
    match extractor {
        Extractor::Expression => expression(request).map(|expr| json!({ "expr": expr })),
        Extractor::Text => text(request).map(|text| json!({ "text": text })),
        Extractor::Url => url(request).map(|url| json!({ "url": url })),
        Extractor::JsonQuery => json_query(request)
            .map(|(path, document)| json!({ "path": path, "document": document })),
    }
}

/// Names `math.eval` knows (functions and constants), so `sqrt(16) + pi`
/// stays one expression.
const EXPR_NAMES: [&str; 17] = [
    "sqrt", "abs", "min", "max", "round", "floor", "ceil", "ln", "log10", "log2", "exp", "sin",
    "cos", "tan", "pow", "pi", "e",
];

/// Operators written as words.
const WORD_OPERATORS: [(&str, &str); 5] = [
    ("plus", "+"),
    ("minus", "-"),
    ("times", "*"),
    ("mod", "%"),
    ("over", "/"),
];

/// One piece of an expression, or something that ends one.
#[derive(Debug, PartialEq)]
enum Lexeme {
    Part(String),
    Break,
}

fn lex_expression(request: &str) -> Vec<Lexeme> {
    let mut out = Vec::new();
    let chars: Vec<char> = request.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let number: String = chars[start..i].iter().collect();
            // "2 + 2." ends a sentence with the dot.
            let number = number.trim_end_matches('.').to_owned();
            out.push(Lexeme::Part(number));
        } else if "+-*/%^(),".contains(c) {
            out.push(Lexeme::Part(c.to_string()));
            i += 1;
        } else if c.is_alphanumeric() {
            let start = i;
            while i < chars.len() && chars[i].is_alphanumeric() {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect::<String>().to_lowercase();
            if EXPR_NAMES.contains(&word.as_str()) {
                out.push(Lexeme::Part(word));
            } else if let Some((_, op)) = WORD_OPERATORS.iter().find(|(w, _)| *w == word) {
                out.push(Lexeme::Part((*op).to_owned()));
            } else if matches!(word.as_str(), "divided" | "multiplied") {
                // "divided by", "multiplied by": the operator is the pair.
                let op = if word == "divided" { "/" } else { "*" };
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let by: String = chars[j..chars.len().min(j + 2)].iter().collect();
                if by.eq_ignore_ascii_case("by")
                    && !chars.get(j + 2).is_some_and(|c| c.is_alphanumeric())
                {
                    out.push(Lexeme::Part(op.to_owned()));
                    i = j + 2;
                } else {
                    out.push(Lexeme::Break);
                }
            } else {
                out.push(Lexeme::Break);
            }
        } else {
            out.push(Lexeme::Break);
            i += 1;
        }
    }
    out
}

/// The longest run of expression pieces holding a digit, with dangling
/// operators and commas trimmed from its ends.
pub fn expression(request: &str) -> Option<String> {
    let lexemes = lex_expression(request);
    let mut best: Option<Vec<&str>> = None;
    for run in lexemes.split(|l| *l == Lexeme::Break) {
        let mut parts: Vec<&str> = run
            .iter()
            .filter_map(|l| match l {
                Lexeme::Part(p) => Some(p.as_str()),
                Lexeme::Break => None,
            })
            .collect();
        while parts.last().is_some_and(|p| "+-*/%^,".contains(*p)) {
            parts.pop();
        }
        while parts.first().is_some_and(|p| "*/%^,)".contains(*p)) {
            parts.remove(0);
        }
        if !parts.iter().any(|p| p.chars().any(|c| c.is_ascii_digit())) {
            continue;
        }
        if best.as_ref().is_none_or(|b| parts.len() > b.len()) {
            best = Some(parts);
        }
    }
    best.map(|parts| {
        let mut out = String::new();
        for (i, part) in parts.iter().enumerate() {
            // Function names stay glued to their parenthesis.
            let glued = i > 0
                && ((*part == "(" && EXPR_NAMES.contains(&parts[i - 1]))
                    || *part == ")"
                    || parts[i - 1] == "("
                    || *part == ",");
            if i > 0 && !glued {
                out.push(' ');
            }
            out.push_str(part);
        }
        out
    })
}

/// A quoted text (`"…"`, `'…'`, `“…”`), or the text after the first `:`.
/// A quote opens at the start of a word and closes at its end, so the
/// apostrophe of "what's" is no quote.
pub fn text(request: &str) -> Option<String> {
    let word_char = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    for (open, close) in [('"', '"'), ('\u{201c}', '\u{201d}'), ('\'', '\'')] {
        for (start, _) in request.match_indices(open) {
            if word_char(request[..start].chars().next_back()) {
                continue;
            }
            let body = start + open.len_utf8();
            let end = request[body..]
                .match_indices(close)
                .map(|(i, _)| body + i)
                .find(|&i| !word_char(request[i + close.len_utf8()..].chars().next()));
            if let Some(end) = end
                && !request[body..end].trim().is_empty()
            {
                return Some(request[body..end].to_owned());
            }
        }
    }
    let (_, after) = request.split_once(':')?;
    let after = after.trim();
    (!after.is_empty()).then(|| after.to_owned())
}

/// The first `http://` or `https://` URL, without trailing punctuation.
pub fn url(request: &str) -> Option<String> {
    request
        .split(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '\''))
        .find(|word| {
            let lower = word.to_ascii_lowercase();
            lower.starts_with("http://") || lower.starts_with("https://")
        })
        .map(|word| {
            word.trim_end_matches(['.', ',', ';', '!', '?', ')'])
                .to_owned()
        })
        .filter(|u| u.len() > "https://".len())
}

/// A JSONPath (a word starting with `$`) and the first JSON object or
/// array in the request.
pub fn json_query(request: &str) -> Option<(String, Value)> {
    // A document starts a word: the `[` of `$.a[0]` is the path's.
    let document = request.char_indices().find_map(|(i, c)| {
        let starts_word = request[..i]
            .chars()
            .next_back()
            .is_none_or(|p| p.is_whitespace() || matches!(p, ':' | '=' | '('));
        if (c != '{' && c != '[') || !starts_word {
            return None;
        }
        let mut values = serde_json::Deserializer::from_str(&request[i..]).into_iter::<Value>();
        match values.next() {
            Some(Ok(value)) => Some((i, i + values.byte_offset(), value)),
            _ => None,
        }
    });
    let (start, end, document) = document?;
    let outside = format!("{} {}", &request[..start], &request[end..]);
    let path = outside
        .split_whitespace()
        .find(|w| w.starts_with('$'))?
        .trim_end_matches([',', ';', '?', '!'])
        .trim_end_matches('.')
        .to_owned();
    Some((path, document))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_are_read_out_of_prose() {
        assert_eq!(
            expression("what is 2 + 3 * 4?").as_deref(),
            Some("2 + 3 * 4")
        );
        assert_eq!(
            expression("Calculate (4+6)/2.").as_deref(),
            Some("(4 + 6) / 2")
        );
        assert_eq!(expression("what's 7 times 6").as_deref(), Some("7 * 6"));
        assert_eq!(
            expression("10 divided by 4, please").as_deref(),
            Some("10 / 4")
        );
        assert_eq!(
            expression("compute sqrt(16) + pi").as_deref(),
            Some("sqrt(16) + pi")
        );
        assert_eq!(expression("what is the capital of France"), None);
        assert_eq!(expression("a well-known fact"), None);
    }

    #[test]
    fn extracted_expressions_evaluate() {
        for (request, value) in [
            ("what is 2 + 3 * 4?", 14.0),
            ("Calculate (4+6)/2.", 5.0),
            ("compute max(1, 9, 3) - 1", 8.0),
            ("how much is 2^10", 1024.0),
        ] {
            let expr = expression(request).unwrap();
            assert_eq!(
                crate::builtin::expr::eval(&expr),
                Ok(value),
                "{request} -> {expr}"
            );
        }
    }

    #[test]
    fn texts_urls_and_queries() {
        assert_eq!(
            text("count the words in \"a b c\"").as_deref(),
            Some("a b c")
        );
        assert_eq!(text("what's in 'x y'").as_deref(), Some("x y"));
        assert_eq!(
            text("word count: the quick fox").as_deref(),
            Some("the quick fox")
        );
        assert_eq!(text("count words"), None);
        assert_eq!(
            url("fetch https://example.com/a?b=1.").as_deref(),
            Some("https://example.com/a?b=1")
        );
        assert_eq!(url("fetch https://"), None);
        let (path, doc) = json_query("query $.a[0] in {\"a\": [1, 2]}").unwrap();
        assert_eq!(path, "$.a[0]");
        assert_eq!(doc, json!({"a": [1, 2]}));
        assert_eq!(json_query("query $.a"), None);
    }
}
