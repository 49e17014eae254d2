//! Behaviour beyond the compliance suite (`tests/jsonpath_cts.rs`): the
//! limits against hostile paths and documents, error positions and
//! messages, and properties over generated input.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::json;

use super::*;

/// Keys are in alphabetical order so that wildcard results are the same
/// whether or not serde_json preserves insertion order.
fn store() -> Value {
    json!({
        "owner": {"address": {"city": "Lyon"}, "name": "Ada"},
        "store": {
            "bicycle": {"color": "red", "price": 19.95},
            "book": [
                {"author": "Nigel Rees", "category": "reference", "price": 8.95,
                 "title": "Sayings of the Century"},
                {"author": "Evelyn Waugh", "category": "fiction", "price": 12.99,
                 "title": "Sword of Honour"},
                {"author": "Herman Melville", "category": "fiction", "isbn": "0-553-21311-3",
                 "price": 8.99, "title": "Moby Dick"},
                {"author": "J. R. R. Tolkien", "category": "fiction", "isbn": "0-395-19395-8",
                 "price": 22.99, "title": "The Lord of the Rings"}
            ],
            "opening hours": "9-17",
            "x.y": 1
        }
    })
}

fn q(path: &str) -> Vec<Value> {
    match query(&store(), path) {
        Ok(values) => values,
        Err(err) => panic!("query({path:?}) failed: {err}"),
    }
}

fn q_err(path: &str) -> JsonQueryError {
    match query(&store(), path) {
        Ok(values) => panic!("query({path:?}) returned {values:?}, expected an error"),
        Err(err) => err,
    }
}

fn on_numbers(path: &str) -> Vec<Value> {
    query(&json!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), path).unwrap()
}

fn titles(path: &str) -> Vec<Value> {
    q(&format!("{path}.title"))
}

/// `[[[...[leaf]...]]]`, `depth` arrays deep, built without recursion.
fn chain(depth: usize, leaf: Value) -> Value {
    let mut doc = leaf;
    for _ in 0..depth {
        doc = Value::Array(vec![doc]);
    }
    doc
}

/// Dismantles a deep value iteratively: dropping it whole recurses inside
/// serde_json and would overflow the test's stack.
fn drop_deep(mut value: Value) {
    while let Value::Array(mut items) = value {
        value = items.pop().unwrap_or(Value::Null);
    }
}

/// Runs `path` over `doc` and returns the error and how long it took.
fn timed_err(doc: &Value, path: &str) -> (JsonQueryError, Duration) {
    let started = Instant::now();
    let outcome = query(doc, path);
    let elapsed = started.elapsed();
    match outcome {
        Ok(values) => panic!("{path} returned {} values, expected a limit", values.len()),
        Err(err) => (err, elapsed),
    }
}

#[test]
fn names_indices_and_wildcards() {
    assert_eq!(q("$"), vec![store()]);
    assert_eq!(q("$.owner.name"), vec![json!("Ada")]);
    assert_eq!(q("$['owner'][\"name\"]"), vec![json!("Ada")]);
    assert_eq!(q("$.store['opening hours']"), vec![json!("9-17")]);
    assert_eq!(q("$.store[\"x.y\"]"), vec![json!(1)]);
    assert_eq!(
        titles("$.store.book[-1]"),
        vec![json!("The Lord of the Rings")]
    );
    assert_eq!(q("$.store.bicycle.*"), vec![json!("red"), json!(19.95)]);
    assert_eq!(q("$.store.bicycle[*]"), q("$.store.bicycle.*"));
    assert_eq!(q("$.store.book[*].author").len(), 4);
    let doc = json!({"größe": 1, "日本": [true], "_x1": 2});
    assert_eq!(query(&doc, "$.größe").unwrap(), vec![json!(1)]);
    assert_eq!(query(&doc, "$.日本[0]").unwrap(), vec![json!(true)]);
    assert_eq!(query(&doc, "$._x1").unwrap(), vec![json!(2)]);
}

#[test]
fn dashed_names_need_brackets() {
    let doc = json!({"content-type": "text/plain"});
    assert_eq!(
        query(&doc, "$['content-type']").unwrap(),
        vec![json!("text/plain")]
    );
    assert_eq!(
        query(&doc, "$.content-type").unwrap_err(),
        JsonQueryError::UnexpectedChar { ch: '-', pos: 9 },
        "RFC 9535 member-name-shorthand has no '-'"
    );
}

