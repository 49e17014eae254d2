//! Arithmetic expression evaluator behind the `math.eval` tool.
//!
//! Expressions arrive from agents, often language models, so the input is
//! treated as untrusted: its length and nesting are bounded before any
//! recursion can grow, every failure is a typed [`ExprError`] that names the
//! byte position responsible, and non-finite values are rejected rather than
//! leaking `NaN` or `inf` into task results.
//!
//! Grammar, from lowest to highest precedence:
//!
//! ```text
//! expr    := term (('+' | '-') term)*
//! term    := unary (('*' | '/' | '%') unary)*
//! unary   := ('+' | '-') unary | power
//! power   := primary ('^' unary)?
//! primary := number | constant | function '(' args? ')' | '(' expr ')'
//! args    := expr (',' expr)*
//! ```
//!
//! `^` is right-associative and binds tighter than unary minus, so `-2^2` is
//! `-4`, while `2^-1` is `0.5` because the exponent may itself be signed.
//!
//! Numbers are IEEE 754 doubles. Every integer up to 2^53
//! ([`MAX_EXACT_INTEGER`]) is exact; an integer literal above it is refused
//! ([`ExprError::InexactInteger`]) rather than silently rounded, since
//! `9007199254740993` would otherwise read as `9007199254740992`. A literal
//! written with a fraction or an exponent (`1e20`) asks for a float and is
//! rounded to the nearest double as floats are. Results are doubles too:
//! arithmetic whose result is above 2^53 in magnitude (`2^60 + 1`) is
//! rounded to the nearest double.

/// Longest accepted expression in bytes; it caps tokenizer and parser work.
pub const MAX_EXPR_LEN: usize = 4096;

/// Deepest accepted nesting of parentheses, unary signs, function calls and
/// exponents; it keeps the recursive-descent parser far from the stack limit.
pub const MAX_NESTING: usize = 64;

/// The largest integer below which every integer is exactly a double: 2^53.
pub const MAX_EXACT_INTEGER: u64 = 1 << 53;

/// Why an expression could not be evaluated. Positions are byte offsets into
/// the source so callers can point at the offending character.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    /// The source holds nothing but whitespace.
    #[error("empty expression")]
    Empty,
    /// The source exceeds [`MAX_EXPR_LEN`].
    #[error("expression too long: {len} bytes, limit {max}")]
    TooLong {
        /// Length of the source in bytes.
        len: usize,
        /// The limit that was exceeded.
        max: usize,
    },
    /// Nesting exceeds [`MAX_NESTING`].
    #[error("expression nested deeper than {max} levels")]
    TooDeep {
        /// The limit that was exceeded.
        max: usize,
    },
    /// A character that starts no token.
    #[error("unexpected character '{ch}' at position {pos}")]
    UnexpectedChar {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        pos: usize,
    },
    /// A run of digits and dots that is not a number, such as `1.2.3`.
    #[error("invalid number '{text}' at position {pos}")]
    InvalidNumber {
        /// The text of the malformed number.
        text: String,
        /// Byte offset of its first character.
        pos: usize,
    },
    /// An integer literal above [`MAX_EXACT_INTEGER`], which a double
    /// cannot hold exactly.
    #[error(
        "integer '{text}' at position {pos} is above 2^53 = 9007199254740992 and cannot be represented exactly (numbers are 64-bit floats); write it with an exponent, like 1.5e16, to accept rounding"
    )]
    InexactInteger {
        /// The literal, clipped to 32 digits.
        text: String,
        /// Byte offset of its first character.
        pos: usize,
    },
    /// The source ended where an operand or a closing parenthesis was due.
    #[error("unexpected end of expression")]
    UnexpectedEnd,
    /// A well-formed token in a place the grammar does not allow.
    #[error("unexpected token '{found}' at position {pos}")]
    UnexpectedToken {
        /// Source text of the token.
        found: String,
        /// Byte offset of the token.
        pos: usize,
    },
    /// A call to a function that does not exist.
    #[error("unknown function '{name}' at position {pos}")]
    UnknownFunction {
        /// The name that was called.
        name: String,
        /// Byte offset of the name.
        pos: usize,
    },
    /// A bare name that is neither `pi` nor `e`.
    #[error("unknown identifier '{name}' at position {pos}")]
    UnknownIdentifier {
        /// The unknown name.
        name: String,
        /// Byte offset of the name.
        pos: usize,
    },
    /// A function name used as a value, such as `sqrt + 1`.
    #[error("function '{name}' at position {pos} must be called with parentheses")]
    MissingCall {
        /// The function name.
        name: String,
        /// Byte offset of the name.
        pos: usize,
    },
    /// A call with the wrong number of arguments.
    #[error("function '{name}' at position {pos} expects {expected} argument(s), got {got}")]
    WrongArity {
        /// The function name.
        name: String,
        /// Accepted argument count, such as `2` or `at least 1`.
        expected: String,
        /// Number of arguments given.
        got: usize,
        /// Byte offset of the name.
        pos: usize,
    },
    /// The right operand of `/` or `%` evaluated to zero.
    #[error("division by zero at position {pos}")]
    DivisionByZero {
        /// Byte offset of the operator.
        pos: usize,
    },
    /// A literal, operation or function produced `NaN` or an infinity, as
    /// `sqrt(-1)`, `ln(0)` or `1e308 * 10` do.
    #[error("result is not a finite number at position {pos}")]
    NotFinite {
        /// Byte offset of the literal, operator or function name.
        pos: usize,
    },
}

/// Evaluates an arithmetic expression such as `2 * (3 + 4) ^ 2 / sqrt(16)`.
///
/// Parsing completes before evaluation starts, so syntax errors are reported
/// even when an earlier part of the expression would fail to evaluate.
///
/// # Errors
///
/// Returns an [`ExprError`] when the source is empty, too long or too deeply
/// nested, is not a valid expression, names an unknown function or
/// identifier, calls a function with the wrong number of arguments, divides
/// by zero, or produces a value that is not finite.
pub fn eval(source: &str) -> Result<f64, ExprError> {
    if source.len() > MAX_EXPR_LEN {
        return Err(ExprError::TooLong {
            len: source.len(),
            max: MAX_EXPR_LEN,
        });
    }
    let tokens = tokenize(source)?;
    if tokens.is_empty() {
        return Err(ExprError::Empty);
    }
    let ast = Parser::new(tokens).parse()?;
    evaluate(&ast)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TokenKind {
    Number(f64),
    Ident,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Caret,
    LParen,
    RParen,
    Comma,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: TokenKind,
    text: &'a str,
    pos: usize,
}

impl Token<'_> {
    fn unexpected(&self) -> ExprError {
        ExprError::UnexpectedToken {
            found: self.text.to_owned(),
            pos: self.pos,
        }
    }
}

fn tokenize(source: &str) -> Result<Vec<Token<'_>>, ExprError> {
    let mut tokens = Vec::new();
    let mut pos = 0;
    while let Some(ch) = source[pos..].chars().next() {
        if ch.is_whitespace() {
            pos += ch.len_utf8();
            continue;
        }
        let (kind, end) = scan_token(source, pos, ch)?;
        tokens.push(Token {
            kind,
            text: &source[pos..end],
            pos,
        });
        pos = end;
    }
    Ok(tokens)
}

/// Scans the token starting with `ch` at `start` and returns it with the
/// byte offset just past it.
fn scan_token(source: &str, start: usize, ch: char) -> Result<(TokenKind, usize), ExprError> {
    let single = match ch {
        '+' => TokenKind::Plus,
        '-' => TokenKind::Minus,
        '*' => TokenKind::Star,
        '/' => TokenKind::Slash,
        '%' => TokenKind::Percent,
        '^' => TokenKind::Caret,
        '(' => TokenKind::LParen,
        ')' => TokenKind::RParen,
        ',' => TokenKind::Comma,
        '0'..='9' | '.' => return scan_number(source, start),
        c if c.is_ascii_alphabetic() || c == '_' => {
            return Ok((TokenKind::Ident, scan_ident(source, start)));
        }
        _ => return Err(ExprError::UnexpectedChar { ch, pos: start }),
    };
    Ok((single, start + 1))
}

/// Scans digits and dots greedily, then an exponent only when a digit
/// follows the `e`, so that `1.2.3` is reported as one bad number while
/// `2e` leaves the `e` for the parser to reject as a stray identifier.
fn scan_number(source: &str, start: usize) -> Result<(TokenKind, usize), ExprError> {
    let bytes = source.as_bytes();
    let is_digit = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_digit);
    let mut end = start;
    while is_digit(end) || bytes.get(end) == Some(&b'.') {
        end += 1;
    }
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let mut exponent = end + 1;
        if matches!(bytes.get(exponent), Some(b'+' | b'-')) {
            exponent += 1;
        }
        if is_digit(exponent) {
            end = exponent;
            while is_digit(end) {
                end += 1;
            }
        }
    }
    let text = &source[start..end];
    let value = text.parse::<f64>().map_err(|_| ExprError::InvalidNumber {
        text: text.to_owned(),
        pos: start,
    })?;
    let integer = text.bytes().all(|b| b.is_ascii_digit());
    if integer && text.parse::<u64>().map_or(true, |n| n > MAX_EXACT_INTEGER) {
        return Err(ExprError::InexactInteger {
            text: text.chars().take(32).collect(),
            pos: start,
        });
    }
    Ok((TokenKind::Number(value), end))
}

fn scan_ident(source: &str, start: usize) -> usize {
    let rest = &source[start..];
    let len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    start + len
}