#[test]
fn quoted_names_take_json_escapes() {
    let doc = json!({"it's": 1, "say \"hi\"": 2, "back\\slash": 3, "": 4, "tab\there": 5, "☺": 6});
    for (path, expected) in [
        (r"$['it\'s']", 1),
        (r#"$["it's"]"#, 1),
        (r#"$["say \"hi\""]"#, 2),
        (r"$['back\\slash']", 3),
        ("$['']", 4),
        (r"$['tab\there']", 5),
        (r"$['\u263A']", 6),
        (r"$['\u263a']", 6),
    ] {
        assert_eq!(query(&doc, path).unwrap(), vec![json!(expected)], "{path}");
    }
    let doc = json!({"𝄞": 1});
    assert_eq!(query(&doc, r"$['\uD834\uDD1E']").unwrap(), vec![json!(1)]);
}

#[test]
fn missing_members_and_indices_select_nothing() {
    for path in [
        "$.nope",
        "$.store.book[4]",
        "$.store.book[-5]",
        "$.store.book.title",
        "$.owner[0]",
        "$.owner.name.first",
        "$.owner.name[*]",
        "$['store']['nope'][0]",
        "$[9007199254740991]",
        "$.store.book[-9007199254740991]",
    ] {
        assert_eq!(q(path), Vec::<Value>::new(), "{path}");
    }
}

#[test]
fn descendants_in_document_order() {
    assert_eq!(
        q("$..price"),
        vec![
            json!(19.95),
            json!(8.95),
            json!(12.99),
            json!(8.99),
            json!(22.99)
        ]
    );
    assert_eq!(q("$..['city','name']"), vec![json!("Ada"), json!("Lyon")]);
    assert_eq!(titles("$..book[2]"), vec![json!("Moby Dick")]);
    let doc = json!({"a": [1, {"b": 2}], "c": 3});
    assert_eq!(
        query(&doc, "$..*").unwrap(),
        vec![
            json!([1, {"b": 2}]),
            json!(3),
            json!(1),
            json!({"b": 2}),
            json!(2)
        ],
        "children of each node, nodes visited parent first (RFC 9535)"
    );
    assert_eq!(q("$..*").len(), 33);
}

#[test]
fn slices_with_either_sign_of_step() {
    let cases: &[(&str, &[i64])] = &[
        ("$[2:5]", &[2, 3, 4]),
        ("$[:3]", &[0, 1, 2]),
        ("$[7:]", &[7, 8, 9]),
        ("$[::3]", &[0, 3, 6, 9]),
        ("$[-3:]", &[7, 8, 9]),
        ("$[-100:2]", &[0, 1]),
        ("$[5:2]", &[]),
        ("$[ 1 : 3 ]", &[1, 2]),
        ("$[::0]", &[]),
        ("$[::-1]", &[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]),
        ("$[5:1:-2]", &[5, 3]),
        ("$[-1:-4:-1]", &[9, 8, 7]),
        ("$[:-8:-3]", &[9, 6, 3]),
        ("$[100:7:-1]", &[9, 8]),
        ("$[::9007199254740991]", &[0]),
        ("$[::-9007199254740991]", &[9]),
    ];
    for (path, expected) in cases {
        let expected: Vec<Value> = expected.iter().map(|&n| json!(n)).collect();
        assert_eq!(on_numbers(path), expected, "{path}");
    }
}

#[test]
fn unions_keep_selector_order() {
    assert_eq!(
        on_numbers("$[2, 0, -1]"),
        vec![json!(2), json!(0), json!(9)]
    );
    assert_eq!(
        on_numbers("$[0,7:,?@==3]"),
        vec![json!(0), json!(7), json!(8), json!(9), json!(3)]
    );
    assert_eq!(on_numbers("$[0,0]"), vec![json!(0), json!(0)]);
}

#[test]
fn filters_compare_and_combine() {
    assert_eq!(
        titles("$.store.book[?@.price < 10]"),
        vec![json!("Sayings of the Century"), json!("Moby Dick")]
    );
    assert_eq!(titles("$.store.book[?@.isbn]").len(), 2);
    assert_eq!(titles("$.store.book[?!@.isbn]").len(), 2);
    assert_eq!(
        titles("$.store.book[?@.category == 'fiction' && @.price > 20]"),
        vec![json!("The Lord of the Rings")]
    );
    assert_eq!(
        titles("$.store.book[?(@.price < 9 || @.price > 20) && !(@.author == 'Nigel Rees')]"),
        vec![json!("Moby Dick"), json!("The Lord of the Rings")]
    );
    assert_eq!(
        titles("$..book[?@.price >= $.store.bicycle.price]"),
        vec![json!("The Lord of the Rings")]
    );
    assert_eq!(
        q("$..[?@.color]"),
        vec![json!({"color": "red", "price": 19.95})]
    );
}

#[test]
fn comparisons_follow_rfc_9535() {
    let doc = json!([1, 1.0, 2, "1", "b", "ab", true, null, [1], {"a": 1}, [1.0], {"a": 1.0}]);
    let on = |path: &str| query(&doc, path).unwrap();
    assert_eq!(
        on("$[?@ == 1]"),
        vec![json!(1), json!(1.0)],
        "numbers by value"
    );
    assert!(
        matches!(
            query(&doc, "$[?@ == [1]]"),
            Err(JsonQueryError::UnexpectedChar { ch: '[', pos: 8 })
        ),
        "no array literals"
    );
    assert_eq!(on("$[?@ == $[8]]"), vec![json!([1]), json!([1.0])]);
    assert_eq!(
        on("$[?@ == $[9]]"),
        vec![json!({"a": 1}), json!({"a": 1.0})]
    );
    assert_eq!(on("$[?@ < 2]"), vec![json!(1), json!(1.0)]);
    assert_eq!(on("$[?@ > 'a']"), vec![json!("b"), json!("ab")]);
    assert_eq!(
        on("$[?@ <= true]"),
        vec![json!(true)],
        "booleans only equal"
    );
    assert_eq!(on("$[?@ == null]"), vec![json!(null)]);
    assert_eq!(
        on("$[?@.missing == @.other]").len(),
        doc.as_array().unwrap().len(),
        "nothing equals nothing"
    );
    assert_eq!(on("$[?@.missing < 1]").len(), 0);
    let big = json!([
        9_223_372_036_854_775_807_i64,
        18_446_744_073_709_551_615_u64
    ]);
    assert_eq!(
        query(&big, "$[?@ == 9223372036854775807]").unwrap(),
        vec![json!(9_223_372_036_854_775_807_i64)],
        "integers stay exact"
    );
    assert_eq!(query(&big, "$[?@ > 9223372036854775807]").unwrap().len(), 1);
}

#[test]
fn functions() {
    let doc = json!({"items": ["a", "bb", "ccc", ["x", "y"], {"k": 1}, 7], "re": "b+"});
    let on = |path: &str| query(&doc, path).unwrap();
    assert_eq!(
        on("$.items[?length(@) == 2]"),
        vec![json!("bb"), json!(["x", "y"])]
    );
    assert_eq!(
        on("$[?count(@.*) > 2]"),
        vec![json!(["a", "bb", "ccc", ["x", "y"], {"k": 1}, 7])]
    );
    assert_eq!(on("$.items[?value(@..k) == 1]"), vec![json!({"k": 1})]);
    assert_eq!(on("$.items[?match(@, 'b+')]"), vec![json!("bb")]);
    assert_eq!(on("$.items[?match(@, $.re)]"), vec![json!("bb")]);
    assert_eq!(
        on("$.items[?search(@, '[bc]')]"),
        vec![json!("bb"), json!("ccc")]
    );
    assert_eq!(
        on("$.items[?match(@, '\\\\d')]").len(),
        0,
        "not I-Regexp: false"
    );
    assert_eq!(on("$.items[?length(@) == length('ab')]").len(), 2);
    let unicode = json!(["☺☺", "ab", "𝄞"]);
    assert_eq!(
        query(&unicode, "$[?length(@) == 2]").unwrap(),
        vec![json!("☺☺"), json!("ab")],
        "length counts Unicode scalar values"
    );
}

#[test]
fn filters_are_checked_for_well_typedness() {
    let ill_typed = |path: &str| match q_err(path) {
        JsonQueryError::IllTyped { .. } => {}
        other => panic!("{path}: expected IllTyped, got {other:?}"),
    };
    ill_typed("$[?1]");
    ill_typed("$[?length(@)]");
    ill_typed("$[?count(1) > 0]");
    ill_typed("$[?length(@.*) > 0]");
    ill_typed("$[?match(@, 'a') == true]");
    ill_typed("$[?length(@, @) > 0]");
    ill_typed("$[?length(@ == 1) > 0]");
    assert_eq!(
        q_err("$[?@.* == 1]"),
        JsonQueryError::NonSingularQuery { pos: 3 }
    );
    assert_eq!(
        q_err("$[?foo(@) == 1]"),
        JsonQueryError::UnknownFunction {
            name: "foo".into(),
            pos: 3
        }
    );
    assert_eq!(
        q_err("$[?length(@.*) > 0]").to_string(),
        "length() needs a single value here, and this query may select several nodes at position 10"
    );
}

#[test]
fn syntax_errors_name_the_position() {
    assert_eq!(
        q_err("$.a[0]]").to_string(),
        "unexpected character ']' at position 6"
    );
    let unexpected = |ch, pos| JsonQueryError::UnexpectedChar { ch, pos };
    assert_eq!(q_err("$[]"), unexpected(']', 2));
    assert_eq!(q_err("$[0,]"), unexpected(']', 4));
    assert_eq!(q_err("$[0 1]"), unexpected('1', 4));
    assert_eq!(q_err("$store"), unexpected('s', 1));
    assert_eq!(q_err("$.store book"), unexpected(' ', 7));
    assert_eq!(q_err("$ "), unexpected(' ', 1));
    assert_eq!(q_err("$. a"), unexpected(' ', 2));
    assert_eq!(q_err("$...a"), unexpected('.', 3));
    assert_eq!(q_err("$[1:2:3:4]"), unexpected(':', 7));
    assert_eq!(q_err("$[+1]"), unexpected('+', 2));
    assert_eq!(q_err("$['a\u{1}']"), unexpected('\u{1}', 4));
    assert_eq!(
        q_err("$['a\u{1}']").to_string(),
        r"unexpected character '\u{1}' at position 4"
    );
    for path in ["", "store", ".store", " $"] {
        assert_eq!(q_err(path), JsonQueryError::MissingRoot, "{path:?}");
    }
    assert_eq!(
        q_err("$[0").to_string(),
        "unexpected end of path, expected ',' or ']'"
    );
    assert_eq!(
        q_err("$['store"),
        JsonQueryError::UnterminatedString { pos: 2 }
    );
    assert_eq!(
        q_err(r"$['a\qb']"),
        JsonQueryError::InvalidEscape { pos: 4 }
    );
    assert_eq!(
        q_err(r"$['\uD800']"),
        JsonQueryError::InvalidEscape { pos: 3 }
    );
    for (path, text) in [
        ("$[01]", "01"),
        ("$[-0]", "-0"),
        ("$[9007199254740992]", "9007199254740992"),
        ("$[99999999999999999999]", "99999999999999999999"),
        ("$[-]", "-"),
    ] {
        assert_eq!(
            q_err(path),
            JsonQueryError::InvalidInteger {
                text: text.into(),
                pos: 2
            },
            "{path}"
        );
    }
    assert_eq!(
        q_err("$[?@ == 1.]"),
        JsonQueryError::InvalidNumber {
            text: "1.".into(),
            pos: 8
        }
    );
}

// The limits. Each test shows the refusal names its limit and that the
// same shape of query just within the limit still works.

#[test]
fn path_length_is_bounded() {
    let path = format!("$.{}", "a".repeat(1998));
    let error = q_err(&path);
    assert_eq!(
        error,
        JsonQueryError::TooLong {
            len: 2000,
            max: MAX_PATH_LEN
        }
    );
    assert_eq!(error.to_string(), "path too long: 2000 bytes, limit 1024");
    assert!(error.is_limit());
    let longest = format!("$.{}", "a".repeat(MAX_PATH_LEN - 2));
    assert_eq!(q(&longest), Vec::<Value>::new());
}

#[test]
fn nesting_is_bounded_before_recursion() {
    let nested = |depth: usize| format!("$[?{}@{}]", "(".repeat(depth - 1), ")".repeat(depth - 1));
    assert_eq!(q(&nested(MAX_NESTING)).len(), 2, "owner and store");
    let error = q_err(&nested(MAX_NESTING + 1));
    assert_eq!(
        error,
        JsonQueryError::TooDeep {
            max: MAX_NESTING,
            pos: 34
        }
    );
    assert_eq!(
        error.to_string(),
        "path nests deeper than the limit of 32 levels at position 34"
    );
    let filters = format!(
        "$[?@{}]",
        "[?@".repeat(MAX_NESTING) + &"]".repeat(MAX_NESTING)
    );
    assert!(matches!(q_err(&filters), JsonQueryError::TooDeep { .. }));
}

#[test]
fn node_count_is_bounded_as_lists_grow() {
    let wide = Value::from(vec![Value::from(vec![0; 400]); 400]);
    assert_eq!(query(&wide, "$[0]..*").unwrap().len(), 400);
    let error = query(&wide, "$..*").unwrap_err();
    assert_eq!(error, JsonQueryError::TooManyMatches { max: MAX_MATCHES });
    assert_eq!(
        error.to_string(),
        "query selects more than 100000 nodes, the match limit"
    );
    let limits = Limits {
        max_matches: 10,
        ..Limits::default()
    };
    let ten = json!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(query_with(&ten, "$[*]", &limits).unwrap().len(), 10);
    assert_eq!(
        query_with(&ten, "$[*,0]", &limits).unwrap_err(),
        JsonQueryError::TooManyMatches { max: 10 }
    );
    assert_eq!(
        query_with(&ten, "$[?count($[*,*]) > 0]", &limits).unwrap_err(),
        JsonQueryError::TooManyMatches { max: 10 },
        "node lists inside filters are bounded too"
    );
}

#[test]
fn output_size_is_bounded_before_cloning() {
    // 2,000 nested arrays: `$..*` selects 2,000 nodes, but together they
    // are ~4 MB of JSON, quadratic in the depth.
    let doc = chain(2000, json!(0));
    let (error, _) = timed_err(&doc, "$..*");
    assert_eq!(
        error,
        JsonQueryError::OutputTooLarge {
            max: MAX_OUTPUT_BYTES
        }
    );
    assert_eq!(
        error.to_string(),
        "query result is larger than 2097152 bytes of JSON, the output limit"
    );
    drop_deep(doc);

    let text = json!(["abcd", "ef"]);
    let exact = Limits {
        max_output_bytes: 6,
        ..Limits::default()
    };
    assert_eq!(
        query_with(&text, "$[0]", &exact).unwrap(),
        vec![json!("abcd")]
    );
    assert_eq!(
        query_with(&text, "$[0,1]", &exact).unwrap_err(),
        JsonQueryError::OutputTooLarge { max: 6 }
    );
}

#[test]
fn work_is_bounded_when_nothing_matches() {
    // Each of the 4,000 nodes `$..*` selects is searched to the bottom for
    // a name no node has: 8 million visits and no match to count.
    let doc = chain(4000, json!(0));
    let (error, elapsed) = timed_err(&doc, "$..*..nope");
    assert_eq!(error, JsonQueryError::TooMuchWork { max: MAX_WORK });
    assert_eq!(
        error.to_string(),
        "query needs more than 10000000 evaluation steps, the work limit"
    );
    println!("$..*..nope over 4000 nested arrays: {error} after {elapsed:?}");
    let small = Limits {
        max_work: 1000,
        ..Limits::default()
    };
    assert_eq!(
        query_with(&doc, "$..*..nope", &small).unwrap_err(),
        JsonQueryError::TooMuchWork { max: 1000 }
    );
    assert_eq!(
        query_with(&chain(10, json!(0)), "$..*..nope", &small).unwrap(),
        Vec::<Value>::new(),
        "the same query over a shallow document stays within budget"
    );
    drop_deep(doc);
}

/// A tree of `4^8` leaves: 87,381 nodes, under the match limit, eight
/// levels deep.
fn bushy() -> Value {
    let mut doc = json!(0);
    for _ in 0..8 {
        doc = Value::Array(vec![doc; 4]);
    }
    doc
}

#[test]
fn pathological_descents_stop_fast_with_the_default_limits() {
    let deep = chain(10_000, json!({"a": 1}));
    let bushy = bushy();
    for (name, doc) in [("deep", &deep), ("bushy", &bushy)] {
        let (error, elapsed) = timed_err(doc, "$..*..*..*..*");
        assert_eq!(
            error,
            JsonQueryError::TooManyMatches { max: MAX_MATCHES },
            "{name}"
        );
        assert!(elapsed < Duration::from_secs(5), "{name}: took {elapsed:?}");
        println!("{name} $..*..*..*..*: {error} after {elapsed:?}");
    }
    drop_deep(deep);
}

#[test]
fn pathological_filters_stop_at_a_limit() {
    // A smaller work budget than the default keeps this test quick in an
    // unoptimised build; the default stops the same queries later, at the
    // same place in the code.
    let limits = Limits {
        max_work: 1_000_000,
        ..Limits::default()
    };
    let deep = chain(3000, json!({"a": 1}));
    let bushy = bushy();
    let cases = [
        (&deep, "$..*..*..*..nope"),
        (&deep, "$..[?@..*..*..*]"),
        (&deep, "$..[?count(@..*..*) > 1]"),
        // Each node compared with the root walks down to the leaf.
        (&deep, "$..*[?@ == $]"),
        (&bushy, "$..*..*..*..nope"),
        (&bushy, "$..[?@..*..*..*]"),
        (&bushy, "$..[?count(@..*..*) > 1]"),
        // Each node compared with itself walks its whole subtree.
        (&bushy, "$..[?@ == @ && @ == @]"),
    ];
    for (doc, path) in cases {
        let name = if std::ptr::eq(doc, &deep) {
            "deep"
        } else {
            "bushy"
        };
        {
            let started = Instant::now();
            let error = query_with(doc, path, &limits).unwrap_err();
            let elapsed = started.elapsed();
            assert!(error.is_limit(), "{name} {path}: {error}");
            assert!(
                elapsed < Duration::from_secs(5),
                "{name} {path}: took {elapsed:?}"
            );
            println!("{name} {path}: {error} after {elapsed:?}");
        }
    }
    drop_deep(deep);
}

#[test]
fn deeply_nested_documents_do_not_overflow() {
    let doc = chain(100_000, json!({"leaf": 1}));
    assert_eq!(query(&doc, "$..leaf").unwrap(), vec![json!(1)]);
    drop_deep(doc);
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-c]{0,4}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-c]", inner, 0..4)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

fn path_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("$".to_owned()),
        Just("@".to_owned()),
        Just("..".to_owned()),
        Just(".*".to_owned()),
        Just("[*]".to_owned()),
        Just("[?".to_owned()),
        Just("==".to_owned()),
        Just("&&".to_owned()),
        Just("length(".to_owned()),
        Just("count(".to_owned()),
        Just("match(".to_owned()),
        "[-.:,'\"\\[\\]\\\\?()*$@!<=> a-c0-9]{1,4}",
    ];
    prop::collection::vec(piece, 0..20).prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn root_returns_exactly_the_document(doc in arbitrary_json()) {
        prop_assert_eq!(query(&doc, "$").unwrap(), vec![doc]);
    }

    #[test]
    fn wildcard_and_full_slice_return_every_element(
        items in prop::collection::vec(arbitrary_json(), 0..20),
    ) {
        let doc = Value::from(items.clone());
        prop_assert_eq!(query(&doc, "$[*]").unwrap(), items.clone());
        prop_assert_eq!(query(&doc, "$[:]").unwrap(), items.clone());
        let mut reversed = items.clone();
        reversed.reverse();
        prop_assert_eq!(query(&doc, "$[::-1]").unwrap(), reversed);
        prop_assert_eq!(query(&doc, "$[?true == true]").unwrap(), items);
    }

    #[test]
    fn positive_slices_match_rust_ranges(
        len in 0usize..30,
        start in -40i64..40,
        end in -40i64..40,
        step in 1usize..5,
    ) {
        let doc = Value::from((0..len as i64).collect::<Vec<_>>());
        let got = query(&doc, &format!("$[{start}:{end}:{step}]")).unwrap();
        let resolve = |b: i64| if b < 0 { (len as i64 + b).max(0) } else { b.min(len as i64) };
        let expected: Vec<Value> = (resolve(start)..resolve(end))
            .step_by(step)
            .map(Value::from)
            .collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn never_panics_on_arbitrary_paths(path in ".{0,200}") {
        let _ = query(&store(), &path);
        let _ = query(&store(), &format!("${path}"));
    }

    #[test]
    fn results_stay_within_every_limit(path in path_soup(), doc in arbitrary_json()) {
        let limits = Limits {
            max_matches: 20,
            max_output_bytes: 200,
            max_work: 500,
            ..Limits::default()
        };
        for path in [path.clone(), format!("${path}")] {
            if let Ok(values) = query_with(&doc, &path, &limits) {
                prop_assert!(values.len() <= limits.max_matches);
                let bytes: usize = values
                    .iter()
                    .map(|v| serde_json::to_string(v).unwrap().len())
                    .sum();
                prop_assert!(bytes <= limits.max_output_bytes, "{} bytes", bytes);
            }
        }
    }

    #[test]
    fn json_len_within_is_exact(doc in arbitrary_json()) {
        let len = serde_json::to_string(&doc).unwrap().len();
        prop_assert_eq!(json_len_within(&doc, len), Some(0));
        prop_assert_eq!(json_len_within(&doc, len.saturating_sub(1)), None.filter(|_: &usize| len == 0));
    }
}