/// Binary operator chains are stored flat rather than as nested pairs, so
/// the tree depth (and with it the recursion of evaluation and drop) is
/// bounded by [`MAX_NESTING`] instead of by the length of `1+1+1+...`.
#[derive(Debug)]
enum Expr {
    Literal {
        value: f64,
    },
    Negate(Box<Expr>),
    Chain {
        first: Box<Expr>,
        rest: Vec<Operation>,
    },
    Call {
        function: Function,
        pos: usize,
        args: Vec<Expr>,
    },
}

#[derive(Debug)]
struct Operation {
    op: BinaryOp,
    pos: usize,
    rhs: Expr,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Pow,
}

#[derive(Debug, Clone, Copy)]
struct Function {
    name: &'static str,
    kind: FunctionKind,
}

/// The shape of a function doubles as its arity, so the arity check and
/// the application are one match and cannot disagree.
#[derive(Debug, Clone, Copy)]
enum FunctionKind {
    Unary(fn(f64) -> f64),
    Binary(fn(f64, f64) -> f64),
    /// Folds one or more arguments with the given operation.
    Variadic(fn(f64, f64) -> f64),
}

const FUNCTIONS: &[Function] = &[
    unary("sqrt", f64::sqrt),
    unary("abs", f64::abs),
    unary("round", f64::round),
    unary("floor", f64::floor),
    unary("ceil", f64::ceil),
    unary("ln", f64::ln),
    unary("log10", f64::log10),
    unary("log2", f64::log2),
    unary("exp", f64::exp),
    unary("sin", f64::sin),
    unary("cos", f64::cos),
    unary("tan", f64::tan),
    Function {
        name: "pow",
        kind: FunctionKind::Binary(f64::powf),
    },
    Function {
        name: "min",
        kind: FunctionKind::Variadic(f64::min),
    },
    Function {
        name: "max",
        kind: FunctionKind::Variadic(f64::max),
    },
];

const fn unary(name: &'static str, apply: fn(f64) -> f64) -> Function {
    Function {
        name,
        kind: FunctionKind::Unary(apply),
    }
}

fn constant(name: &str) -> Option<f64> {
    match name {
        "pi" => Some(std::f64::consts::PI),
        "e" => Some(std::f64::consts::E),
        _ => None,
    }
}

impl Function {
    fn lookup(name: &str) -> Option<Self> {
        FUNCTIONS.iter().copied().find(|f| f.name == name)
    }

    fn apply(self, args: &[f64], pos: usize) -> Result<f64, ExprError> {
        match (self.kind, args) {
            (FunctionKind::Unary(f), [x]) => Ok(f(*x)),
            (FunctionKind::Binary(f), [a, b]) => Ok(f(*a, *b)),
            (FunctionKind::Variadic(f), [first, rest @ ..]) => {
                Ok(rest.iter().fold(*first, |acc, x| f(acc, *x)))
            }
            (kind, _) => Err(ExprError::WrongArity {
                name: self.name.to_owned(),
                expected: kind.expected().to_owned(),
                got: args.len(),
                pos,
            }),
        }
    }
}

impl FunctionKind {
    fn expected(self) -> &'static str {
        match self {
            Self::Unary(_) => "1",
            Self::Binary(_) => "2",
            Self::Variadic(_) => "at least 1",
        }
    }
}

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    next: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn new(tokens: Vec<Token<'a>>) -> Self {
        Self {
            tokens,
            next: 0,
            depth: 0,
        }
    }

    fn parse(mut self) -> Result<Expr, ExprError> {
        let expr = self.parse_expr()?;
        match self.peek() {
            Some(token) => Err(token.unexpected()),
            None => Ok(expr),
        }
    }

    fn peek(&self) -> Option<Token<'a>> {
        self.tokens.get(self.next).copied()
    }

    fn advance(&mut self) -> Option<Token<'a>> {
        let token = self.peek()?;
        self.next += 1;
        Some(token)
    }

    /// Consumes the next token when its kind satisfies `accept`.
    fn advance_if(&mut self, accept: impl Fn(TokenKind) -> bool) -> Option<Token<'a>> {
        self.peek()
            .filter(|t| accept(t.kind))
            .and_then(|_| self.advance())
    }

    fn expect(&mut self, kind: TokenKind) -> Result<(), ExprError> {
        match self.advance() {
            Some(token) if token.kind == kind => Ok(()),
            Some(token) => Err(token.unexpected()),
            None => Err(ExprError::UnexpectedEnd),
        }
    }

    /// Runs `parse` one nesting level deeper; every recursive production
    /// goes through here, which is what bounds the parser's stack use.
    fn nested<T>(
        &mut self,
        parse: impl FnOnce(&mut Self) -> Result<T, ExprError>,
    ) -> Result<T, ExprError> {
        if self.depth >= MAX_NESTING {
            return Err(ExprError::TooDeep { max: MAX_NESTING });
        }
        self.depth += 1;
        let result = parse(self);
        self.depth -= 1;
        result
    }

    fn parse_expr(&mut self) -> Result<Expr, ExprError> {
        self.parse_chain(Self::parse_term, |kind| match kind {
            TokenKind::Plus => Some(BinaryOp::Add),
            TokenKind::Minus => Some(BinaryOp::Sub),
            _ => None,
        })
    }

    fn parse_term(&mut self) -> Result<Expr, ExprError> {
        self.parse_chain(Self::parse_unary, |kind| match kind {
            TokenKind::Star => Some(BinaryOp::Mul),
            TokenKind::Slash => Some(BinaryOp::Div),
            TokenKind::Percent => Some(BinaryOp::Rem),
            _ => None,
        })
    }

    /// Parses a left-associative run of operands joined by the operators
    /// that `operator` recognises.
    fn parse_chain(
        &mut self,
        operand: fn(&mut Self) -> Result<Expr, ExprError>,
        operator: fn(TokenKind) -> Option<BinaryOp>,
    ) -> Result<Expr, ExprError> {
        let first = operand(self)?;
        let mut rest = Vec::new();
        while let Some((op, pos)) = self
            .peek()
            .and_then(|token| Some((operator(token.kind)?, token.pos)))
        {
            self.next += 1;
            rest.push(Operation {
                op,
                pos,
                rhs: operand(self)?,
            });
        }
        Ok(chain(first, rest))
    }

    fn parse_unary(&mut self) -> Result<Expr, ExprError> {
        let Some(sign) = self.advance_if(|k| matches!(k, TokenKind::Plus | TokenKind::Minus))
        else {
            return self.parse_power();
        };
        let operand = self.nested(Self::parse_unary)?;
        Ok(match sign.kind {
            TokenKind::Minus => Expr::Negate(Box::new(operand)),
            _ => operand,
        })
    }

    fn parse_power(&mut self) -> Result<Expr, ExprError> {
        let base = self.parse_primary()?;
        let Some(caret) = self.advance_if(|k| k == TokenKind::Caret) else {
            return Ok(base);
        };
        let exponent = self.nested(Self::parse_unary)?;
        let operation = Operation {
            op: BinaryOp::Pow,
            pos: caret.pos,
            rhs: exponent,
        };
        Ok(chain(base, vec![operation]))
    }

    fn parse_primary(&mut self) -> Result<Expr, ExprError> {
        let token = self.advance().ok_or(ExprError::UnexpectedEnd)?;
        match token.kind {
            TokenKind::Number(value) => {
                finite(value, token.pos).map(|value| Expr::Literal { value })
            }
            TokenKind::LParen => {
                let inner = self.nested(Self::parse_expr)?;
                self.expect(TokenKind::RParen)?;
                Ok(inner)
            }
            TokenKind::Ident => self.parse_identifier(token),
            _ => Err(token.unexpected()),
        }
    }

    fn parse_identifier(&mut self, name: Token<'a>) -> Result<Expr, ExprError> {
        if self.advance_if(|k| k == TokenKind::LParen).is_some() {
            let function =
                Function::lookup(name.text).ok_or_else(|| ExprError::UnknownFunction {
                    name: name.text.to_owned(),
                    pos: name.pos,
                })?;
            let args = self.nested(Self::parse_args)?;
            return Ok(Expr::Call {
                function,
                pos: name.pos,
                args,
            });
        }
        if let Some(value) = constant(name.text) {
            return Ok(Expr::Literal { value });
        }
        let name_owned = name.text.to_owned();
        Err(match Function::lookup(name.text) {
            Some(_) => ExprError::MissingCall {
                name: name_owned,
                pos: name.pos,
            },
            None => ExprError::UnknownIdentifier {
                name: name_owned,
                pos: name.pos,
            },
        })
    }

    /// Parses a comma-separated argument list after the opening parenthesis,
    /// through the closing one.
    fn parse_args(&mut self) -> Result<Vec<Expr>, ExprError> {
        let mut args = Vec::new();
        if self.advance_if(|k| k == TokenKind::RParen).is_some() {
            return Ok(args);
        }
        loop {
            args.push(self.parse_expr()?);
            let token = self.advance().ok_or(ExprError::UnexpectedEnd)?;
            match token.kind {
                TokenKind::Comma => {}
                TokenKind::RParen => return Ok(args),
                _ => return Err(token.unexpected()),
            }
        }
    }
}

fn chain(first: Expr, rest: Vec<Operation>) -> Expr {
    if rest.is_empty() {
        return first;
    }
    Expr::Chain {
        first: Box::new(first),
        rest,
    }
}

fn evaluate(expr: &Expr) -> Result<f64, ExprError> {
    match expr {
        Expr::Literal { value } => Ok(*value),
        Expr::Negate(operand) => evaluate(operand).map(|value| -value),
        Expr::Chain { first, rest } => rest
            .iter()
            .try_fold(evaluate(first)?, |lhs, operation| operation.apply(lhs)),
        Expr::Call {
            function,
            pos,
            args,
        } => {
            let values = args.iter().map(evaluate).collect::<Result<Vec<_>, _>>()?;
            finite(function.apply(&values, *pos)?, *pos)
        }
    }
}

impl Operation {
    fn apply(&self, lhs: f64) -> Result<f64, ExprError> {
        let rhs = evaluate(&self.rhs)?;
        if matches!(self.op, BinaryOp::Div | BinaryOp::Rem) && rhs == 0.0 {
            return Err(ExprError::DivisionByZero { pos: self.pos });
        }
        let value = match self.op {
            BinaryOp::Add => lhs + rhs,
            BinaryOp::Sub => lhs - rhs,
            BinaryOp::Mul => lhs * rhs,
            BinaryOp::Div => lhs / rhs,
            BinaryOp::Rem => lhs % rhs,
            BinaryOp::Pow => lhs.powf(rhs),
        };
        finite(value, self.pos)
    }
}

fn finite(value: f64, pos: usize) -> Result<f64, ExprError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(ExprError::NotFinite { pos })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::f64::consts::{E, PI};

    fn ok(source: &str) -> f64 {
        match eval(source) {
            Ok(value) => value,
            Err(err) => panic!("eval({source:?}) failed: {err}"),
        }
    }

    fn err(source: &str) -> ExprError {
        match eval(source) {
            Ok(value) => panic!("eval({source:?}) returned {value}, expected an error"),
            Err(err) => err,
        }
    }

    fn close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < 1e-12,
            "expected {expected}, got {actual}"
        );
    }

    #[test]
    fn integers_above_two_to_the_53_are_refused_not_rounded() {
        assert_eq!(ok("9007199254740992"), 9_007_199_254_740_992.0);
        assert_eq!(ok("-9007199254740992"), -9_007_199_254_740_992.0);
        assert_eq!(ok("9007199254740991 + 1"), 9_007_199_254_740_992.0);
        let e = err("1 + 9007199254740993");
        assert_eq!(
            e,
            ExprError::InexactInteger {
                text: "9007199254740993".into(),
                pos: 4
            }
        );
        assert!(
            e.to_string().contains("cannot be represented exactly"),
            "{e}"
        );
        // Beyond u64, and long: clipped in the message.
        let e = err(&"9".repeat(400));
        assert!(matches!(e, ExprError::InexactInteger { ref text, pos: 0 } if text.len() == 32));
        // Asked for as floats, they are rounded as floats are.
        assert_eq!(ok("9007199254740993.0"), 9_007_199_254_740_992.0);
        assert_eq!(ok("1e20"), 1e20);
    }

    #[test]
    fn numbers_in_every_notation() {
        assert_eq!(ok("42"), 42.0);
        assert_eq!(ok("3.25"), 3.25);
        assert_eq!(ok(".5"), 0.5);
        assert_eq!(ok("2."), 2.0);
        assert_eq!(ok("1e3"), 1000.0);
        assert_eq!(ok("2.5E-2"), 0.025);
        assert_eq!(ok("1e+2"), 100.0);
    }

    #[test]
    fn precedence_follows_arithmetic_convention() {
        assert_eq!(ok("2 + 3 * 4"), 14.0);
        assert_eq!(ok("(2 + 3) * 4"), 20.0);
        assert_eq!(ok("10 - 4 / 2"), 8.0);
        assert_eq!(ok("2 * 3 ^ 2"), 18.0);
        assert_eq!(ok("1 + 7 % 4"), 4.0);
        assert_eq!(ok("2 * (3 + 4) ^ 2 / sqrt(16)"), 24.5);
    }

    #[test]
    fn left_associative_operators() {
        assert_eq!(ok("10 - 3 - 2"), 5.0);
        assert_eq!(ok("64 / 4 / 2"), 8.0);
        assert_eq!(ok("100 % 7 % 3"), 2.0);
    }

    #[test]
    fn power_is_right_associative() {
        assert_eq!(ok("2 ^ 3 ^ 2"), 512.0);
        assert_eq!(ok("(2 ^ 3) ^ 2"), 64.0);
    }

    #[test]
    fn unary_signs() {
        assert_eq!(ok("-2 ^ 2"), -4.0);
        assert_eq!(ok("(-2) ^ 2"), 4.0);
        assert_eq!(ok("2 ^ -1"), 0.5);
        assert_eq!(ok("--3"), 3.0);
        assert_eq!(ok("+4"), 4.0);
        assert_eq!(ok("3 - -2"), 5.0);
        assert_eq!(ok("-(1 + 2)"), -3.0);
        assert_eq!(ok("2 * -3"), -6.0);
    }

    #[test]
    fn remainder_is_floating_point() {
        assert_eq!(ok("5.5 % 2"), 1.5);
        assert_eq!(ok("-7 % 3"), -1.0);
    }

    /// The README documents `%` as the remainder of truncated division: its
    /// sign is the dividend's, unlike a modulo, which takes the divisor's.
    #[test]
    fn remainder_takes_the_sign_of_the_dividend() {
        assert_eq!(ok("7 % 3"), 1.0);
        assert_eq!(ok("-7 % 3"), -1.0);
        assert_eq!(ok("7 % -3"), 1.0);
        assert_eq!(ok("-7 % -3"), -1.0);
        assert_eq!(ok("-5.5 % 2"), -1.5);
        assert_eq!(ok("6 % -3"), 0.0);
    }

    /// The README documents `round` as rounding halves away from zero, not
    /// to even.
    #[test]
    fn round_ties_away_from_zero() {
        assert_eq!(ok("round(0.5)"), 1.0);
        assert_eq!(ok("round(1.5)"), 2.0);
        assert_eq!(ok("round(2.5)"), 3.0);
        assert_eq!(ok("round(-0.5)"), -1.0);
        assert_eq!(ok("round(-2.5)"), -3.0);
        assert_eq!(ok("round(2.4999)"), 2.0);
        assert_eq!(ok("round(-2.5001)"), -3.0);
    }

    #[test]
    fn constants() {
        assert_eq!(ok("pi"), PI);
        assert_eq!(ok("e"), E);
        assert_eq!(ok("2 * pi"), 2.0 * PI);
    }

    #[test]
    fn every_function() {
        assert_eq!(ok("sqrt(16)"), 4.0);
        assert_eq!(ok("abs(-3.5)"), 3.5);
        assert_eq!(ok("min(3)"), 3.0);
        assert_eq!(ok("min(3, -1, 2)"), -1.0);
        assert_eq!(ok("max(3)"), 3.0);
        assert_eq!(ok("max(3, -1, 2)"), 3.0);
        assert_eq!(ok("round(2.5)"), 3.0);
        assert_eq!(ok("round(-2.4)"), -2.0);
        assert_eq!(ok("floor(-2.5)"), -3.0);
        assert_eq!(ok("ceil(2.1)"), 3.0);
        close(ok("ln(e)"), 1.0);
        assert_eq!(ok("log10(1000)"), 3.0);
        assert_eq!(ok("log2(8)"), 3.0);
        close(ok("exp(1)"), E);
        close(ok("sin(pi / 2)"), 1.0);
        close(ok("cos(pi)"), -1.0);
        close(ok("tan(pi / 4)"), 1.0);
        assert_eq!(ok("pow(2, 10)"), 1024.0);
    }

    #[test]
    fn functions_nest_and_take_expressions() {
        assert_eq!(ok("max(1, min(5, 2 * 3), sqrt(9))"), 5.0);
        assert_eq!(ok("pow(1 + 1, 3) - 1"), 7.0);
    }

    #[test]
    fn empty_input() {
        assert_eq!(err(""), ExprError::Empty);
        assert_eq!(err("   \t\n"), ExprError::Empty);
        assert_eq!(err("").to_string(), "empty expression");
    }

    #[test]
    fn too_long() {
        let source = "1+".repeat(MAX_EXPR_LEN / 2) + "1";
        let error = err(&source);
        assert_eq!(
            error,
            ExprError::TooLong {
                len: MAX_EXPR_LEN + 1,
                max: MAX_EXPR_LEN
            }
        );
        assert_eq!(
            error.to_string(),
            "expression too long: 4097 bytes, limit 4096"
        );
    }

    #[test]
    fn long_flat_chains_are_fine() {
        let source = vec!["1"; MAX_EXPR_LEN / 2].join("+");
        assert_eq!(ok(&source), (MAX_EXPR_LEN / 2) as f64);
    }

    #[test]
    fn nesting_up_to_the_limit_is_accepted() {
        let parens = "(".repeat(MAX_NESTING) + "1" + &")".repeat(MAX_NESTING);
        assert_eq!(ok(&parens), 1.0);
        let signs = "-".repeat(MAX_NESTING) + "1";
        assert_eq!(ok(&signs), 1.0);
    }

    #[test]
    fn nesting_beyond_the_limit_is_too_deep() {
        let depth = MAX_NESTING + 1;
        let cases = [
            "(".repeat(depth) + "1" + &")".repeat(depth),
            "-".repeat(depth) + "1",
            "abs(".repeat(depth) + "1" + &")".repeat(depth),
            vec!["2"; depth + 1].join("^"),
        ];
        for source in cases {
            assert_eq!(
                err(&source),
                ExprError::TooDeep { max: MAX_NESTING },
                "{source}"
            );
        }
        assert_eq!(
            ExprError::TooDeep { max: 64 }.to_string(),
            "expression nested deeper than 64 levels"
        );
    }

    #[test]
    fn unexpected_character() {
        let error = err("1 + $");
        assert_eq!(error, ExprError::UnexpectedChar { ch: '$', pos: 4 });
        assert_eq!(error.to_string(), "unexpected character '$' at position 4");
        assert_eq!(err("2 × 3"), ExprError::UnexpectedChar { ch: '×', pos: 2 });
        assert_eq!(err("é"), ExprError::UnexpectedChar { ch: 'é', pos: 0 });
    }

    #[test]
    fn invalid_number() {
        let error = err("1.2.3");
        assert_eq!(
            error,
            ExprError::InvalidNumber {
                text: "1.2.3".into(),
                pos: 0
            }
        );
        assert_eq!(error.to_string(), "invalid number '1.2.3' at position 0");
        assert!(matches!(
            err("1 + ."),
            ExprError::InvalidNumber { pos: 4, .. }
        ));
    }

    #[test]
    fn unexpected_end() {
        for source in ["1 +", "(1 + 2", "-", "sqrt(", "max(1,", "2 ^"] {
            assert_eq!(err(source), ExprError::UnexpectedEnd, "{source}");
        }
        assert_eq!(
            ExprError::UnexpectedEnd.to_string(),
            "unexpected end of expression"
        );
    }

    #[test]
    fn unexpected_token() {
        let error = err("1 + * 2");
        assert_eq!(
            error,
            ExprError::UnexpectedToken {
                found: "*".into(),
                pos: 4
            }
        );
        assert_eq!(error.to_string(), "unexpected token '*' at position 4");
        let unexpected = |found: &str, pos| ExprError::UnexpectedToken {
            found: found.into(),
            pos,
        };
        assert_eq!(err("1 2"), unexpected("2", 2));
        assert_eq!(err("(1))"), unexpected(")", 3));
        assert_eq!(err("()"), unexpected(")", 1));
        assert_eq!(err("2e"), unexpected("e", 1));
        assert_eq!(err("2pi"), unexpected("pi", 1));
        assert_eq!(err("max(1 2)"), unexpected("2", 6));
        assert_eq!(err("max(1,)"), unexpected(")", 6));
        assert_eq!(err(",1"), unexpected(",", 0));
    }

    #[test]
    fn unknown_function() {
        let error = err("sqr(4)");
        assert_eq!(
            error,
            ExprError::UnknownFunction {
                name: "sqr".into(),
                pos: 0
            }
        );
        assert_eq!(error.to_string(), "unknown function 'sqr' at position 0");
        assert!(matches!(
            err("1 + SQRT(4)"),
            ExprError::UnknownFunction { pos: 4, .. }
        ));
        assert!(matches!(err("pi(2)"), ExprError::UnknownFunction { .. }));
    }

    #[test]
    fn unknown_identifier() {
        let error = err("2 * x");
        assert_eq!(
            error,
            ExprError::UnknownIdentifier {
                name: "x".into(),
                pos: 4
            }
        );
        assert_eq!(error.to_string(), "unknown identifier 'x' at position 4");
        assert!(matches!(err("PI"), ExprError::UnknownIdentifier { .. }));
    }

    #[test]
    fn function_without_call() {
        let error = err("sqrt + 1");
        assert_eq!(
            error,
            ExprError::MissingCall {
                name: "sqrt".into(),
                pos: 0
            }
        );
        assert_eq!(
            error.to_string(),
            "function 'sqrt' at position 0 must be called with parentheses"
        );
    }

    #[test]
    fn wrong_arity() {
        let error = err("sqrt(1, 2)");
        assert_eq!(
            error,
            ExprError::WrongArity {
                name: "sqrt".into(),
                expected: "1".into(),
                got: 2,
                pos: 0
            }
        );
        assert_eq!(
            error.to_string(),
            "function 'sqrt' at position 0 expects 1 argument(s), got 2"
        );
        assert!(matches!(
            err("pow(2)"),
            ExprError::WrongArity { got: 1, .. }
        ));
        assert!(matches!(err("abs()"), ExprError::WrongArity { got: 0, .. }));
        let min = err("1 + min()");
        assert_eq!(
            min,
            ExprError::WrongArity {
                name: "min".into(),
                expected: "at least 1".into(),
                got: 0,
                pos: 4
            }
        );
        assert!(matches!(err("max()"), ExprError::WrongArity { .. }));
    }

    #[test]
    fn division_by_zero() {
        let error = err("1 / 0");
        assert_eq!(error, ExprError::DivisionByZero { pos: 2 });
        assert_eq!(error.to_string(), "division by zero at position 2");
        assert_eq!(err("5 % (2 - 2)"), ExprError::DivisionByZero { pos: 2 });
        assert_eq!(err("0 / -0"), ExprError::DivisionByZero { pos: 2 });
    }

    #[test]
    fn non_finite_results() {
        let error = err("sqrt(-1)");
        assert_eq!(error, ExprError::NotFinite { pos: 0 });
        assert_eq!(
            error.to_string(),
            "result is not a finite number at position 0"
        );
        assert_eq!(err("1 + ln(0)"), ExprError::NotFinite { pos: 4 });
        assert_eq!(err("log10(-1)"), ExprError::NotFinite { pos: 0 });
        assert_eq!(err("1e308 * 10"), ExprError::NotFinite { pos: 6 });
        assert_eq!(err("0 ^ -1"), ExprError::NotFinite { pos: 2 });
        assert_eq!(err("(-8) ^ (1 / 3)"), ExprError::NotFinite { pos: 5 });
        assert_eq!(err("exp(1000)"), ExprError::NotFinite { pos: 0 });
        assert_eq!(err("2 + 1e999"), ExprError::NotFinite { pos: 4 });
    }

    const FUNCTION_NAMES: &[&str] = &[
        "sqrt", "abs", "min", "max", "round", "floor", "ceil", "ln", "log10", "log2", "exp", "sin",
        "cos", "tan", "pow", "pi", "e",
    ];

    fn token_soup() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            prop::sample::select(FUNCTION_NAMES).prop_map(str::to_owned),
            "[0-9+*/%^().,e -]{1,4}",
        ];
        prop::collection::vec(piece, 0..60).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn integer_arithmetic_matches_rust(a in -1_000_000i64..1_000_000, b in -1_000_000i64..1_000_000, c in -1000i64..1000) {
            prop_assert_eq!(eval(&format!("{a} + {b}")), Ok((a + b) as f64));
            prop_assert_eq!(eval(&format!("{a} - {b}")), Ok((a - b) as f64));
            prop_assert_eq!(eval(&format!("{a} * {b}")), Ok((a * b) as f64));
            prop_assert_eq!(eval(&format!("({a}) * ({b} - {c})")), Ok((a * (b - c)) as f64));
            prop_assert_eq!(eval(&format!("{a} - ({b} + {c})")), Ok((a - (b + c)) as f64));
            prop_assert_eq!(eval(&format!("-({a}) + {c} * {b}")), Ok((-a + c * b) as f64));
        }

        #[test]
        fn division_matches_rust(a in -1_000_000i64..1_000_000, b in -1000i64..1000) {
            prop_assume!(b != 0);
            prop_assert_eq!(eval(&format!("{a} / {b}")), Ok(a as f64 / b as f64));
            prop_assert_eq!(eval(&format!("{a} % {b}")), Ok(a as f64 % b as f64));
        }

        #[test]
        fn printed_floats_round_trip(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
            // `{x}` prints a large integral double without a fraction or an
            // exponent: an integer literal, refused above 2^53.
            let printed = format!("{x}");
            if x.abs() > MAX_EXACT_INTEGER as f64 && !printed.contains('.') {
                let refused = matches!(eval(&printed), Err(ExprError::InexactInteger { .. }));
                prop_assert!(refused, "{} was not refused", printed);
            } else {
                prop_assert_eq!(eval(&printed), Ok(x));
            }
            prop_assert_eq!(eval(&format!("{x:e}")), Ok(x));
            prop_assert_eq!(eval(&format!("{x:E}")), Ok(x));
        }

        #[test]
        fn integer_literals_are_exact_or_refused(n in any::<u64>()) {
            match eval(&n.to_string()) {
                Ok(value) => {
                    prop_assert!(n <= MAX_EXACT_INTEGER);
                    prop_assert_eq!(value as u64, n);
                }
                Err(e) => {
                    prop_assert!(n > MAX_EXACT_INTEGER);
                    prop_assert!(matches!(e, ExprError::InexactInteger { .. }), "{}", e);
                }
            }
        }

        #[test]
        fn never_panics_on_arbitrary_text(source in ".{0,200}") {
            let _ = eval(&source);
        }

        #[test]
        fn never_panics_on_expression_alphabet(source in "[0-9+*/%^().,e -]{0,200}") {
            let _ = eval(&source);
        }

        #[test]
        fn never_panics_on_token_soup(source in token_soup()) {
            let _ = eval(&source);
        }

        #[test]
        fn deep_nesting_is_rejected(depth in (MAX_NESTING + 1)..=(MAX_EXPR_LEN - 1) / 2) {
            let source = "(".repeat(depth) + "1" + &")".repeat(depth);
            prop_assert_eq!(eval(&source), Err(ExprError::TooDeep { max: MAX_NESTING }));
        }
    }
}
